#include "engine/cuda_plan.cuh"

#include <algorithm>
#include <cstdio>

#include "common/error.h"
#include "common/host_memory.h"
#include "engine/engine.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention.h"

namespace thinktune {

using namespace cuda;

namespace {

constexpr size_t kAlignment = 256;
constexpr int64_t kLogitsChunkFloats = int64_t{16} << 20;  // 64 MiB of (tokens, vocab chunk) logits
// Each (positions, F) fp32 feed-forward buffer holds at most this much: 5,312 positions of a 7B's F = 18944,
// so 4,096-token rows run the block whole and longer ones in chunks.
constexpr int64_t kFeedForwardChunkFloats = int64_t{96} << 20;  // 384 MiB
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

// One layer's set; gate and up of TF rows (the shared set's chunk, or a whole kept layer's T), or none
// (TF = 0: a layer kept without its feed-forward products, pointed at the shared set's once assigned)
void addLayerActivations(BufferLayout& layout, LayerActivations& a, const ModelConfig& c, int64_t T, int64_t TF,
                         int64_t R) {
  const int64_t QD = c.qDim(), KD = c.kvDim();
  layout.add(a.q, T * QD);
  layout.add(a.k, T * KD);
  layout.add(a.v, T * KD);
  layout.add(a.attn, T * QD);
  layout.add(a.lse, c.nHead * T);
  layout.add(a.residual2, T * c.nEmbd);
  if (TF > 0) layout.add(a.gate, TF * c.nFf);
  if (TF > 0) layout.add(a.up, TF * c.nFf);
  layout.add(a.loraHidden, kProjectionCount * T * R);
}

// Positions per feed-forward chunk: the whole row while its (T, F) fp32 buffers stay within
// kFeedForwardChunkFloats, else equal chunks (a multiple of 64) that do.
int64_t feedForwardChunk(const EngineOptions& options, const ModelConfig& c) {
  const int64_t T = options.maxTokens;
  if (options.feedForwardTokens > 0) return std::min(T, options.feedForwardTokens);
  if (T * c.nFf <= kFeedForwardChunkFloats) return T;
  const int64_t chunks = (T * c.nFf + kFeedForwardChunkFloats - 1) / kFeedForwardChunkFloats;
  return std::min(T, ((T + chunks - 1) / chunks + 63) / 64 * 64);
}

}  // namespace

CudaPlan::CudaPlan(const EngineOptions& options, const Model& model, const Lora& lora, int device) {
  const ModelConfig& c = model.config();
  const int64_t T = options.maxTokens;
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim(), R = lora.options().rank, L = c.nLayer;
  nEmbd_ = C;
  feedForwardTokens_ = feedForwardChunk(options, c);
  const int64_t TF = feedForwardTokens_;
  const int64_t widest = std::max(T * std::max(C, QD), TF * c.nFf);
  vocabChunk_ = std::min<int64_t>(c.nVocab, std::max<int64_t>(256, kLogitsChunkFloats / T));

  BufferLayout weights(kAlignment);
  weights_ = std::make_unique<DeviceModel>(model, weights);

  BufferLayout loraLayout(kAlignment);
  layoutLora(loraLayout, lora_, static_cast<int64_t>(lora.parameterCount()));

  flash_ = flashAttentionSupports(c.headDim, c.nHead, c.nHeadKv);
  // everything of the activation lifetime but the residual checkpoints (placed below) and kept layers
  BufferLayout act(kAlignment);
  layoutActivations(act, activations_, c, T, TF, R, /*residualSlots=*/0, /*sharedBuffers=*/true);
  addLayerActivations(act, shared_, c, T, TF, R);
  CudaRowBuffers& b = rowBuffers_;
  act.add(b.tokens, T);
  act.add(b.positions, T);
  act.add(b.rowDots, c.nHead * T);
  act.add(b.lossSum, 1);
  act.add(b.sumSquares, 1);
  act.add(b.badRow, static_cast<int64_t>(weights_->matrixCount()));

  BufferLayout scratch(kAlignment);
  CudaScratch& s = scratch_;
  for (int p = 0; p < kProjectionCount; ++p) scratch.add(s.layerWeights[p], model.layer(0).matrix[p]->nElements);
  scratch.add(s.weightBf16, vocabChunk_ * C);
  scratch.add(s.dAttnBf16, T * QD);
  scratch.add(s.inputBf16, widest);
  scratch.add(s.gradientBf16, widest);
  scratch.add(s.dResidualBf16, T * C);
  scratch.add(s.normedBf16, T * C);
  scratch.add(s.droppedInput, lora.options().dropout > 0.0f ? widest : 1);
  scratch.add(s.loraStackedA, 3 * R * C);
  scratch.add(s.loraStackedAGrad, 3 * R * C);
  scratch.add(s.loraHiddenGrad, 3 * T * R);
  scratch.add(s.loraABf16, R * c.nFf);
  scratch.add(s.dLoraHiddenBf16, T * R);
  scratch.add(s.loraHiddenBf16, 3 * T * R);
  scratch.add(s.loraBBf16, c.nFf * R);
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
  // keep as many layers' activations as the budget allows (the fused attention's layout only), first
  // without their feed-forward products (a third of a whole layer's bytes at 16k positions saves more
  // than half of its recompute), then whole; the backward recomputes the rest
  BufferLayout wholeLayer(kAlignment), attentionLayer(kAlignment);
  LayerActivations sizing;
  addLayerActivations(wholeLayer, sizing, c, T, T, R);
  addLayerActivations(attentionLayer, sizing, c, T, 0, R);
  keptLayerBytes_ = wholeLayer.bytes();
  keptAttentionBytes_ = attentionLayer.bytes();
  const int64_t keepCap = flash_ ? (options.maxKeptLayers >= 0 ? std::min(L, options.maxKeptLayers) : L) : 0;
  const size_t slotBytes = roundUp(sizeof(float) * static_cast<size_t>(T * C), kAlignment);
  const size_t sharedBytes = weightBytes_ + loraBytes_ + act.bytes() + scratchBytes_;
  // (layers kept, of them with their feed-forward products) within what the checkpoints leave
  auto layersKept = [&](size_t checkpointBytes) -> std::pair<int64_t, int64_t> {
    const size_t fixed = sharedBytes + checkpointBytes + kKeptHeadroomBytes;
    const size_t spare = available > fixed ? available - fixed : 0;
    const int64_t kept = std::min<int64_t>(keepCap, static_cast<int64_t>(spare / keptAttentionBytes_));
    if (kept < keepCap) return {kept, 0};
    const size_t upgrade = keptLayerBytes_ - keptAttentionBytes_;
    return {kept, std::min<int64_t>(kept, static_cast<int64_t>((spare - kept * keptAttentionBytes_) / upgrade))};
  };
  // the checkpoints: L + 1 slots on the GPU, or L in pinned host memory and 2 slots on the GPU; host memory
  // when it keeps layers the GPU copies would cost (or is the only way to fit), and a half of the host holds them
  const size_t gpuCheckpoints = static_cast<size_t>(L + 1) * slotBytes, hostSlots = 2 * slotBytes;
  const size_t hostBytes = sizeof(float) * static_cast<size_t>(L * T * C);
  bool onHost = options.checkpoints == "host";
  if (options.checkpoints == "auto") {
    const bool gpuFits = sharedBytes + gpuCheckpoints <= available;
    const bool gains = !gpuFits || layersKept(hostSlots) > layersKept(gpuCheckpoints);
    onHost = gains && hostBytes <= physicalMemoryBytes() / 2;
  }
  act.add(activations_.residual, (onHost ? 2 : L + 1) * T * C);
  const auto [keep, keepWhole] = layersKept(onHost ? hostSlots : gpuCheckpoints);
  kept_.assign(static_cast<size_t>(keep), LayerActivations{});
  // the last keepWhole layers whole, the ones before them without the feed-forward products
  for (int64_t i = 0; i < keep; ++i) {
    LayerActivations& layer = kept_[static_cast<size_t>(i)];
    // the shared set's gate and up may hold a whole row too (TF = T): ownership is the plan's to say
    layer.ownFeedForward = i >= keep - keepWhole;
    addLayerActivations(act, layer, c, T, layer.ownFeedForward ? T : 0, R);
  }
  firstKeptLayer_ = L - keep;
  keptWholeLayers_ = keepWhole;
  activationBytes_ = act.bytes();
  const size_t total = weightBytes_ + loraBytes_ + activationBytes_ + scratchBytes_;
  if (total > available) {
    throw Error("the CUDA memory plan needs " + gibibytes(static_cast<double>(total)) + " (weights " +
                    gibibytes(static_cast<double>(weightBytes_)) + ", LoRA " +
                    gibibytes(static_cast<double>(loraBytes_)) + ", activations " +
                    gibibytes(static_cast<double>(activationBytes_)) + ", scratch " +
                    gibibytes(static_cast<double>(scratchBytes_)) + ") but only " +
                    gibibytes(static_cast<double>(available)) + " are " + against +
                    (onHost ? "; the residual checkpoints (" + gibibytes(static_cast<double>(hostBytes)) +
                                  ") are in host memory already"
                     : options.checkpoints == "auto"
                         ? "; the residual checkpoints (" + gibibytes(static_cast<double>(hostBytes)) +
                               ") would take more than half of the host's memory, so they stay on the GPU"
                         : "") +
                    "; lower maxTokens (now " + std::to_string(T) + ") or the LoRA rank (now " + std::to_string(R) +
                    "), or use a smaller quantization of the model",
                ErrorKind::OutOfMemory);
  }
  if (onHost) {
    if (cudaHostAlloc(reinterpret_cast<void**>(&hostCheckpoints_), hostBytes, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      hostCheckpoints_ = nullptr;
      throw Error("could not pin " + gibibytes(static_cast<double>(hostBytes)) +
                      " of host memory for the residual checkpoints (" + std::to_string(L) + " layers × " +
                      std::to_string(T) + " positions); lower maxTokens or use checkpoints \"gpu\"",
                  ErrorKind::OutOfMemory);
    }
    hostBytes_ = hostBytes;
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
  shareActivationBuffers(activations_);
  for (LayerActivations& layer : kept_) {
    if (layer.ownFeedForward) continue;
    layer.gate = shared_.gate;
    layer.up = shared_.up;
  }
  scratch.assign(base += activationBytes_);
  weights_->assigned();
}

CudaPlan::~CudaPlan() {
  // errors here have nowhere to go
  if (block_) cudaFree(block_);
  if (hostCheckpoints_) cudaFreeHost(hostCheckpoints_);
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
          // of the kept layers, those whose feed-forward products are kept too (the others recompute them)
          {"keptWholeLayers", static_cast<double>(keptWholeLayers_)},
          {"keptLayerBytes", static_cast<double>(keptLayerBytes_)},
          {"keptAttentionBytes", static_cast<double>(keptAttentionBytes_)},
          {"feedForwardTokens", static_cast<double>(feedForwardTokens_)},
          {"vocabChunk", static_cast<double>(vocabChunk_)},
          // pinned host memory holding the residual checkpoints (0: they are on the GPU)
          {"hostCheckpoints", static_cast<double>(hostBytes_)},
          // seconds the compute stream waited for checkpoint copies (the part that did not overlap)
          {"copyWaitSeconds", copyWaitSeconds_},
          // the most device memory in use, measured (cudaMemGetInfo: every process's allocations)
          {"deviceUsedPeak", static_cast<double>(devicePeakBytes_)}};
}

}  // namespace thinktune
