#include "engine/cuda_plan.cuh"

#include <algorithm>
#include <cstdio>

#include "common/error.h"
#include "engine/engine.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention.h"

namespace thinktune {

using namespace cuda;

namespace {

constexpr size_t kAlignment = 256;
constexpr int64_t kLogitsChunkFloats = int64_t{16} << 20;  // 64 MiB of (tokens, vocab chunk) logits
// Kept free for the CUDA context, cuBLAS workspaces and the allocator when planning against a card
// size (--gpu-memory), where none of that is already subtracted from the free memory.
constexpr size_t kContextReserveBytes = size_t{768} << 20;
// Left free when kept activations fill the rest of the budget: cuBLAS's workspaces and other
// allocations made after the plan.
constexpr size_t kKeptHeadroomBytes = size_t{256} << 20;

std::string gibibytes(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", bytes / double(1u << 30));
  return text;
}

void addLayerActivations(BufferLayout& layout, LayerActivations& a, const ModelConfig& c, int64_t T, int64_t R) {
  const int64_t QD = c.qDim(), KD = c.kvDim();
  layout.add(a.q, T * QD);
  layout.add(a.k, T * KD);
  layout.add(a.v, T * KD);
  layout.add(a.attn, T * QD);
  layout.add(a.lse, c.nHead * T);
  layout.add(a.residual2, T * c.nEmbd);
  layout.add(a.gate, T * c.nFf);
  layout.add(a.up, T * c.nFf);
  layout.add(a.loraHidden, kProjectionCount * T * R);
}

}  // namespace

CudaPlan::CudaPlan(const EngineOptions& options, const Model& model, const Lora& lora, int device) {
  const ModelConfig& c = model.config();
  const int64_t T = options.maxTokens;
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim(), R = lora.options().rank, L = c.nLayer;
  const int64_t widest = std::max(std::max(C, QD), std::max(c.nFf, KD));
  vocabChunk_ = std::min<int64_t>(c.nVocab, std::max<int64_t>(256, kLogitsChunkFloats / T));

  BufferLayout weights(kAlignment);
  weights_ = std::make_unique<DeviceModel>(model, weights);

  BufferLayout loraLayout(kAlignment);
  layoutLora(loraLayout, lora_, static_cast<int64_t>(lora.parameterCount()));

  flash_ = flashAttentionSupports(c.headDim, c.nHead, c.nHeadKv);
  BufferLayout act(kAlignment);
  layoutActivations(act, activations_, c, T, /*feedForwardTokens=*/T, R, /*sharedFeedForward=*/true);
  addLayerActivations(act, shared_, c, T, R);
  CudaRowBuffers& b = rowBuffers_;
  act.add(b.tokens, T);
  act.add(b.rowDots, c.nHead * T);
  act.add(b.lossSum, 1);
  act.add(b.sumSquares, 1);
  act.add(b.badRow, static_cast<int64_t>(weights_->matrixCount()));

  BufferLayout scratch(kAlignment);
  CudaScratch& s = scratch_;
  for (int p = 0; p < kProjectionCount; ++p) scratch.add(s.layerWeights[p], model.layer(0).matrix[p]->nElements);
  scratch.add(s.weightBf16, vocabChunk_ * C);
  scratch.add(s.dAttnBf16, T * QD);
  scratch.add(s.inputBf16, T * widest);
  scratch.add(s.gradientBf16, T * widest);
  scratch.add(s.dResidualBf16, T * C);
  scratch.add(s.droppedInput, lora.options().dropout > 0.0f ? T * widest : 1);
  scratch.add(s.logitsChunk, T * vocabChunk_);
  scratch.add(s.dlogits, T * vocabChunk_);
  if (!flash_) {
    const int64_t group = c.nHead / c.nHeadKv, D = c.headDim;
    queryTile_ = attentionQueryTile(T, c.nHead);
    AttentionWorkspace& aw = s.attention;
    scratch.add(aw.q, c.nHeadKv * T * group * D);
    scratch.add(aw.k, T * KD);
    scratch.add(aw.v, T * KD);
    scratch.add(aw.dout, c.nHeadKv * T * group * D);
    scratch.add(aw.scores, c.nHeadKv * queryTile_ * group * T);
    scratch.add(aw.dscores, c.nHeadKv * queryTile_ * group * T);
    scratch.add(aw.probs, c.nHeadKv * queryTile_ * group * T);
    scratch.add(aw.dprobs, c.nHeadKv * queryTile_ * group * T);
    scratch.add(aw.tileOut, c.nHeadKv * queryTile_ * group * D);
    scratch.add(aw.dkAcc, T * KD);
    scratch.add(aw.dvAcc, T * KD);
  }

  weightBytes_ = weights.bytes();
  loraBytes_ = loraLayout.bytes();
  scratchBytes_ = scratch.bytes();

  // the budget: what is free, or what a card of gpuMemoryBytes leaves after the CUDA context
  size_t freeBytes = 0, totalBytes = 0;
  check(cudaMemGetInfo(&freeBytes, &totalBytes), "cudaMemGetInfo");
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  size_t available = freeBytes;
  std::string against = std::string("free on ") + properties.name;
  if (options.gpuMemoryBytes > 0) {
    const size_t card = static_cast<size_t>(options.gpuMemoryBytes);
    available = std::min(freeBytes, card > kContextReserveBytes ? card - kContextReserveBytes : 0);
    against = "usable on a " + gibibytes(static_cast<double>(card)) + " card (gpuMemoryBytes, less " +
              gibibytes(static_cast<double>(kContextReserveBytes)) + " for the CUDA context)";
  }
  // keep as many layers' activations as the budget allows (the fused attention's layout only); the
  // backward recomputes the others
  BufferLayout oneLayer(kAlignment);
  LayerActivations sizing;
  addLayerActivations(oneLayer, sizing, c, T, R);
  const size_t fixedBytes = weightBytes_ + loraBytes_ + act.bytes() + scratchBytes_;
  const size_t spare = available > fixedBytes + kKeptHeadroomBytes ? available - fixedBytes - kKeptHeadroomBytes : 0;
  int64_t keep = flash_ ? std::min<int64_t>(L, static_cast<int64_t>(spare / oneLayer.bytes())) : 0;
  if (options.maxKeptLayers >= 0) keep = std::min(keep, options.maxKeptLayers);
  kept_.assign(static_cast<size_t>(keep), LayerActivations{});
  for (LayerActivations& layer : kept_) addLayerActivations(act, layer, c, T, R);
  firstKeptLayer_ = L - keep;
  activationBytes_ = act.bytes();
  keptLayerBytes_ = oneLayer.bytes();
  const size_t total = weightBytes_ + loraBytes_ + activationBytes_ + scratchBytes_;
  if (total > available) {
    throw Error("the CUDA memory plan needs " + gibibytes(static_cast<double>(total)) + " (weights " +
                    gibibytes(static_cast<double>(weightBytes_)) + ", LoRA " +
                    gibibytes(static_cast<double>(loraBytes_)) + ", activations " +
                    gibibytes(static_cast<double>(activationBytes_)) + ", scratch " +
                    gibibytes(static_cast<double>(scratchBytes_)) + ") but only " +
                    gibibytes(static_cast<double>(available)) + " are " + against + "; lower maxTokens (now " +
                    std::to_string(T) + ") or the LoRA rank (now " + std::to_string(R) +
                    "), or use a smaller quantization of the model",
                ErrorKind::OutOfMemory);
  }
  const cudaError_t allocated = cudaMalloc(&block_, total);
  if (allocated != cudaSuccess) {
    cudaGetLastError();
    block_ = nullptr;
    throw Error("out of GPU memory: the CUDA memory plan needs " + gibibytes(static_cast<double>(total)) + " and " +
                    gibibytes(static_cast<double>(freeBytes)) + " were free on " + properties.name +
                    "; lower maxTokens (now " + std::to_string(T) + ") or the LoRA rank (now " + std::to_string(R) +
                    ")",
                ErrorKind::OutOfMemory);
  }
  char* base = block_;
  weights.assign(base);
  loraLayout.assign(base += weightBytes_);
  act.assign(base += loraBytes_);
  activations_.gate = activations_.dHidden;
  activations_.hidden = activations_.up;
  scratch.assign(base += activationBytes_);
  weights_->assigned();
}

CudaPlan::~CudaPlan() {
  if (block_) cudaFree(block_);  // errors here have nowhere to go
}

void CudaPlan::recordDeviceUse() {
  size_t freeBytes = 0, totalBytes = 0;
  if (cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess)
    devicePeakBytes_ = std::max(devicePeakBytes_, totalBytes - freeBytes);
}

std::vector<std::pair<std::string, double>> CudaPlan::report() const {
  const int64_t keptLayers = static_cast<int64_t>(kept_.size());
  return {{"weights", static_cast<double>(weightBytes_)},
          {"lora", static_cast<double>(loraBytes_)},
          {"activations", static_cast<double>(activationBytes_)},
          {"scratch", static_cast<double>(scratchBytes_)},
          {"total", static_cast<double>(weightBytes_ + loraBytes_ + activationBytes_ + scratchBytes_)},
          // layers whose activations stay from the forward (the rest are recomputed in the backward)
          {"keptLayers", static_cast<double>(keptLayers)},
          {"recomputedLayers", static_cast<double>(firstKeptLayer_)},
          {"keptLayerBytes", static_cast<double>(keptLayerBytes_)},
          // the most device memory in use, measured (cudaMemGetInfo: every process's allocations)
          {"deviceUsedPeak", static_cast<double>(devicePeakBytes_)}};
}

}  // namespace thinktune
