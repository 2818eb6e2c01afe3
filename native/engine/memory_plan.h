// One allocation per lifetime, split into named pointers. Sizes follow from the model, the LoRA
// options and maxTokens alone, so the peak is known before the first step and reported by
// memoryPlan(); a failed allocation is an Error with the numbers.
#pragma once
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/lora.h"
#include "engine/model.h"

namespace thinktune {

inline size_t roundUp(size_t value, size_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// Positions [begin, begin + count) of a row of rowLength: a feed-forward chunk, or the whole row.
struct TokenRange {
  int64_t begin;
  int64_t count;
  int64_t rowLength;
  static TokenRange whole(int64_t T) { return {0, T, T}; }
};

// Two passes over the same list of (pointer, count): sum the sizes, then hand out addresses inside
// one allocation, each buffer starting on `alignment` bytes. Used by the CPU and CUDA memory plans
// (this file and cuda_plan.cu), which lay out the LoRA and activation buffers alike.
class BufferLayout {
 public:
  explicit BufferLayout(size_t alignment) : alignment_(alignment) {}
  template <class T>
  void add(T*& pointer, int64_t count) {
    slots_.push_back({reinterpret_cast<void**>(&pointer), bytes_});
    bytes_ += roundUp(static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T), alignment_);
  }
  size_t bytes() const { return bytes_; }
  void assign(char* base) const {
    for (const Slot& slot : slots_) *slot.pointer = base + slot.offset;
  }

 private:
  struct Slot {
    void** pointer;
    size_t offset;
  };
  size_t alignment_;
  std::vector<Slot> slots_;
  size_t bytes_ = 0;
};

// LoRA lifetime: parameters, gradients and AdamW moments, and the parameters and moments saved
// before the last update (so a diverged step can undo it), each lora.parameterCount() floats.
struct LoraBuffers {
  float* params = nullptr;
  float* grads = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  float* savedParams = nullptr;
  float* savedM = nullptr;
  float* savedV = nullptr;
};
void layoutLora(BufferLayout& layout, LoraBuffers& buffers, int64_t parameterCount);
float* loraBlock(const LoraBuffers& buffers, LoraBlock block);
// (destination, source) of the three copies that save params, m and v (save) or restore them
std::array<std::pair<float*, const float*>, 3> stateCopies(const LoraBuffers& buffers, bool save);

// Activation lifetime: the buffers of one row of up to T = maxTokens positions that both backends
// lay out alike (layoutActivations). C = nEmbd, QD = nHead·headDim, KD = nHeadKv·headDim, F = nFf,
// R = LoRA rank, TF = positions per feed-forward chunk (T when the backend runs the block whole). What a layer's backward reads of its forward beyond these (attention statistics,
// the feed-forward input, the LoRA hidden products) each backend keeps its own way (CpuBuffers here,
// LayerActivations in cuda_plan.cuh).
struct ActivationBuffers {
  float* residual = nullptr;   // (L + 1, T, C): each layer's input (checkpoints) and the final output (CUDA with
                               // the checkpoints in host memory: 2 slots, layer l's input in slot l % 2)
  float* normed1 = nullptr;    // (T, C) attention RMSNorm output
  float* rstd1 = nullptr;      // (T)
  float* q = nullptr;          // (T, QD) after RoPE
  float* k = nullptr;          // (T, KD) after RoPE
  float* v = nullptr;          // (T, KD)
  float* attn = nullptr;       // (T, QD) attention output
  float* normed2 = nullptr;    // (T, C) FFN RMSNorm output
  float* rstd2 = nullptr;      // (T)
  float* gate = nullptr;       // (TF, F) gate projection; holds d(gate) in the CPU's backward
  float* up = nullptr;         // (TF, F) up projection; holds d(up) in the backward
  float* hidden = nullptr;     // (TF, F) silu(gate)·up
  float* normedFinal = nullptr;  // (T, C)
  float* rstdFinal = nullptr;    // (T)
  float* ropeCache = nullptr;    // (T, headDim)
  int32_t* seqStart = nullptr;   // (T) start of each position's sequence
  // backward
  float* dResidual = nullptr;  // (T, C)
  float* dNormed = nullptr;    // (T, C)
  float* dAttn = nullptr;      // (T, QD)
  float* dq = nullptr;         // (T, QD)
  float* dk = nullptr;         // (T, KD)
  float* dv = nullptr;         // (T, KD)
  float* dHidden = nullptr;    // (TF, F)
  float* dLoraHidden = nullptr;  // (T, R)
  // loss head: the positions that have a target, packed
  float* lossInput = nullptr;    // (T, C)
  float* dLossInput = nullptr;   // (T, C)
  int32_t* lossTargets = nullptr;  // (T)
  int32_t* lossPositions = nullptr;  // (T)
  float* runMax = nullptr;       // (T)
  float* runSum = nullptr;       // (T)
  float* targetLogit = nullptr;  // (T)
  float* lossLse = nullptr;      // (T)
};
// residualSlots: (T, C) slots of `residual` (L + 1: every layer's input and the final output; 0: the caller
// lays it out).
// sharedBuffers (the CUDA backend): buffers whose lives do not overlap share one; shareActivationBuffers
// points them at their hosts once the layout is assigned: gate at dHidden (gate's product is consumed
// before dHidden is written), hidden at up (SwiGLU writes it over up in place), and the loss head's
// normedFinal, lossInput and dLossInput at dNormed, dAttn and dq (free while the loss head runs).
void layoutActivations(BufferLayout& layout, ActivationBuffers& buffers, const ModelConfig& config, int64_t T,
                       int64_t feedForwardTokens, int64_t rank, int64_t residualSlots, bool sharedBuffers = false);
void shareActivationBuffers(ActivationBuffers& buffers);

// The CPU backend's own activation buffers.
struct CpuBuffers {
  float* lse = nullptr;          // (nHead, T)
  float* residual2 = nullptr;    // (T, C) after the attention residual
  float* loraHidden = nullptr;   // (7, T, R) x·Aᵀ of each projection's LoRA
  int32_t* positions = nullptr;  // (T) position inside its sequence
  int32_t* seqEnd = nullptr;     // (T) end of each position's sequence
};

// What a layer's backward reads of its forward (CPU): one set that recomputed layers share (its
// feed-forward buffers hold a chunk of feedForwardTokens positions; ActivationBuffers and CpuBuffers
// hold it), and one of whole rows for each layer kept from the forward.
struct CpuLayerActivations {
  float* normed1 = nullptr;     // (T, C)
  float* rstd1 = nullptr;       // (T)
  float* q = nullptr;           // (T, QD)
  float* k = nullptr;           // (T, KD)
  float* v = nullptr;           // (T, KD)
  float* attn = nullptr;        // (T, QD)
  float* lse = nullptr;         // (nHead, T)
  float* residual2 = nullptr;   // (T, C)
  float* normed2 = nullptr;     // (T, C)
  float* rstd2 = nullptr;       // (T)
  float* gate = nullptr;        // (TF, F)
  float* up = nullptr;          // (TF, F)
  float* hidden = nullptr;      // (TF, F)
  float* loraHidden = nullptr;  // (7, T, R)
  int64_t feedForwardTokens = 0;  // TF
};

// Scratch lifetime: reused by every kernel call.
struct ScratchBuffers {
  float* weightChunk = nullptr;  // (weightChunkFloats) dequantized rows of one base matrix
  float* logitsChunk = nullptr;  // (T, vocabChunk)
  float* droppedInput = nullptr;  // (max(T·max(C, QD), TF·F)) LoRA input after dropout
  float* gemm = nullptr;          // kernels::gemmWorkspaceFloats(threads)
  float* attention = nullptr;     // kernels::attentionWorkspaceFloats(T, nHead, threads)
};

struct PlanSizes {
  int64_t maxTokens = 0;
  int64_t weightChunkFloats = 0;  // dequantized base-matrix rows held at a time (whole rows)
  int64_t vocabChunk = 0;       // vocabulary ids per lm_head chunk
  int64_t feedForwardTokens = 0;  // positions per feed-forward chunk: no (T, F) buffer exists whole
  int64_t keptLayers = 0;         // layers whose activations stay from the forward, whole rows (the last
                                  // layer's are in the shared set and never recomputed)
  int threads = 1;
};

// The CPU backend's plan: host memory, one block per lifetime.
class MemoryPlan {
 public:
  MemoryPlan(const Model& model, const Lora& lora, const PlanSizes& sizes);
  const LoraBuffers& lora() const { return lora_; }
  const ActivationBuffers& activations() const { return activations_; }
  const CpuBuffers& cpuBuffers() const { return cpuBuffers_; }
  // layer's activations: its own when kept, else the shared set
  const CpuLayerActivations& layerActivations(int64_t layer) const;
  bool kept(int64_t layer) const { return layer >= firstKeptLayer_ && layer < lastLayer_; }
  // bytes of one kept layer's activations
  static size_t keptLayerBytes(const ModelConfig& config, int64_t T, int64_t rank);
  const ScratchBuffers& scratch() const { return scratch_; }
  const PlanSizes& sizes() const { return sizes_; }
  // bytes per lifetime: weights (mapped file), convertedWeights, lora, activations, scratch
  std::vector<std::pair<std::string, double>> report(const Model& model) const;

 private:
  struct Block {
    void operator()(void* p) const;
  };
  PlanSizes sizes_;
  LoraBuffers lora_;
  ActivationBuffers activations_;
  CpuBuffers cpuBuffers_;
  CpuLayerActivations shared_;
  std::vector<CpuLayerActivations> kept_;  // layers [firstKeptLayer_, lastLayer_)
  int64_t firstKeptLayer_ = 0, lastLayer_ = 0;
  ScratchBuffers scratch_;
  size_t loraBytes_ = 0, activationBytes_ = 0, scratchBytes_ = 0;
  std::unique_ptr<char, Block> loraBlock_, activationBlock_, scratchBlock_;
};

}  // namespace thinktune
