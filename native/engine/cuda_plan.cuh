// The CUDA backend's memory plan (the CUDA side's memory_plan.h): one device allocation split into
// the weights (DeviceModel), LoRA, activation and scratch lifetimes. The LoRA buffers and the shared
// activation buffers are laid out as on the CPU (memory_plan.h); the total is compared with the free
// GPU memory (or EngineOptions::gpuMemoryBytes) before anything is allocated, and what the budget
// leaves keeps the activations of as many layers as fit (the backward recomputes the others). The
// layers' residual checkpoints (fp32, (T, C) each) stay on the GPU, or where that would cost kept
// layers (or not fit), live in pinned host memory with two GPU slots (CudaBackend copies them on a
// second stream). The feed-forward block runs over chunks of feedForwardTokens positions, so no
// (T, nFf) buffer exists whole except in a kept layer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/cuda_model.cuh"
#include "engine/memory_plan.h"
#include "kernels/cuda/kernels.h"

namespace thinktune {

struct EngineOptions;

// What one layer's backward reads of its forward. Layers the memory plan keeps hold their own copy
// from the forward; the others share one copy that the backward fills by recomputing the layer. A
// layer kept without its feed-forward products (they are most of a layer's bytes and the cheapest
// part to recompute) holds its own copy of the rest and shares the chunk-sized gate and up.
// Cheaper values (the norms, SwiGLU's product, fp32 copies of the products' inputs) are rebuilt
// from these in the backward either way (CudaBackend::rebuildLayerScratch).
struct LayerActivations {
  __nv_bfloat16* q = nullptr;     // (T, QD) after RoPE
  __nv_bfloat16* k = nullptr;     // (T, KD) after RoPE
  __nv_bfloat16* v = nullptr;     // (T, KD)
  __nv_bfloat16* attn = nullptr;  // (T, QD) attention output, O's input
  float* lse = nullptr;           // (nHead, T)
  float* residual2 = nullptr;     // (T, C) input of the feed-forward block
  __nv_bfloat16* gate = nullptr;  // (TF, F) gate projection, rounded
  __nv_bfloat16* up = nullptr;    // (TF, F) up projection, rounded
  float* loraHidden = nullptr;    // (7, T, R) x·Aᵀ of each adapter
  bool ownFeedForward = false;    // gate and up are this layer's, (T, F) of the whole row; else the shared (TF, F)
};

// Activation-lifetime buffers only the CUDA passes use, besides ActivationBuffers (whose q, k, v,
// attn, gate and up hold the fp32 products before their bf16 copies in LayerActivations).
struct CudaRowBuffers {
  int32_t* tokens = nullptr;             // (T) the row's token ids
  int32_t* positions = nullptr;          // (T) each token's position in its sequence (rows of ropeCache)
  float* rowDots = nullptr;              // (nHead, T) attention backward workspace
  double* lossSum = nullptr;             // (1) the running loss sum
  double* sumSquares = nullptr;          // (1)
  unsigned long long* badRow = nullptr;  // (matrices) first non-finite row of each base matrix
};

// Scratch lifetime: reused by every product.
struct CudaScratch {
  __nv_bfloat16* layerWeights[kProjectionCount] = {};  // one layer's matrices in bf16, dequantized once a pass
  __nv_bfloat16* weightBf16 = nullptr;  // (vocabChunk, C) the output matrix a chunk at a time
  __nv_bfloat16* dAttnBf16 = nullptr;   // (T, QD) the attention output's gradient
  // widest: max(T·max(C, QD), TF·F) elements
  __nv_bfloat16* inputBf16 = nullptr;     // (widest) a product's activation operand
  __nv_bfloat16* gradientBf16 = nullptr;  // (widest) a second one: SwiGLU's output, d(up), dK in the backward
  __nv_bfloat16* dResidualBf16 = nullptr;  // (T, C) the residual gradient, as the RMSNorm backward leaves it
  __nv_bfloat16* normedBf16 = nullptr;  // (T, C) the feed-forward block's normed input: every chunk's gate and up read it
  float* droppedInput = nullptr;        // (widest) LoRA input after dropout (only with dropout)
  // a group of adapters sharing their input (q, k, v: three at most), their products fused
  float* loraStackedA = nullptr;        // (3·R, C) their A matrices stacked
  float* loraStackedAGrad = nullptr;    // (3·R, C) the stacked dA
  float* loraHiddenGrad = nullptr;      // (T, 3·R) their dh side by side
  // the down adapter from the bf16 hidden (no fp32 copy of the (T, F) hidden without dropout)
  __nv_bfloat16* loraABf16 = nullptr;   // (R, F) its A in bf16
  __nv_bfloat16* dLoraHiddenBf16 = nullptr;  // (T, R) its dh in bf16
  // the gate and up adapters' products in bf16 (their outputs are bf16)
  __nv_bfloat16* loraHiddenBf16 = nullptr;   // (T, 3·R) x·Aᵀ rows
  __nv_bfloat16* loraBBf16 = nullptr;        // (F, R) B
  float* logitsChunk = nullptr;         // (T, vocabChunk)
  __nv_bfloat16* dlogits = nullptr;     // (T, vocabChunk)
  cuda::AttentionWorkspace attention;   // the tiled attention's buffers (kernels.h), without flash
};

class CudaPlan {
 public:
  // Sizes every lifetime, checks the total against the memory usable on `device`, allocates it and
  // hands out the pointers (weights into `model`). Throws Error with the numbers when it does not fit.
  CudaPlan(const EngineOptions& options, const Model& model, const Lora& lora, int device);
  ~CudaPlan();
  CudaPlan(const CudaPlan&) = delete;
  CudaPlan& operator=(const CudaPlan&) = delete;

  DeviceModel& weights() { return *weights_; }
  const DeviceModel& weights() const { return *weights_; }
  const LoraBuffers& lora() const { return lora_; }
  const ActivationBuffers& activations() const { return activations_; }
  const CudaRowBuffers& rowBuffers() const { return rowBuffers_; }
  const CudaScratch& scratch() const { return scratch_; }
  // the activations layer `layer`'s backward reads: its own when kept, else the shared copy
  const LayerActivations& layerActivations(int64_t layer) const {
    return layer >= firstKeptLayer_ ? kept_[static_cast<size_t>(layer - firstKeptLayer_)] : shared_;
  }
  // whether layer's activations are kept from the forward (its gate and up too: layerActivations().ownFeedForward)
  bool keeps(int64_t layer) const { return layer >= firstKeptLayer_; }
  // layer `layer`'s input (layer nLayer: the last layer's output) on the GPU, for a row of T positions
  float* layerInput(int64_t layer, int64_t T) const {
    return activations_.residual + (hostCheckpoints_ ? layer % 2 : layer) * T * nEmbd_;
  }
  // its copy in pinned host memory (checkpointsOnHost() only)
  float* hostCheckpoint(int64_t layer, int64_t T) const { return hostCheckpoints_ + layer * T * nEmbd_; }
  bool checkpointsOnHost() const { return hostCheckpoints_ != nullptr; }
  int64_t feedForwardTokens() const { return feedForwardTokens_; }
  bool flash() const { return flash_; }  // the fused attention handles this head shape
  int64_t vocabChunk() const { return vocabChunk_; }
  int64_t queryTile() const { return queryTile_; }
  size_t loraBytes() const { return loraBytes_; }
  // bytes per lifetime (weights, lora, activations, scratch, total), the kept and recomputed layers,
  // and the most device memory in use seen by recordDeviceUse
  std::vector<std::pair<std::string, double>> report() const;
  // Notes the device memory in use now (cudaMemGetInfo: every process's allocations).
  void recordDeviceUse();
  // Adds time the compute stream waited for a checkpoint copy.
  void recordCopyWait(double seconds) { copyWaitSeconds_ += seconds; }

 private:
  std::unique_ptr<DeviceModel> weights_;
  LoraBuffers lora_;
  ActivationBuffers activations_;
  CudaRowBuffers rowBuffers_;
  CudaScratch scratch_;
  LayerActivations shared_;             // the recomputed layers' activations
  std::vector<LayerActivations> kept_;  // layers [firstKeptLayer_, L): kept from the forward
  int64_t firstKeptLayer_ = 0;
  int64_t nEmbd_ = 0;
  int64_t feedForwardTokens_ = 0;
  float* hostCheckpoints_ = nullptr;  // (L, T, C) pinned, when the checkpoints live in host memory
  size_t hostBytes_ = 0;
  double copyWaitSeconds_ = 0.0;
  bool flash_ = false;
  int64_t vocabChunk_ = 0;
  int64_t queryTile_ = 0;
  size_t weightBytes_ = 0, loraBytes_ = 0, activationBytes_ = 0, scratchBytes_ = 0, keptLayerBytes_ = 0;
  size_t keptAttentionBytes_ = 0;  // a layer kept without its feed-forward products
  int64_t keptWholeLayers_ = 0;
  size_t devicePeakBytes_ = 0;
  char* block_ = nullptr;  // the one device allocation
};

}  // namespace thinktune
