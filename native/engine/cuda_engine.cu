// The CUDA engine (see cuda_engine.h): thinktune::Engine's passes (train_step.cpp) step for step on
// the GPU. Per layer: RMSNorm → Q/K/V (+bias, +LoRA) → RoPE → causal GQA attention → O (+LoRA) →
// residual → RMSNorm → SwiGLU FFN (+LoRA) → residual; backward recomputes each layer from its saved
// input and produces gradients for LoRA A and B only. Host code here enqueues on one stream and
// synchronizes once per call (and where a number must come back: the loss, the gradient norm).
#include "engine/cuda_engine.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "engine/error.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/kernels.h"

namespace thinktune {

using namespace cuda;

namespace {

constexpr size_t kAlignment = 256;
constexpr int64_t kLogitsChunkFloats = int64_t{32} << 20;  // 128 MiB of (tokens, vocab chunk) logits
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

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// A CUDA or cuBLAS failure: the context may be unusable afterwards, so the engine refuses later calls.
bool isDeviceFailure(const Error& error) {
  const std::string message = error.what();
  return message.rfind("CUDA error", 0) == 0 || message.rfind("cuBLAS", 0) == 0;
}

// A base matrix in GPU memory, still in its GGUF type.
struct DeviceMatrix {
  const MappedTensor* host = nullptr;
  uint8_t* data = nullptr;  // (nRows, rowBytes)
};

struct DeviceLayer {
  float* attnNorm = nullptr;  // (C)
  float* ffnNorm = nullptr;   // (C)
  float* bias[kProjectionCount] = {};
  DeviceMatrix matrix[kProjectionCount];
};

// What one layer's backward reads of its forward. Layers the memory plan keeps hold their own copy
// from the forward; the others share one copy that the backward fills by recomputing the layer.
// Cheaper values (the norms, SwiGLU's product, fp32 copies of the products' inputs) are rebuilt
// from these in the backward either way (LayerScratch).
struct LayerActivations {
  __nv_bfloat16* q = nullptr;     // (T, QD) after RoPE
  __nv_bfloat16* k = nullptr;     // (T, KD) after RoPE
  __nv_bfloat16* v = nullptr;     // (T, KD)
  __nv_bfloat16* attn = nullptr;  // (T, QD) attention output, O's input
  float* lse = nullptr;           // (nHead, T)
  float* residual2 = nullptr;     // (T, C) input of the feed-forward block
  __nv_bfloat16* gate = nullptr;  // (T, F) gate projection, rounded
  __nv_bfloat16* up = nullptr;    // (T, F) up projection, rounded
  float* loraHidden = nullptr;    // (7, T, R) x·Aᵀ of each adapter
};

}  // namespace

struct CudaEngine::State {
  EngineOptions options;
  std::unique_ptr<Model> model;
  std::unique_ptr<Lora> lora;
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  char* block = nullptr;  // the one device allocation
  size_t weightBytes = 0, loraBytes = 0, activationBytes = 0, scratchBytes = 0, keptLayerBytes = 0;
  size_t devicePeakBytes = 0;  // the most device memory in use (cudaMemGetInfo) seen after a call
  int64_t vocabChunk = 0;
  int64_t optimizerStep = 0;
  std::atomic<bool> busy{false};
  std::atomic<bool> abortRequested{false};
  std::atomic<const char*> runningCall{""};
  std::string broken;  // why the device became unusable, or empty

  // weights lifetime
  std::vector<DeviceLayer> layers;
  DeviceMatrix tokenEmbedding, output;
  float* outputNorm = nullptr;  // (C)
  // LoRA lifetime: P floats each
  float *params = nullptr, *grads = nullptr, *m = nullptr, *v = nullptr;
  // activation lifetime (T = maxTokens; see memory_plan.h for the CPU twins)
  float* residual = nullptr;   // (L + 1, T, C)
  LayerActivations shared;     // the recomputed layers' activations
  std::vector<LayerActivations> kept;  // layers [L − kept.size(), L): kept from the forward
  int64_t workingLayer = -1;   // the layer whose forward values `shared` and the scratch below hold
  // rebuilt per layer, in forward and backward
  float* normed1 = nullptr;    // (T, C)
  float* rstd1 = nullptr;      // (T)
  float* q = nullptr;          // (T, QD) fp32 products, before bf16
  float* k = nullptr;          // (T, KD)
  float* vAct = nullptr;       // (T, KD)
  float* attn = nullptr;       // (T, QD) fp32 copy of the attention output (O's LoRA input)
  float* normed2 = nullptr;    // (T, C)
  float* rstd2 = nullptr;      // (T)
  float* gate = nullptr;       // (T, F) fp32 products (+LoRA) before they are rounded
  float* up = nullptr;         // (T, F); d(up) in backward
  float* hidden = nullptr;     // (T, F)
  float* normedFinal = nullptr;  // (T, C)
  float* rstdFinal = nullptr;    // (T)
  float* ropeCache = nullptr;    // (T, headDim)
  int32_t* tokens = nullptr;     // (T)
  int32_t* seqStart = nullptr;   // (T)
  float* dResidual = nullptr;    // (T, C)
  float* dNormed = nullptr;      // (T, C)
  float* dAttn = nullptr;        // (T, QD)
  float* dq = nullptr;           // (T, QD)
  float* dk = nullptr;           // (T, KD)
  float* dv = nullptr;           // (T, KD)
  float* dHidden = nullptr;      // (T, F)
  float* dLoraHidden = nullptr;  // (T, R)
  float* rowDots = nullptr;      // (nHead, T)
  float* lossInput = nullptr;    // (T, C)
  float* dLossInput = nullptr;   // (T, C)
  int32_t* lossTargets = nullptr;    // (T)
  int32_t* lossPositions = nullptr;  // (T)
  float* runMax = nullptr;       // (T)
  float* runSum = nullptr;       // (T)
  float* targetLogit = nullptr;  // (T)
  float* lossLse = nullptr;      // (T)
  double* lossSum = nullptr;     // (1)
  double* sumSquares = nullptr;  // (1)
  unsigned long long* badRow = nullptr;  // (matrices) first non-finite row of each base matrix
  // scratch lifetime
  __nv_bfloat16* layerWeights[kProjectionCount] = {};  // one layer's matrices in bf16, dequantized once a pass
  int64_t cachedLayer = -1;             // the layer layerWeights holds
  __nv_bfloat16* weightBf16 = nullptr;  // (vocabChunk, C) the output matrix a chunk at a time
  __nv_bfloat16* dAttnBf16 = nullptr;   // (T, QD) the attention output's gradient
  __nv_bfloat16* inputBf16 = nullptr;   // (T, widest) a product's activation operand
  float* droppedInput = nullptr;        // (T, widest) LoRA input after dropout (only with dropout)
  float* logitsChunk = nullptr;         // (T, vocabChunk)
  __nv_bfloat16* dlogits = nullptr;     // (T, vocabChunk)
  bool flash = false;                     // the fused attention handles this head shape
  AttentionWorkspace attentionWorkspace;  // the tiled attention's buffers (kernels.h), without flash
  int64_t queryTile = 0;
  std::vector<int32_t> hostSeqStart;      // (T) the current row's sequence starts, for attention tiles

  ~State() {
    cudaSetDevice(device);  // may run on any thread; errors here have nowhere to go
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
    if (block) cudaFree(block);
  }

  void upload(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (to the GPU)");
  }
  void download(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync (from the GPU)");
    synchronize();
  }
  void synchronize() { check(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }
  void zero(void* dst, size_t bytes) { check(cudaMemsetAsync(dst, 0, bytes, stream), "cudaMemsetAsync"); }
  void checkAbort() const {
    if (abortRequested.load()) throw AbortedError();
  }

  // Holds the engine for one call: refuses a concurrent call and a broken device, selects the device
  // on this (worker) thread, and marks the engine broken when a CUDA failure escapes the call.
  template <class Body>
  auto guarded(const char* what, Body&& body) -> decltype(body()) {
    if (busy.exchange(true)) {
      throw Error(std::string("engine busy: ") + runningCall.load() + " is still running; await it before calling " +
                  what);
    }
    runningCall.store(what);
    struct Release {
      State& s;
      ~Release() {
        s.runningCall.store("");
        s.busy.store(false);
      }
    } release{*this};
    if (!broken.empty()) {
      throw Error("the CUDA engine is unusable after an earlier GPU failure (" + broken +
                  "); dispose it and create a new engine");
    }
    try {
      check(cudaSetDevice(device), "cudaSetDevice");
      return body();
    } catch (const AbortedError&) {
      throw;
    } catch (const Error& error) {
      if (isDeviceFailure(error)) broken = error.what();
      throw;
    }
  }

  void plan();
  void recordDeviceUse() {
    size_t freeBytes = 0, totalBytes = 0;
    if (cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess)
      devicePeakBytes = std::max(devicePeakBytes, totalBytes - freeBytes);
  }
  FlashAttentionArgs flashArgs(LayerActivations& a, int64_t T) const {
    const ModelConfig& c = model->config();
    FlashAttentionArgs args;
    args.out = a.attn;
    args.lse = a.lse;
    args.q = a.q;
    args.k = a.k;
    args.v = a.v;
    args.seqStart = seqStart;
    args.T = static_cast<int>(T);
    args.nHead = static_cast<int>(c.nHead);
    args.nHeadKv = static_cast<int>(c.nHeadKv);
    args.D = static_cast<int>(c.headDim);
    args.scale = 1.0f / std::sqrt(static_cast<float>(c.headDim));
    return args;
  }
  AttentionShape attentionShape(int64_t T) const {
    const ModelConfig& c = model->config();
    return {T, c.nHead, c.nHeadKv, c.headDim, 1.0f / std::sqrt(static_cast<float>(c.headDim)), queryTile};
  }
  void validateRows(const std::vector<Row>& rows, bool needTargets) const;
  void prepareRow(const Row& row);
  void embed(const Row& row);
  void dequantizeLayer(int64_t layer);
  void baseForward(int64_t layer, Projection p, const __nv_bfloat16* inp, float* out, int64_t T, bool accumulate);
  void projectForward(int64_t layer, Projection p, const __nv_bfloat16* xBf16, const float* x, float* out,
                      float* loraHidden, int64_t T, bool training);
  void projectBackward(int64_t layer, Projection p, const float* dout, const float* x, float* dinp,
                       const float* loraHidden, int64_t T, bool accumulate, bool training);
  void baseBackwardInput(int64_t layer, Projection p, const float* dout, float* dinp, int64_t T, bool accumulate);
  LayerActivations& activationsOf(int64_t layer) {
    const int64_t firstKept = model->config().nLayer - static_cast<int64_t>(kept.size());
    return layer >= firstKept ? kept[static_cast<size_t>(layer - firstKept)] : shared;
  }
  void addLayerActivations(BufferLayout& layout, LayerActivations& a, int64_t T) const;
  DropoutMask dropoutMask(const LoraAdapter& adapter) const;
  const float* loraInput(const LoraAdapter& adapter, const float* inp, int64_t T, bool training);
  void loraForward(const LoraAdapter& adapter, const float* inp, float* out, float* loraHidden, int64_t T,
                    bool training, float beta);
  void loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp,
                    const float* loraHidden, int64_t T, bool training, bool accumulate);
  void layerForward(int64_t layer, int64_t T, bool training);
  void rebuildLayerScratch(int64_t layer, int64_t T);
  void layerBackward(int64_t layer, int64_t T, bool training);
  int64_t lossHead(const Row& row, bool withGradient);
  LossResult runRows(const std::vector<Row>& rows, bool withGradient, bool training);
  std::vector<NamedTensorData> namedTensors(const float* deviceBlock, const char* suffix);
  std::vector<float> blockFromNamed(const std::vector<NamedTensorData>& tensors, const char* suffix,
                                    const char* what) const;
};


int cudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

// ---- construction and the memory plan ----

CudaEngine::CudaEngine(EngineOptions options) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.options = std::move(options);
  EngineOptions& o = s.options;
  if (o.maxTokens <= 0) throw Error("maxTokens must be a positive integer, got " + std::to_string(o.maxTokens));
  if (o.maxTokens > o.config.contextLength) {
    throw Error("maxTokens " + std::to_string(o.maxTokens) + " exceeds the model's context length " +
                std::to_string(o.config.contextLength));
  }
  if (o.gpuMemoryBytes < 0) throw Error("gpuMemoryBytes must be >= 0, got " + std::to_string(o.gpuMemoryBytes));
  if (cudaDeviceCount() == 0) {
    throw Error("options.device \"cuda\" is not available in the CPU engine, and no CUDA device is usable here "
                "(no GPU or no NVIDIA driver); use device \"cpu\"");
  }
  s.model = std::make_unique<Model>(o.path, std::move(o.tensors), o.alignment, o.config);
  o.tensors.clear();
  s.lora = std::make_unique<Lora>(s.model->config(), o.lora);
  for (const LoraAdapter& adapter : s.lora->adapters()) {
    const MappedTensor* matrix = s.model->layer(adapter.layer).matrix[static_cast<int>(adapter.projection)];
    if (!dequantize_supports(static_cast<uint32_t>(matrix->type))) {
      throw Error("tensor " + matrix->name + ": its type is not supported by the CUDA engine");
    }
  }
  check(cudaGetDevice(&s.device), "cudaGetDevice");
  check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (cublasCreate(&s.cublas) != CUBLAS_STATUS_SUCCESS) throw Error("cuBLAS: cublasCreate failed");
  if (cublasSetStream(s.cublas, s.stream) != CUBLAS_STATUS_SUCCESS) throw Error("cuBLAS: cublasSetStream failed");
  s.plan();
}

CudaEngine::~CudaEngine() = default;

void CudaEngine::State::plan() {
  const ModelConfig& c = model->config();
  const int64_t T = options.maxTokens;
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim(), F = c.nFf, R = lora->options().rank, L = c.nLayer;
  const int64_t widest = std::max(std::max(C, QD), std::max(F, KD));
  vocabChunk = std::min<int64_t>(c.nVocab, std::max<int64_t>(256, kLogitsChunkFloats / T));

  // weights: every matrix in its file type, then the f32 norms and biases
  BufferLayout weights(kAlignment);
  layers.assign(static_cast<size_t>(L), DeviceLayer{});
  std::vector<DeviceMatrix*> matrices;
  int64_t largestLayerMatrix = 0;
  auto addMatrix = [&](DeviceMatrix& matrix, const MappedTensor* host) {
    matrix.host = host;
    weights.add(matrix.data, static_cast<int64_t>(host->nBytes));
    matrices.push_back(&matrix);
  };
  addMatrix(tokenEmbedding, &model->tokenEmbedding());
  const bool separateOutput = &model->output() != &model->tokenEmbedding();
  if (separateOutput) addMatrix(output, &model->output());
  else output.host = &model->output();
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& w = model->layer(l);
    DeviceLayer& layer = layers[static_cast<size_t>(l)];
    weights.add(layer.attnNorm, C);
    weights.add(layer.ffnNorm, C);
    for (int p = 0; p < kProjectionCount; ++p) {
      if (w.bias[p]) weights.add(layer.bias[p], w.matrix[p]->nRows);
      addMatrix(layer.matrix[p], w.matrix[p]);
      largestLayerMatrix = std::max(largestLayerMatrix, w.matrix[p]->nElements);
    }
  }
  weights.add(outputNorm, C);

  BufferLayout loraLayout(kAlignment);
  const int64_t P = static_cast<int64_t>(lora->parameterCount());
  loraLayout.add(params, P);
  loraLayout.add(grads, P);
  loraLayout.add(m, P);
  loraLayout.add(v, P);

  flash = flashAttentionSupports(c.headDim, c.nHead, c.nHeadKv);
  BufferLayout act(kAlignment);
  act.add(residual, (L + 1) * T * C);
  addLayerActivations(act, shared, T);
  act.add(normed1, T * C);
  act.add(rstd1, T);
  act.add(q, T * QD);
  act.add(k, T * KD);
  act.add(vAct, T * KD);
  act.add(attn, T * QD);
  act.add(normed2, T * C);
  act.add(rstd2, T);
  act.add(gate, T * F);
  act.add(up, T * F);
  act.add(hidden, T * F);
  act.add(normedFinal, T * C);
  act.add(rstdFinal, T);
  act.add(ropeCache, T * c.headDim);
  act.add(tokens, T);
  act.add(seqStart, T);
  act.add(dResidual, T * C);
  act.add(dNormed, T * C);
  act.add(dAttn, T * QD);
  act.add(dq, T * QD);
  act.add(dk, T * KD);
  act.add(dv, T * KD);
  act.add(dHidden, T * F);
  act.add(dLoraHidden, T * R);
  act.add(rowDots, c.nHead * T);
  act.add(lossInput, T * C);
  act.add(dLossInput, T * C);
  act.add(lossTargets, T);
  act.add(lossPositions, T);
  act.add(runMax, T);
  act.add(runSum, T);
  act.add(targetLogit, T);
  act.add(lossLse, T);
  act.add(lossSum, 1);
  act.add(sumSquares, 1);
  act.add(badRow, static_cast<int64_t>(matrices.size()));

  BufferLayout scratch(kAlignment);
  for (int p = 0; p < kProjectionCount; ++p) scratch.add(layerWeights[p], model->layer(0).matrix[p]->nElements);
  scratch.add(weightBf16, vocabChunk * C);
  scratch.add(dAttnBf16, T * QD);
  scratch.add(inputBf16, T * widest);
  scratch.add(droppedInput, lora->options().dropout > 0.0f ? T * widest : 1);
  scratch.add(logitsChunk, T * vocabChunk);
  scratch.add(dlogits, T * vocabChunk);
  if (!flash) {
    const int64_t group = c.nHead / c.nHeadKv, D = c.headDim;
    queryTile = attentionQueryTile(T, c.nHead);
    AttentionWorkspace& aw = attentionWorkspace;
    scratch.add(aw.q, c.nHeadKv * T * group * D);
    scratch.add(aw.k, T * KD);
    scratch.add(aw.v, T * KD);
    scratch.add(aw.dout, c.nHeadKv * T * group * D);
    scratch.add(aw.scores, c.nHeadKv * queryTile * group * T);
    scratch.add(aw.dscores, c.nHeadKv * queryTile * group * T);
    scratch.add(aw.probs, c.nHeadKv * queryTile * group * T);
    scratch.add(aw.dprobs, c.nHeadKv * queryTile * group * T);
    scratch.add(aw.tileOut, c.nHeadKv * queryTile * group * D);
    scratch.add(aw.dkAcc, T * KD);
    scratch.add(aw.dvAcc, T * KD);
  }

  weightBytes = weights.bytes();
  loraBytes = loraLayout.bytes();
  scratchBytes = scratch.bytes();

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
  addLayerActivations(oneLayer, sizing, T);
  const size_t fixedBytes = weightBytes + loraBytes + act.bytes() + scratchBytes;
  const size_t spare = available > fixedBytes + kKeptHeadroomBytes ? available - fixedBytes - kKeptHeadroomBytes : 0;
  int64_t keep = flash ? std::min<int64_t>(L, static_cast<int64_t>(spare / oneLayer.bytes())) : 0;
  if (options.maxKeptLayers >= 0) keep = std::min(keep, options.maxKeptLayers);
  kept.assign(static_cast<size_t>(keep), LayerActivations{});
  for (LayerActivations& layer : kept) addLayerActivations(act, layer, T);
  activationBytes = act.bytes();
  keptLayerBytes = oneLayer.bytes();
  const size_t total = weightBytes + loraBytes + activationBytes + scratchBytes;
  if (total > available) {
    throw Error("the CUDA memory plan needs " + gibibytes(static_cast<double>(total)) + " (weights " +
                gibibytes(static_cast<double>(weightBytes)) + ", LoRA " + gibibytes(static_cast<double>(loraBytes)) +
                ", activations " + gibibytes(static_cast<double>(activationBytes)) + ", scratch " +
                gibibytes(static_cast<double>(scratchBytes)) + ") but only " +
                gibibytes(static_cast<double>(available)) + " are " + against + "; lower maxTokens (now " +
                std::to_string(T) + ") or the LoRA rank (now " + std::to_string(R) +
                "), or use a smaller quantization of the model");
  }
  const cudaError_t allocated = cudaMalloc(&block, total);
  if (allocated != cudaSuccess) {
    cudaGetLastError();
    block = nullptr;
    throw Error("out of GPU memory: the CUDA memory plan needs " + gibibytes(static_cast<double>(total)) + " and " +
                gibibytes(static_cast<double>(freeBytes)) + " were free on " + properties.name +
                "; lower maxTokens (now " + std::to_string(T) + ") or the LoRA rank (now " + std::to_string(R) + ")");
  }
  char* base = block;
  weights.assign(base);
  loraLayout.assign(base += weightBytes);
  act.assign(base += loraBytes);
  scratch.assign(base += activationBytes);
  if (!separateOutput) output.data = tokenEmbedding.data;

  // upload the weights, then check every matrix for NaN / infinity once
  for (DeviceMatrix* matrix : matrices) upload(matrix->data, matrix->host->data, matrix->host->nBytes);
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& w = model->layer(l);
    DeviceLayer& layer = layers[static_cast<size_t>(l)];
    upload(layer.attnNorm, w.attnNorm, sizeof(float) * C);
    upload(layer.ffnNorm, w.ffnNorm, sizeof(float) * C);
    for (int p = 0; p < kProjectionCount; ++p)
      if (w.bias[p]) upload(layer.bias[p], w.bias[p], sizeof(float) * w.matrix[p]->nRows);
  }
  upload(outputNorm, model->outputNorm(), sizeof(float) * C);
  check(cudaMemsetAsync(badRow, 0xFF, sizeof(unsigned long long) * matrices.size(), stream), "cudaMemsetAsync");
  for (size_t i = 0; i < matrices.size(); ++i) {
    const MappedTensor& host = *matrices[i]->host;
    find_nonfinite_row(badRow + i, matrices[i]->data, static_cast<uint32_t>(host.type),
                       static_cast<int64_t>(host.rowBytes), host.rowLength, host.nRows, stream);
  }
  std::vector<unsigned long long> firstBad(matrices.size());
  download(firstBad.data(), badRow, sizeof(unsigned long long) * matrices.size());
  for (size_t i = 0; i < matrices.size(); ++i) {
    if (firstBad[i] != ~0ull) {
      throw Error("tensor " + matrices[i]->host->name + " holds a NaN or infinite value in row " +
                  std::to_string(firstBad[i]) + "; the model file is damaged: re-download or re-convert it");
    }
  }

  std::vector<float> initial(static_cast<size_t>(P));
  lora->initialize(initial.data());
  zero(params, loraBytes);
  upload(params, initial.data(), sizeof(float) * initial.size());
  synchronize();
  recordDeviceUse();
}

std::vector<std::pair<std::string, double>> CudaEngine::memoryPlan() const {
  const State& s = *state_;
  const int64_t L = s.model->config().nLayer, keptLayers = static_cast<int64_t>(s.kept.size());
  return {{"weights", static_cast<double>(s.weightBytes)},
          {"lora", static_cast<double>(s.loraBytes)},
          {"activations", static_cast<double>(s.activationBytes)},
          {"scratch", static_cast<double>(s.scratchBytes)},
          {"total", static_cast<double>(s.weightBytes + s.loraBytes + s.activationBytes + s.scratchBytes)},
          // layers whose activations stay from the forward (the rest are recomputed in the backward)
          {"keptLayers", static_cast<double>(keptLayers)},
          {"recomputedLayers", static_cast<double>(L - keptLayers)},
          {"keptLayerBytes", static_cast<double>(s.keptLayerBytes)},
          // the most device memory in use, measured (cudaMemGetInfo: every process's allocations)
          {"deviceUsedPeak", static_cast<double>(s.devicePeakBytes)}};
}

void CudaEngine::requestAbort() { state_->abortRequested.store(true); }
void CudaEngine::clearAbort() { state_->abortRequested.store(false); }
const ModelConfig& CudaEngine::config() const { return state_->model->config(); }

// ---- input validation (shared with the CPU engine: engine.h) ----

void CudaEngine::State::validateRows(const std::vector<Row>& rows, bool needTargets) const {
  thinktune::validateRows(model->config(), options.maxTokens, rows, needTargets);
}

// ---- the passes ----

void CudaEngine::State::prepareRow(const Row& row) {
  const ModelConfig& c = model->config();
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  std::vector<int32_t> positions(static_cast<size_t>(T)), starts(static_cast<size_t>(T));
  for (size_t i = 0; i < row.seqStarts.size(); ++i) {
    const int32_t start = row.seqStarts[i];
    const int32_t end = i + 1 < row.seqStarts.size() ? row.seqStarts[i + 1] : static_cast<int32_t>(T);
    for (int32_t t = start; t < end; ++t) {
      positions[static_cast<size_t>(t)] = t - start;
      starts[static_cast<size_t>(t)] = start;
    }
  }
  // the CPU's own cache: identical angles, llama3 frequency factors included
  std::vector<float> cache(static_cast<size_t>(T * c.headDim));
  kernels::rope_cache(cache.data(), positions.data(), T, c.headDim, c.ropeBase, model->ropeFreqs());
  upload(ropeCache, cache.data(), sizeof(float) * cache.size());
  upload(seqStart, starts.data(), sizeof(int32_t) * starts.size());
  hostSeqStart = std::move(starts);
  workingLayer = -1;  // the per-layer values are a previous row's
  upload(tokens, row.tokens.data(), sizeof(int32_t) * row.tokens.size());
}

void CudaEngine::State::embed(const Row& row) {
  const MappedTensor& table = *tokenEmbedding.host;
  dequantize_gather_f32(residual, tokenEmbedding.data, static_cast<uint32_t>(table.type),
                        static_cast<int64_t>(table.rowBytes), table.rowLength, tokens,
                        static_cast<int64_t>(row.tokens.size()), stream);
}

void CudaEngine::State::addLayerActivations(BufferLayout& layout, LayerActivations& a, int64_t T) const {
  const ModelConfig& c = model->config();
  const int64_t QD = c.qDim(), KD = c.kvDim();
  layout.add(a.q, T * QD);
  layout.add(a.k, T * KD);
  layout.add(a.v, T * KD);
  layout.add(a.attn, T * QD);
  layout.add(a.lse, c.nHead * T);
  layout.add(a.residual2, T * c.nEmbd);
  layout.add(a.gate, T * c.nFf);
  layout.add(a.up, T * c.nFf);
  layout.add(a.loraHidden, kProjectionCount * T * lora->options().rank);
}

// The layer's seven matrices in bf16, decoded once for the forward, and once for the recompute and
// the backward together (the backward of a layer follows its recompute directly).
void CudaEngine::State::dequantizeLayer(int64_t l) {
  if (cachedLayer == l) return;
  const DeviceLayer& layer = layers[static_cast<size_t>(l)];
  for (int p = 0; p < kProjectionCount; ++p) {
    const MappedTensor& w = *layer.matrix[p].host;
    dequantize_rows_bf16(layerWeights[p], layer.matrix[p].data, static_cast<uint32_t>(w.type),
                         static_cast<int64_t>(w.rowBytes), w.rowLength, 0, w.nRows, stream);
  }
  cachedLayer = l;
}

// out (T, N) = inp (T, K) · Wᵀ (+ bias) with the layer's dequantized matrix of projection p
void CudaEngine::State::baseForward(int64_t l, Projection p, const __nv_bfloat16* inp, float* out, int64_t T,
                                    bool accumulate) {
  const MappedTensor& w = *layers[static_cast<size_t>(l)].matrix[static_cast<int>(p)].host;
  const int64_t K = w.rowLength, N = w.nRows;
  dequantizeLayer(l);
  gemm_bf16(cublas, false, true, T, N, K, 1.0f, inp, K, layerWeights[static_cast<int>(p)], K, accumulate ? 1.0f : 0.0f,
            out, N);
}

// out (T, N) = x·Wᵀ + bias + the adapter's scale·x·Aᵀ·Bᵀ. The adapter's product goes first and the
// base product adds to it, so out is written once by each instead of read back by the second.
void CudaEngine::State::projectForward(int64_t l, Projection p, const __nv_bfloat16* xBf16, const float* x, float* out,
                                       float* loraHidden, int64_t T, bool training) {
  const LoraAdapter* adapter = lora->find(l, p);
  if (adapter) loraForward(*adapter, x, out, loraHidden, T, training, 0.0f);
  baseForward(l, p, xBf16, out, T, adapter != nullptr);
  if (const float* bias = layers[static_cast<size_t>(l)].bias[static_cast<int>(p)]) {
    add_bias(out, bias, T, layers[static_cast<size_t>(l)].matrix[static_cast<int>(p)].host->nRows, stream);
  }
}

// The adapter's gradients from dout; dinp (T, K) (+)= dout·W + the adapter's input gradient, unless
// dinp is null (no input gradient wanted).
void CudaEngine::State::projectBackward(int64_t l, Projection p, const float* dout, const float* x, float* dinp,
                                        const float* loraHidden, int64_t T, bool accumulate, bool training) {
  const LoraAdapter* adapter = lora->find(l, p);
  if (adapter) loraBackward(*adapter, x, dout, dinp, loraHidden, T, training, accumulate);
  if (dinp) baseBackwardInput(l, p, dout, dinp, T, accumulate || adapter != nullptr);
}

void CudaEngine::State::baseBackwardInput(int64_t l, Projection p, const float* dout, float* dinp, int64_t T,
                                          bool accumulate) {
  const MappedTensor& w = *layers[static_cast<size_t>(l)].matrix[static_cast<int>(p)].host;
  const int64_t K = w.rowLength, N = w.nRows;
  to_bf16(inputBf16, dout, T * N, stream);
  dequantizeLayer(l);
  // dinp (T, K) (+)= dout (T, N) · W (N, K)
  gemm_bf16(cublas, false, false, T, K, N, 1.0f, inputBf16, N, layerWeights[static_cast<int>(p)], K,
            accumulate ? 1.0f : 0.0f, dinp, K);
}

DropoutMask CudaEngine::State::dropoutMask(const LoraAdapter& adapter) const {
  const uint64_t step = static_cast<uint64_t>(optimizerStep + 1);
  DropoutMask mask;
  mask.stepKey = splitmix64(splitmix64(lora->options().seed ^ 0xD1B54A32D192ED03ull) ^ step);
  mask.site = static_cast<uint64_t>(adapter.layer * kProjectionCount + static_cast<int>(adapter.projection));
  mask.dropout = lora->options().dropout;
  return mask;
}

const float* CudaEngine::State::loraInput(const LoraAdapter& adapter, const float* inp, int64_t T, bool training) {
  if (!training || lora->options().dropout <= 0.0f) return inp;
  dropout_forward(droppedInput, inp, T * adapter.in, dropoutMask(adapter), stream);
  return droppedInput;
}

void CudaEngine::State::loraForward(const LoraAdapter& adapter, const float* inp, float* out, float* loraHidden,
                                    int64_t T, bool training, float beta) {
  const int64_t R = lora->options().rank, K = adapter.in, N = adapter.out;
  const float* x = loraInput(adapter, inp, T, training);                                   // (T, K)
  float* h = loraHidden + static_cast<int>(adapter.projection) * T * R;                    // (T, R)
  gemm_f32(cublas, false, true, T, R, K, 1.0f, x, K, params + adapter.offsetA, K, 0.0f, h, R);
  // out (T, N) = scale · h (T, R) · B (N, R)ᵀ + beta · out
  gemm_f32(cublas, false, true, T, N, R, lora->scale(), h, R, params + adapter.offsetB, R, beta, out, N);
}

void CudaEngine::State::loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp,
                                     const float* loraHidden, int64_t T, bool training, bool accumulate) {
  const int64_t R = lora->options().rank, K = adapter.in, N = adapter.out;
  const float scale = lora->scale();
  const float* h = loraHidden + static_cast<int>(adapter.projection) * T * R;  // (T, R)
  const float* x = loraInput(adapter, inp, T, training);                      // (T, K)
  // dB (N, R) += scale · dout (T, N)ᵀ · h (T, R)
  gemm_f32(cublas, true, false, N, R, T, scale, dout, N, h, R, 1.0f, grads + adapter.offsetB, R);
  // dh (T, R) = scale · dout (T, N) · B (N, R)
  gemm_f32(cublas, false, false, T, R, N, scale, dout, N, params + adapter.offsetB, R, 0.0f, dLoraHidden, R);
  // dA (R, K) += dh (T, R)ᵀ · x (T, K)
  gemm_f32(cublas, true, false, R, K, T, 1.0f, dLoraHidden, R, x, K, 1.0f, grads + adapter.offsetA, K);
  if (!dinp) return;  // the layer's input gradient is not wanted
  if (x == inp) {
    gemm_f32(cublas, false, false, T, K, R, 1.0f, dLoraHidden, R, params + adapter.offsetA, K, accumulate ? 1.0f : 0.0f,
             dinp, K);
    return;
  }
  // dropout: the input gradient passes only where the mask kept the element, scaled like the input
  gemm_f32(cublas, false, false, T, K, R, 1.0f, dLoraHidden, R, params + adapter.offsetA, K, 0.0f, droppedInput, K);
  if (!accumulate) zero(dinp, sizeof(float) * T * K);
  dropout_backward(dinp, droppedInput, T * K, dropoutMask(adapter), stream);
}

void CudaEngine::State::layerForward(int64_t l, int64_t T, bool training) {
  const ModelConfig& c = model->config();
  const DeviceLayer& w = layers[static_cast<size_t>(l)];
  const int64_t C = c.nEmbd, F = c.nFf, QD = c.qDim(), KD = c.kvDim();
  const float* x = residual + l * T * C;   // (T, C) layer input
  float* next = residual + (l + 1) * T * C;  // (T, C) layer output
  LayerActivations& a = activationsOf(l);

  rmsnorm_forward(normed1, inputBf16, rstd1, x, w.attnNorm, T, C, c.rmsEps, stream);  // bf16: the three products' input
  float* qkv[3] = {q, k, vAct};
  for (int p = 0; p < 3; ++p) projectForward(l, static_cast<Projection>(p), inputBf16, normed1, qkv[p], a.loraHidden, T, training);
  rope_forward(q, ropeCache, T, c.nHead, c.headDim, c.neoxRope(), stream);
  rope_forward(k, ropeCache, T, c.nHeadKv, c.headDim, c.neoxRope(), stream);
  to_bf16(a.q, q, T * QD, stream);
  to_bf16(a.k, k, T * KD, stream);
  to_bf16(a.v, vAct, T * KD, stream);
  if (flash) {
    flash_attention_forward(flashArgs(a, T), stream);
    to_f32(attn, a.attn, T * QD, stream);
  } else {
    attention_forward(attn, a.lse, q, k, vAct, seqStart, hostSeqStart.data(), attentionShape(T), attentionWorkspace,
                      cublas, stream);
    to_bf16(a.attn, attn, T * QD, stream);
  }
  projectForward(l, Projection::O, a.attn, attn, a.residual2, a.loraHidden, T, training);
  add_inplace(a.residual2, x, T * C, stream);

  rmsnorm_forward(normed2, inputBf16, rstd2, a.residual2, w.ffnNorm, T, C, c.rmsEps, stream);  // bf16 for gate and up
  projectForward(l, Projection::Gate, inputBf16, normed2, gate, a.loraHidden, T, training);
  projectForward(l, Projection::Up, inputBf16, normed2, up, a.loraHidden, T, training);
  swiglu_forward(hidden, inputBf16, a.gate, a.up, gate, up, T * F, stream);  // bf16 hidden: down's input
  projectForward(l, Projection::Down, inputBf16, hidden, next, a.loraHidden, T, training);
  add_inplace(next, a.residual2, T * C, stream);
  workingLayer = l;
}

// A kept layer's backward needs the values its forward rebuilt per layer: the norms, SwiGLU's
// product and the fp32 attention output, from its input and its kept activations.
void CudaEngine::State::rebuildLayerScratch(int64_t l, int64_t T) {
  const ModelConfig& c = model->config();
  const DeviceLayer& w = layers[static_cast<size_t>(l)];
  const LayerActivations& a = activationsOf(l);
  rmsnorm_forward(normed1, nullptr, rstd1, residual + l * T * c.nEmbd, w.attnNorm, T, c.nEmbd, c.rmsEps, stream);
  rmsnorm_forward(normed2, nullptr, rstd2, a.residual2, w.ffnNorm, T, c.nEmbd, c.rmsEps, stream);
  swiglu_forward(hidden, a.gate, a.up, T * c.nFf, stream);
  to_f32(attn, a.attn, T * c.qDim(), stream);
  workingLayer = l;
}

void CudaEngine::State::layerBackward(int64_t l, int64_t T, bool training) {
  const ModelConfig& c = model->config();
  const DeviceLayer& w = layers[static_cast<size_t>(l)];
  const int64_t C = c.nEmbd, F = c.nFf;
  LayerActivations& a = activationsOf(l);
  if (workingLayer != l) {
    if (&a == &shared) layerForward(l, T, training);  // recompute this layer from its saved input
    else rebuildLayerScratch(l, T);
  }
  const float* x = residual + l * T * C;  // (T, C)
  const bool inputGradient = l > 0;  // the embeddings are frozen: layer 0's input gradient has no use

  // FFN: dResidual holds dL/d(layer output) and, by the skip connection, part of dL/d(residual2)
  projectBackward(l, Projection::Down, dResidual, hidden, dHidden, a.loraHidden, T, false, training);
  float* dGate = dHidden;  // in place: dHidden is read once per element
  swiglu_backward(dGate, up, dHidden, a.gate, a.up, T * F, stream);  // up now holds d(up)
  projectBackward(l, Projection::Gate, dGate, normed2, dNormed, a.loraHidden, T, false, training);
  projectBackward(l, Projection::Up, up, normed2, dNormed, a.loraHidden, T, true, training);
  rmsnorm_backward(dResidual, dNormed, a.residual2, w.ffnNorm, rstd2, T, C, stream);

  // attention: dResidual now holds dL/d(residual2) = dL/d(O output), and the skip share of dL/dx
  projectBackward(l, Projection::O, dResidual, attn, dAttn, a.loraHidden, T, false, training);
  if (flash) {
    to_bf16(dAttnBf16, dAttn, T * c.qDim(), stream);
    flash_attention_backward(flashArgs(a, T), {dAttnBf16, dq, dk, dv, rowDots}, stream);
  } else {
    attention_backward(dq, dk, dv, rowDots, dAttn, q, k, vAct, attn, a.lse, seqStart, hostSeqStart.data(),
                       attentionShape(T), attentionWorkspace, cublas, stream);
  }
  rope_backward(dq, ropeCache, T, c.nHead, c.headDim, c.neoxRope(), stream);
  rope_backward(dk, ropeCache, T, c.nHeadKv, c.headDim, c.neoxRope(), stream);
  float* dqkv[3] = {dq, dk, dv};
  for (int p = 0; p < 3; ++p) {
    projectBackward(l, static_cast<Projection>(p), dqkv[p], normed1, inputGradient ? dNormed : nullptr, a.loraHidden, T,
                    p > 0, training);
  }
  if (inputGradient) rmsnorm_backward(dResidual, dNormed, x, w.attnNorm, rstd1, T, C, stream);
}

// Final norm, lm_head and cross-entropy over the row's target positions, adding the loss to
// *lossSum on the device; with grad, leaves dL/d(final residual) in dResidual. Returns the count.
int64_t CudaEngine::State::lossHead(const Row& row, bool withGradient) {
  const ModelConfig& c = model->config();
  const MappedTensor& w = *output.host;
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  const int64_t C = c.nEmbd, V = c.nVocab;
  const float* x = residual + c.nLayer * T * C;  // (T, C) final residual
  rmsnorm_forward(normedFinal, nullptr, rstdFinal, x, outputNorm, T, C, c.rmsEps, stream);

  // only positions with a target reach the lm_head
  std::vector<int32_t> positions, targets;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t target = row.targets[static_cast<size_t>(t)];
    if (target < 0) continue;
    positions.push_back(static_cast<int32_t>(t));
    targets.push_back(target);
  }
  const int64_t N = static_cast<int64_t>(positions.size());
  if (withGradient) zero(dResidual, sizeof(float) * T * C);
  if (N == 0) return 0;
  upload(lossPositions, positions.data(), sizeof(int32_t) * positions.size());
  upload(lossTargets, targets.data(), sizeof(int32_t) * targets.size());
  gather_rows(lossInput, normedFinal, lossPositions, N, C, stream);
  to_bf16(inputBf16, lossInput, N * C, stream);  // (N, C), read by every chunk below

  const int passes = withGradient ? 2 : 1;
  cross_entropy_begin(runMax, runSum, targetLogit, N, stream);
  for (int pass = 0; pass < passes; ++pass) {
    // the second pass recomputes each chunk's logits for their gradient and its product with the weights
    for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
      const int64_t chunk = std::min(vocabChunk, V - v0);
      dequantize_rows_bf16(weightBf16, output.data, static_cast<uint32_t>(w.type), static_cast<int64_t>(w.rowBytes),
                           C, v0, chunk, stream);  // (chunk, C)
      gemm_bf16(cublas, false, true, N, chunk, C, 1.0f, inputBf16, C, weightBf16, C, 0.0f, logitsChunk, chunk);
      if (pass == 0) {
        cross_entropy_accumulate(runMax, runSum, targetLogit, logitsChunk, lossTargets, N, chunk, v0, stream);
      } else {
        cross_entropy_backward(dlogits, logitsChunk, lossLse, lossTargets, N, chunk, v0, 1.0f, stream);
        // dLossInput (N, C) (+)= dlogits (N, chunk) · W (chunk, C)
        gemm_bf16(cublas, false, false, N, C, chunk, 1.0f, dlogits, chunk, weightBf16, C, v0 > 0 ? 1.0f : 0.0f,
                  dLossInput, C);
      }
    }
    if (pass == 0) cross_entropy_finish(lossLse, lossSum, runMax, runSum, targetLogit, N, stream);
  }
  if (!withGradient) return N;
  zero(dNormed, sizeof(float) * T * C);
  scatter_rows(dNormed, dLossInput, lossPositions, N, C, stream);
  rmsnorm_backward(dResidual, dNormed, x, outputNorm, rstdFinal, T, C, stream);
  return N;
}

LossResult CudaEngine::State::runRows(const std::vector<Row>& rows, bool withGradient, bool training) {
  const int64_t L = model->config().nLayer;
  LossResult total;
  zero(lossSum, sizeof(double));
  for (const Row& row : rows) {
    checkAbort();
    const int64_t T = static_cast<int64_t>(row.tokens.size());
    prepareRow(row);
    embed(row);
    for (int64_t l = 0; l < L; ++l) {
      checkAbort();
      layerForward(l, T, training);
    }
    const int64_t N = lossHead(row, withGradient);
    if (withGradient && N > 0) {
      for (int64_t l = L - 1; l >= 0; --l) {
        checkAbort();
        layerBackward(l, T, training);
      }
    }
    total.tokens += N;
  }
  download(&total.lossSum, lossSum, sizeof(double));
  return total;
}

// ---- the public calls ----

StepResult CudaEngine::step(const std::vector<Row>& rows, float lr) {
  State& s = *state_;
  return s.guarded("step", [&]() -> StepResult {
    validateStepInputs(s.model->config(), s.options.maxTokens, rows, lr);
    const int64_t P = static_cast<int64_t>(s.lora->parameterCount());
    s.zero(s.grads, sizeof(float) * P);
    const LossResult loss = s.runRows(rows, true, true);
    if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite; lower the learning rate or check the data");

    s.zero(s.sumSquares, sizeof(double));
    sum_squares(s.sumSquares, s.grads, P, s.stream);
    double sumSquares = 0.0;
    s.download(&sumSquares, s.sumSquares, sizeof(double));
    const double meanScale = 1.0 / static_cast<double>(loss.tokens);
    const double gradNorm = std::sqrt(sumSquares) * meanScale;
    if (!std::isfinite(gradNorm)) throw Error("gradient became NaN or infinite; lower the learning rate or check the data");
    double gradScale = meanScale;
    const OptimizerOptions& opt = s.options.optimizer;
    if (opt.clipNorm > 0.0f && gradNorm > opt.clipNorm) gradScale *= opt.clipNorm / (gradNorm + 1e-6);

    ++s.optimizerStep;
    const double correction1 = 1.0 - std::pow(static_cast<double>(opt.beta1), static_cast<double>(s.optimizerStep));
    const double correction2 = 1.0 - std::pow(static_cast<double>(opt.beta2), static_cast<double>(s.optimizerStep));
    AdamWStep hyper;
    hyper.lr = lr;
    hyper.beta1 = opt.beta1;
    hyper.beta2 = opt.beta2;
    hyper.eps = opt.eps;
    hyper.weightDecay = opt.weightDecay;
    hyper.stepSize = static_cast<float>(lr / correction1);
    hyper.sqrtCorrection2 = static_cast<float>(std::sqrt(correction2));
    hyper.gradScale = static_cast<float>(gradScale);
    adamw_update(s.params, s.m, s.v, s.grads, P, hyper, s.stream);
    s.synchronize();
    s.recordDeviceUse();
    return {loss.lossSum, loss.tokens, gradNorm};
  });
}

LossResult CudaEngine::evaluate(const std::vector<Row>& rows) {
  State& s = *state_;
  return s.guarded("evaluate", [&]() -> LossResult {
    s.validateRows(rows, true);
    const LossResult loss = s.runRows(rows, false, false);
    s.recordDeviceUse();
    if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite during evaluate");
    return loss;
  });
}

LossResult CudaEngine::gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors) {
  State& s = *state_;
  return s.guarded("gradients", [&]() -> LossResult {
    s.validateRows(rows, true);
    s.zero(s.grads, sizeof(float) * s.lora->parameterCount());
    const LossResult loss = s.runRows(rows, true, false);
    if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite");
    tensors = s.namedTensors(s.grads, "");
    return loss;
  });
}

std::vector<float> CudaEngine::logits(const Row& row) {
  State& s = *state_;
  return s.guarded("logits", [&]() -> std::vector<float> {
    s.validateRows({row}, false);
    const ModelConfig& c = s.model->config();
    const MappedTensor& w = *s.output.host;
    const int64_t T = static_cast<int64_t>(row.tokens.size());
    const int64_t C = c.nEmbd, V = c.nVocab;
    s.prepareRow(row);
    s.embed(row);
    for (int64_t l = 0; l < c.nLayer; ++l) {
      s.checkAbort();
      s.layerForward(l, T, false);
    }
    rmsnorm_forward(s.normedFinal, s.inputBf16, s.rstdFinal, s.residual + c.nLayer * T * C, s.outputNorm, T, C,
                    c.rmsEps, s.stream);
    std::vector<float> result(static_cast<size_t>(T * V));  // (T, V)
    for (int64_t v0 = 0; v0 < V; v0 += s.vocabChunk) {
      const int64_t chunk = std::min(s.vocabChunk, V - v0);
      dequantize_rows_bf16(s.weightBf16, s.output.data, static_cast<uint32_t>(w.type), static_cast<int64_t>(w.rowBytes),
                           C, v0, chunk, s.stream);
      gemm_bf16(s.cublas, false, true, T, chunk, C, 1.0f, s.inputBf16, C, s.weightBf16, C, 0.0f, s.logitsChunk, chunk);
      check(cudaMemcpy2DAsync(result.data() + v0, sizeof(float) * V, s.logitsChunk, sizeof(float) * chunk,
                              sizeof(float) * chunk, static_cast<size_t>(T), cudaMemcpyDeviceToHost, s.stream),
            "cudaMemcpy2DAsync (logits)");
      s.synchronize();  // the next chunk overwrites logitsChunk
    }
    for (float value : result)
      if (!std::isfinite(value)) throw Error("logits became NaN or infinite");
    return result;
  });
}

// ---- LoRA and optimizer state exchange (the CPU engine's names, shapes and checks) ----

std::vector<NamedTensorData> CudaEngine::State::namedTensors(const float* deviceBlock, const char* suffix) {
  std::vector<float> hostBlock(lora->parameterCount());
  download(hostBlock.data(), deviceBlock, sizeof(float) * hostBlock.size());
  std::vector<NamedTensorData> tensors;
  const int64_t R = lora->options().rank;
  for (const LoraAdapter& adapter : lora->adapters()) {
    const float* a = hostBlock.data() + adapter.offsetA;
    const float* b = hostBlock.data() + adapter.offsetB;
    tensors.push_back({adapter.name + ".lora_a" + suffix, {R, adapter.in}, std::vector<float>(a, a + R * adapter.in)});
    tensors.push_back({adapter.name + ".lora_b" + suffix, {adapter.out, R}, std::vector<float>(b, b + adapter.out * R)});
  }
  return tensors;
}

std::vector<float> CudaEngine::State::blockFromNamed(const std::vector<NamedTensorData>& tensors, const char* suffix,
                                                     const char* what) const {
  std::vector<float> block(lora->parameterCount());
  loadLoraTensors(*lora, block.data(), tensors, suffix, what);
  return block;
}

std::vector<NamedTensorData> CudaEngine::getLora() {
  State& s = *state_;
  return s.guarded("getLora", [&] { return s.namedTensors(s.params, ""); });
}

void CudaEngine::setLora(const std::vector<NamedTensorData>& tensors) {
  State& s = *state_;
  s.guarded("setLora", [&] {
    const std::vector<float> block = s.blockFromNamed(tensors, "", "setLora");
    s.upload(s.params, block.data(), sizeof(float) * block.size());
    s.synchronize();
  });
}

std::pair<int64_t, std::vector<NamedTensorData>> CudaEngine::getOptimizerState() {
  State& s = *state_;
  return s.guarded("getOptimizerState", [&] {
    std::vector<NamedTensorData> tensors = s.namedTensors(s.m, ".m");
    for (NamedTensorData& tensor : s.namedTensors(s.v, ".v")) tensors.push_back(std::move(tensor));
    return std::make_pair(s.optimizerStep, std::move(tensors));
  });
}

void CudaEngine::setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors) {
  State& s = *state_;
  s.guarded("setOptimizerState", [&] {
    if (step < 0) throw Error("setOptimizerState: step must be >= 0, got " + std::to_string(step));
    std::vector<NamedTensorData> first, second;
    for (const NamedTensorData& tensor : tensors) {
      const bool isM = tensor.name.size() > 2 && tensor.name.compare(tensor.name.size() - 2, 2, ".m") == 0;
      (isM ? first : second).push_back(tensor);
    }
    // validate both halves before writing either
    const std::vector<float> m = s.blockFromNamed(first, ".m", "setOptimizerState");
    const std::vector<float> v = s.blockFromNamed(second, ".v", "setOptimizerState");
    for (float value : v) {
      if (value < 0.0f) throw Error("setOptimizerState: a second-moment (.v) value is negative; the state is corrupt");
    }
    s.upload(s.m, m.data(), sizeof(float) * m.size());
    s.upload(s.v, v.data(), sizeof(float) * v.size());
    s.synchronize();
    s.optimizerStep = step;
  });
}

}  // namespace thinktune
