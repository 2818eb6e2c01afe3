// The CUDA backend (backend.h): the CPU backend's passes (cpu_backend.cpp) step for step on one GPU.
// Per layer: RMSNorm → Q/K/V (+bias, +LoRA) → RoPE → causal GQA attention → O (+LoRA) → residual →
// RMSNorm → SwiGLU FFN (+LoRA, over chunks of positions) → residual; backward recomputes each layer from
// its saved input and produces gradients for LoRA A and B only (or reuses the activations the plan keeps
// for the last layers). Frozen base weights stay in their GGUF type in GPU memory and each layer's
// matrices are dequantized to bf16 once a pass (cuBLAS, fp32 accumulation); attention is the fused
// kernel of flash_attention.cu where it handles the head shape; LoRA A/B and AdamW state are fp32. The
// memory plan is cuda_plan.cu, the weights cuda_model.cu. Host code here enqueues on one compute stream
// and synchronizes where a number or a host copy must come back (the loss, a sum of squares, logits,
// LoRA blocks); residual checkpoints in host memory go out and back on a second stream, ordered by events.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/splitmix.h"
#include "engine/backend.h"
#include "engine/cuda_plan.cuh"
#include "engine/engine.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/kernels.h"

namespace thinktune {

using namespace cuda;

namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(const EngineOptions& options, const Model& model, const Lora& lora);
  ~CudaBackend() override;

  // the device of this backend, selected on the worker thread each call runs on
  void beginCall() override { check(cudaSetDevice(device_), "cudaSetDevice"); }
  std::vector<std::pair<std::string, double>> memoryPlan() const override { return plan_->report(); }

  // enqueued on the stream without waiting for the GPU
  void beginRow(const Row& row) override;
  void layerForward(int64_t layer, int64_t T, const Pass& pass) override;
  void layerBackward(int64_t layer, int64_t T, const Pass& pass, bool recompute, bool inputGradient) override;
  int64_t lossHead(const Row& row, bool withGradient) override;
  void resetLoss() override { zero(plan_->rowBuffers().lossSum, sizeof(double)); }
  void zeroGradients() override { zero(plan_->lora().grads, sizeof(float) * lora_.parameterCount()); }
  void saveState() override;

  // these wait for the GPU: a number or a host copy comes back, or the host data must be consumed
  double lossSum() override;
  double sumSquares(LoraBlock block) override;
  void logitsHead(int64_t T, float* logits) override;
  void adamwUpdate(const AdamWStep& hyper) override;
  void restoreState() override;
  void readBlock(LoraBlock block, float* host) override;
  void writeBlock(LoraBlock block, const float* host) override;

 private:
  float* block(LoraBlock which) const { return loraBlock(plan_->lora(), which); }
  void upload(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (to the GPU)");
  }
  void download(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync (from the GPU)");
    synchronize();
  }
  void copyOnDevice(void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync (on the GPU)");
  }
  void synchronize() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  void zero(void* dst, size_t bytes) { check(cudaMemsetAsync(dst, 0, bytes, stream_), "cudaMemsetAsync"); }
  AttentionShape attentionShape(int64_t T) const {
    const ModelConfig& c = model_.config();
    return {T, c.nHead, c.nHeadKv, c.headDim, 1.0f / std::sqrt(static_cast<float>(c.headDim)), plan_->queryTile()};
  }
  FlashAttentionArgs flashArgs(const LayerActivations& saved, int64_t T) const {
    const ModelConfig& c = model_.config();
    FlashAttentionArgs args;
    args.out = saved.attn;
    args.lse = saved.lse;
    args.q = saved.q;
    args.k = saved.k;
    args.v = saved.v;
    args.seqStart = plan_->activations().seqStart;
    args.T = static_cast<int>(T);
    args.nHead = static_cast<int>(c.nHead);
    args.nHeadKv = static_cast<int>(c.nHeadKv);
    args.D = static_cast<int>(c.headDim);
    args.scale = 1.0f / std::sqrt(static_cast<float>(c.headDim));
    return args;
  }
  void embed(const Row& row);
  void dequantizeLayer(int64_t layer);
  // out (count, N) (+)= inp (count, K)·Wᵀ with the layer's dequantized matrix of projection p
  void baseForward(int64_t layer, Projection p, const __nv_bfloat16* inp, float* out, int64_t count, bool accumulate);
  // out (count, N) = x·Wᵀ + bias + the adapter's product over the positions of span; x in bf16 (the base
  // product); loraHidden: the layer's (7, T, R) x·Aᵀ of the whole row, span's rows already computed
  // (loraGroupHiddenForward)
  void projectForward(int64_t layer, Projection p, const __nv_bfloat16* xBf16, float* out, const float* loraHidden,
                      TokenRange span, const Pass& pass);
  // the same into a bf16 out: the adapter's product in bf16 first (h and B rounded), then the base product
  // adds to it and rounds once (the gate and up products, which SwiGLU reads rounded to bf16 anyway)
  void projectForwardBf16(int64_t layer, Projection p, const __nv_bfloat16* xBf16, __nv_bfloat16* out,
                          const float* loraHidden, TokenRange span, const Pass& pass);
  // the adapter's gradients; dinp (count, K) (+)= the input gradient unless dinp is null; xBf16: the
  // adapter's dA from x in bf16 (x itself may be null then)
  void projectBackward(int64_t layer, Projection p, const float* dout, const __nv_bfloat16* doutBf16, const float* x,
                       float* dinp, const float* loraHidden, TokenRange span, bool accumulate, const Pass& pass,
                       const __nv_bfloat16* xBf16 = nullptr);
  // projectBackward for each projection of the group that starts at `first` (douts[i]: member i's output
  // gradient): the adapters first (loraGroupBackward), then the base products' input gradients
  void projectGroupBackward(int64_t layer, Projection first, const float* const* douts,
                            const __nv_bfloat16* const* doutsBf16, const float* x, float* dinp, const float* loraHidden,
                            TokenRange span, bool accumulate, const Pass& pass);
  // dinp (count, K) (+)= dout (count, N)·W
  void baseBackwardInput(int64_t layer, Projection p, const float* dout, const __nv_bfloat16* doutBf16, float* dinp,
                         int64_t count, bool accumulate);
  DropoutMask dropoutMask(const LoraAdapter& adapter, TokenRange span, const Pass& pass) const;
  // input of the LoRA path: inp itself, or dropout(inp) in scratch.droppedInput
  const float* loraInput(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass);
  // Projections that read one input: q, k and v; gate and up (o and down alone). When each member has an
  // adapter and no dropout mask sets their inputs apart, the group's x·Aᵀ is one product with the A
  // matrices stacked, and so are its dA and input gradient: the (T, K) fp32 input is read once, not once
  // an adapter.
  struct LoraGroup {
    int first = 0, size = 1;  // projections first .. first + size − 1
  };
  static LoraGroup loraGroup(Projection p);
  bool fusedGroup(int64_t layer, LoraGroup group, const Pass& pass) const;
  // where span's rows of the adapter's x·Aᵀ start in the layer's loraHidden (7, T, R) and their stride: a
  // fused group's members share its blocks as (T, size·R) rows, member i in columns i·R ..
  struct HiddenRows {
    int64_t offset = 0, stride = 0;
    int64_t column = 0;  // of offset within its row: offset − column starts the row
  };
  HiddenRows loraHiddenRows(const LoraAdapter& adapter, TokenRange span, const Pass& pass) const;
  // loraHidden rows = dropout(inp)·Aᵀ
  void loraHiddenForward(const LoraAdapter& adapter, const float* inp, float* loraHidden, TokenRange span,
                         const Pass& pass);
  // the x·Aᵀ of every adapter of the group that starts at `first`, ahead of its members' projectForward
  void loraGroupHiddenForward(int64_t layer, Projection first, const float* inp, float* loraHidden, TokenRange span,
                              const Pass& pass);
  // the group's A matrices stacked (size·R, K) in scratch.loraStackedA
  void stackLoraA(int64_t layer, LoraGroup group);
  // out (count, N) = scale·(x·Aᵀ)·Bᵀ + beta·out from the x·Aᵀ in loraHidden (loraGroupHiddenForward)
  void loraForward(const LoraAdapter& adapter, float* out, const float* loraHidden, TokenRange span, const Pass& pass,
                   float beta);
  // parameter grads += ; dinp (count, K) (+)= the LoRA path's input gradient (skipped when dinp is null);
  // with inpBf16 (no dropout), dA from the bf16 input
  void loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp,
                    const float* loraHidden, TokenRange span, const Pass& pass, bool accumulate,
                    const __nv_bfloat16* inpBf16 = nullptr);
  // Whether the feed-forward hidden h = silu(gate)·up is needed in fp32: only for a dropout mask on the
  // down adapter's input. Otherwise that adapter reads h in bf16, as the base product does, and no
  // (positions, F) fp32 copy of h is written or read.
  bool hiddenInFp32(int64_t layer, const Pass& pass) const {
    return pass.training && lora_.options().dropout > 0.0f && lora_.find(layer, Projection::Down);
  }
  // the down adapter's x·Aᵀ over chunk, from a.hidden or from its bf16 copy in scratch.gradientBf16
  void downHiddenForward(int64_t layer, TokenRange chunk, const Pass& pass);
  // loraBackward for the adapters of the group that starts at `first`; whether any wrote to dinp
  bool loraGroupBackward(int64_t layer, Projection first, const float* const* douts, const float* inp, float* dinp,
                         const float* loraHidden, TokenRange span, const Pass& pass, bool accumulate);
  // RMSNorm → Q/K/V → RoPE → attention → O → residual → RMSNorm: everything of the layer before its
  // feed-forward block
  void attentionForward(int64_t layer, int64_t T, const Pass& pass);
  // gate and up over a chunk of positions, and SwiGLU: the layer's gate/up (bf16) and the chunk's hidden in
  // bf16 (scratch.gradientBf16, down's input) and, where hiddenInFp32, in a.hidden
  void gateUpForward(int64_t layer, TokenRange chunk, const Pass& pass);
  // the row offset of chunk in a layer's saved gate and up (a whole kept layer holds the row, the shared set a chunk)
  static int64_t feedForwardRow(const LayerActivations& saved, TokenRange chunk) {
    return saved.ownFeedForward ? chunk.begin : 0;
  }
  // A kept layer's backward needs the values its forward rebuilt per layer: the norms and the fp32
  // attention output, from its input and its kept activations (SwiGLU's product: per chunk, in the backward).
  void rebuildLayerScratch(int64_t layer, int64_t T);

  // ---- residual checkpoints in host memory (plan_->checkpointsOnHost()) ----
  // the copy stream starts after the compute stream's work enqueued so far
  void copyAfterCompute();
  // layer's input, from its GPU slot to host memory / back
  void saveCheckpoint(int64_t layer, int64_t T);
  void loadCheckpoint(int64_t layer, int64_t T);
  // the compute stream waits for a copy, the wait timed (collectCopyWaits adds it up once synchronized)
  void waitForCopy(cudaEvent_t copied);
  void collectCopyWaits();

  const Model& model_;
  const Lora& lora_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<CudaPlan> plan_;
  std::vector<int32_t> hostSeqStart_;  // (T) the current row's sequence starts, for attention tiles
  int64_t cachedLayer_ = -1;           // the layer scratch.layerWeights holds
  // checkpoints in host memory: the copies' stream, per layer the events of its copy out (saved) and
  // back (loaded) and whether the compute stream has yet to wait for it
  cudaStream_t copyStream_ = nullptr;
  cudaEvent_t computeMark_ = nullptr;
  std::vector<cudaEvent_t> savedEvents_, loadedEvents_;
  std::vector<bool> savePending_, loadPending_;
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> waitTimers_;  // (before, after) each wait
  size_t waitTimersUsed_ = 0;
};

CudaBackend::CudaBackend(const EngineOptions& options, const Model& model, const Lora& lora)
    : model_(model), lora_(lora) {
  if (cudaDeviceCount() == 0) {
    throw Error("options.device \"cuda\" is not available in the CPU engine, and no CUDA device is usable here "
                "(no GPU or no NVIDIA driver); use device \"cpu\"");
  }
  for (const LoraAdapter& adapter : lora.adapters()) {
    const MappedTensor* matrix = model.layer(adapter.layer).matrix[static_cast<int>(adapter.projection)];
    if (!dequantize_supports(static_cast<uint32_t>(matrix->type))) {
      throw Error("tensor " + matrix->name + ": its type is not supported by the CUDA engine");
    }
  }
  check(cudaGetDevice(&device_), "cudaGetDevice");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) {
    throw Error("cuBLAS: cublasCreate failed", ErrorKind::DeviceFailure);
  }
  if (cublasSetStream(cublas_, stream_) != CUBLAS_STATUS_SUCCESS) {
    throw Error("cuBLAS: cublasSetStream failed", ErrorKind::DeviceFailure);
  }
  plan_ = std::make_unique<CudaPlan>(options, model, lora, device_);
  if (plan_->checkpointsOnHost()) {
    const size_t L = static_cast<size_t>(model.config().nLayer);
    check(cudaStreamCreateWithFlags(&copyStream_, cudaStreamNonBlocking), "cudaStreamCreate (copies)");
    check(cudaEventCreateWithFlags(&computeMark_, cudaEventDisableTiming), "cudaEventCreate");
    savedEvents_.assign(L, nullptr);
    loadedEvents_.assign(L, nullptr);
    for (size_t l = 0; l < L; ++l) {
      check(cudaEventCreateWithFlags(&savedEvents_[l], cudaEventDisableTiming), "cudaEventCreate");
      check(cudaEventCreateWithFlags(&loadedEvents_[l], cudaEventDisableTiming), "cudaEventCreate");
    }
    savePending_.assign(L, false);
    loadPending_.assign(L, false);
  }
  plan_->weights().upload(plan_->rowBuffers().badRow, stream_);
  // the rotary table of every position a row can hold (ropeCache (T, headDim)), the CPU's own angles
  const ModelConfig& c = model.config();
  std::vector<int32_t> positions(static_cast<size_t>(options.maxTokens));
  for (size_t t = 0; t < positions.size(); ++t) positions[t] = static_cast<int32_t>(t);
  std::vector<float> table(positions.size() * static_cast<size_t>(c.headDim));
  kernels::rope_cache(table.data(), positions.data(), options.maxTokens, c.headDim, c.ropeBase, model.ropeFreqs());
  upload(plan_->activations().ropeCache, table.data(), sizeof(float) * table.size());
  zero(plan_->lora().params, plan_->loraBytes());
  synchronize();
  plan_->recordDeviceUse();
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);  // may run on any thread; errors here have nowhere to go
  if (stream_) cudaStreamSynchronize(stream_);
  if (copyStream_) cudaStreamSynchronize(copyStream_);
  for (cudaEvent_t event : savedEvents_) cudaEventDestroy(event);
  for (cudaEvent_t event : loadedEvents_) cudaEventDestroy(event);
  for (auto [before, after] : waitTimers_) {
    cudaEventDestroy(before);
    cudaEventDestroy(after);
  }
  if (computeMark_) cudaEventDestroy(computeMark_);
  if (copyStream_) cudaStreamDestroy(copyStream_);
  plan_.reset();
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}


// read after the rows: also when the device is at its fullest, so the peak is noted here
double CudaBackend::lossSum() {
  double sum = 0.0;
  download(&sum, plan_->rowBuffers().lossSum, sizeof(double));
  plan_->recordDeviceUse();
  collectCopyWaits();
  return sum;
}

double CudaBackend::sumSquares(LoraBlock which) {
  double* sum = plan_->rowBuffers().sumSquares;
  zero(sum, sizeof(double));
  sum_squares(sum, block(which), static_cast<int64_t>(lora_.parameterCount()), stream_);
  double result = 0.0;
  download(&result, sum, sizeof(double));
  return result;
}

void CudaBackend::adamwUpdate(const AdamWStep& hyper) {
  const LoraBuffers& l = plan_->lora();
  adamw_update(l.params, l.m, l.v, l.grads, static_cast<int64_t>(lora_.parameterCount()), hyper, stream_);
  synchronize();
}

void CudaBackend::saveState() {
  const size_t bytes = sizeof(float) * lora_.parameterCount();
  for (auto [to, from] : stateCopies(plan_->lora(), true)) copyOnDevice(to, from, bytes);
}

void CudaBackend::restoreState() {
  const size_t bytes = sizeof(float) * lora_.parameterCount();
  for (auto [to, from] : stateCopies(plan_->lora(), false)) copyOnDevice(to, from, bytes);
  synchronize();
}

void CudaBackend::readBlock(LoraBlock which, float* host) {
  download(host, block(which), sizeof(float) * lora_.parameterCount());
}

void CudaBackend::writeBlock(LoraBlock which, const float* host) {
  upload(block(which), host, sizeof(float) * lora_.parameterCount());
  synchronize();
}

// ---- the passes ----

void CudaBackend::beginRow(const Row& row) {
  const ActivationBuffers& a = plan_->activations();
  const CudaRowBuffers& b = plan_->rowBuffers();
  const ModelConfig& c = model_.config();
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
  upload(b.positions, positions.data(), sizeof(int32_t) * positions.size());
  upload(a.seqStart, starts.data(), sizeof(int32_t) * starts.size());
  hostSeqStart_ = std::move(starts);
  upload(b.tokens, row.tokens.data(), sizeof(int32_t) * row.tokens.size());
  if (plan_->checkpointsOnHost()) {
    // a row left unfinished (an abort) may have copies in flight into the slots the embedding writes
    check(cudaEventRecord(computeMark_, copyStream_), "cudaEventRecord");
    check(cudaStreamWaitEvent(stream_, computeMark_, 0), "cudaStreamWaitEvent");
    savePending_.assign(savePending_.size(), false);
    loadPending_.assign(loadPending_.size(), false);
  }
  embed(row);
}

void CudaBackend::embed(const Row& row) {
  const ActivationBuffers& a = plan_->activations();
  const CudaRowBuffers& b = plan_->rowBuffers();
  const DeviceMatrix& embedding = plan_->weights().tokenEmbedding();
  const MappedTensor& table = *embedding.host;
  dequantize_gather_f32(a.residual, embedding.data, static_cast<uint32_t>(table.type),
                        static_cast<int64_t>(table.rowBytes), table.rowLength, b.tokens,
                        static_cast<int64_t>(row.tokens.size()), stream_);
}

// The layer's seven matrices in bf16, decoded once for the forward, and once for the recompute and
// the backward together (the backward of a layer follows its recompute directly).
void CudaBackend::dequantizeLayer(int64_t l) {
  const CudaScratch& s = plan_->scratch();
  if (cachedLayer_ == l) return;
  const DeviceLayer& layer = plan_->weights().layer(l);
  for (int p = 0; p < kProjectionCount; ++p) {
    const MappedTensor& w = *layer.matrix[p].host;
    dequantize_rows_bf16(s.layerWeights[p], layer.matrix[p].data, static_cast<uint32_t>(w.type),
                         static_cast<int64_t>(w.rowBytes), w.rowLength, 0, w.nRows, stream_);
  }
  cachedLayer_ = l;
}

void CudaBackend::baseForward(int64_t l, Projection p, const __nv_bfloat16* inp, float* out, int64_t count,
                              bool accumulate) {
  const CudaScratch& s = plan_->scratch();
  const MappedTensor& w = *plan_->weights().layer(l).matrix[static_cast<int>(p)].host;
  const int64_t K = w.rowLength, N = w.nRows;
  dequantizeLayer(l);
  gemm_bf16(cublas_, false, true, count, N, K, 1.0f, inp, K, s.layerWeights[static_cast<int>(p)], K,
            accumulate ? 1.0f : 0.0f, out, N);
}

// The adapter's product goes first and the base product adds to it, so out is written once by each
// instead of read back by the second.
void CudaBackend::projectForward(int64_t l, Projection p, const __nv_bfloat16* xBf16, float* out,
                                 const float* loraHidden, TokenRange span, const Pass& pass) {
  const LoraAdapter* adapter = lora_.find(l, p);
  if (adapter) loraForward(*adapter, out, loraHidden, span, pass, 0.0f);
  baseForward(l, p, xBf16, out, span.count, adapter != nullptr);
  if (const float* bias = plan_->weights().layer(l).bias[static_cast<int>(p)]) {
    add_bias(out, bias, span.count, plan_->weights().layer(l).matrix[static_cast<int>(p)].host->nRows, stream_);
  }
}

void CudaBackend::projectForwardBf16(int64_t l, Projection p, const __nv_bfloat16* xBf16, __nv_bfloat16* out,
                                     const float* loraHidden, TokenRange span, const Pass& pass) {
  const CudaScratch& s = plan_->scratch();
  const int pi = static_cast<int>(p);
  const MappedTensor& w = *plan_->weights().layer(l).matrix[pi].host;
  const int64_t K = w.rowLength, N = w.nRows, R = lora_.options().rank;
  const LoraAdapter* adapter = lora_.find(l, p);
  if (adapter) {
    const HiddenRows rows = loraHiddenRows(*adapter, span, pass);
    // span's rows of h (whole rows of the stride) and B, rounded to bf16
    to_bf16(s.loraHiddenBf16, loraHidden + rows.offset - rows.column, span.count * rows.stride, stream_);
    to_bf16(s.loraBBf16, plan_->lora().params + adapter->offsetB, N * R, stream_);
    gemm_bf16_out(cublas_, false, true, span.count, N, R, lora_.scale(), s.loraHiddenBf16 + rows.column, rows.stride,
                  s.loraBBf16, R, 0.0f, out, N);
  }
  dequantizeLayer(l);
  gemm_bf16_out(cublas_, false, true, span.count, N, K, 1.0f, xBf16, K, s.layerWeights[pi], K,
                adapter ? 1.0f : 0.0f, out, N);
  if (const float* bias = plan_->weights().layer(l).bias[pi]) add_bias(out, bias, span.count, N, stream_);
}

// The adapter's gradients from dout; dinp (+)= dout·W + the adapter's input gradient, unless dinp is
// null (no input gradient wanted). doutBf16 is dout's bf16 copy where its producer wrote one.
void CudaBackend::projectBackward(int64_t l, Projection p, const float* dout, const __nv_bfloat16* doutBf16,
                                  const float* x, float* dinp, const float* loraHidden, TokenRange span,
                                  bool accumulate, const Pass& pass, const __nv_bfloat16* xBf16) {
  const LoraAdapter* adapter = lora_.find(l, p);
  if (adapter) loraBackward(*adapter, x, dout, dinp, loraHidden, span, pass, accumulate, xBf16);
  if (dinp) baseBackwardInput(l, p, dout, doutBf16, dinp, span.count, accumulate || adapter != nullptr);
}

void CudaBackend::projectGroupBackward(int64_t l, Projection first, const float* const* douts,
                                       const __nv_bfloat16* const* doutsBf16, const float* x, float* dinp,
                                       const float* loraHidden, TokenRange span, bool accumulate, const Pass& pass) {
  const LoraGroup group = loraGroup(first);
  const bool wrote = loraGroupBackward(l, first, douts, x, dinp, loraHidden, span, pass, accumulate);
  if (!dinp) return;
  for (int i = 0; i < group.size; ++i) {
    baseBackwardInput(l, static_cast<Projection>(group.first + i), douts[i], doutsBf16[i], dinp, span.count,
                      accumulate || wrote || i > 0);
  }
}

void CudaBackend::baseBackwardInput(int64_t l, Projection p, const float* dout, const __nv_bfloat16* doutBf16,
                                    float* dinp, int64_t count, bool accumulate) {
  const CudaScratch& s = plan_->scratch();
  const MappedTensor& w = *plan_->weights().layer(l).matrix[static_cast<int>(p)].host;
  const int64_t K = w.rowLength, N = w.nRows;
  if (!doutBf16) {
    to_bf16(s.inputBf16, dout, count * N, stream_);
    doutBf16 = s.inputBf16;
  }
  dequantizeLayer(l);
  // dinp (count, K) (+)= dout (count, N) · W (N, K)
  gemm_bf16(cublas_, false, false, count, K, N, 1.0f, doutBf16, N, s.layerWeights[static_cast<int>(p)], K,
            accumulate ? 1.0f : 0.0f, dinp, K);
}

DropoutMask CudaBackend::dropoutMask(const LoraAdapter& adapter, TokenRange span, const Pass& pass) const {
  DropoutMask mask;
  mask.stepKey = dropoutStepKey(lora_.options().seed, pass.dropoutStep);
  mask.site = static_cast<uint64_t>(adapter.layer * kProjectionCount + static_cast<int>(adapter.projection));
  mask.dropout = lora_.options().dropout;
  mask.first = static_cast<uint64_t>(span.begin * adapter.in);
  return mask;
}

const float* CudaBackend::loraInput(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass) {
  const CudaScratch& s = plan_->scratch();
  if (!pass.training || lora_.options().dropout <= 0.0f) return inp;
  dropout_forward(s.droppedInput, inp, span.count * adapter.in, dropoutMask(adapter, span, pass), stream_);
  return s.droppedInput;
}

CudaBackend::LoraGroup CudaBackend::loraGroup(Projection p) {
  switch (p) {
    case Projection::Q: case Projection::K: case Projection::V: return {static_cast<int>(Projection::Q), 3};
    case Projection::Gate: case Projection::Up: return {static_cast<int>(Projection::Gate), 2};
    default: return {static_cast<int>(p), 1};
  }
}

bool CudaBackend::fusedGroup(int64_t l, LoraGroup group, const Pass& pass) const {
  if (group.size == 1 || (pass.training && lora_.options().dropout > 0.0f)) return false;
  for (int i = 0; i < group.size; ++i) {
    if (!lora_.find(l, static_cast<Projection>(group.first + i))) return false;
  }
  return true;
}

CudaBackend::HiddenRows CudaBackend::loraHiddenRows(const LoraAdapter& adapter, TokenRange span,
                                                    const Pass& pass) const {
  const int64_t R = lora_.options().rank;
  const LoraGroup group = loraGroup(adapter.projection);
  const int p = static_cast<int>(adapter.projection);
  if (fusedGroup(adapter.layer, group, pass)) {
    const int64_t column = (p - group.first) * R;
    return {(group.first * span.rowLength + span.begin * group.size) * R + column, group.size * R, column};
  }
  return {(p * span.rowLength + span.begin) * R, R, 0};
}

void CudaBackend::loraHiddenForward(const LoraAdapter& adapter, const float* inp, float* loraHidden, TokenRange span,
                                    const Pass& pass) {
  const int64_t R = lora_.options().rank, K = adapter.in;
  const float* x = loraInput(adapter, inp, span, pass);  // (count, K)
  const HiddenRows rows = loraHiddenRows(adapter, span, pass);
  gemm_f32(cublas_, false, true, span.count, R, K, 1.0f, x, K, plan_->lora().params + adapter.offsetA, K, 0.0f,
           loraHidden + rows.offset, rows.stride);
}

void CudaBackend::stackLoraA(int64_t l, LoraGroup group) {
  const int64_t R = lora_.options().rank;
  for (int i = 0; i < group.size; ++i) {
    const LoraAdapter& adapter = *lora_.find(l, static_cast<Projection>(group.first + i));
    copyOnDevice(plan_->scratch().loraStackedA + i * R * adapter.in, plan_->lora().params + adapter.offsetA,
                 sizeof(float) * R * adapter.in);
  }
}

void CudaBackend::loraGroupHiddenForward(int64_t l, Projection first, const float* inp, float* loraHidden,
                                         TokenRange span, const Pass& pass) {
  const LoraGroup group = loraGroup(first);
  if (!fusedGroup(l, group, pass)) {
    for (int i = 0; i < group.size; ++i) {
      if (const LoraAdapter* adapter = lora_.find(l, static_cast<Projection>(group.first + i))) {
        loraHiddenForward(*adapter, inp, loraHidden, span, pass);
      }
    }
    return;
  }
  const LoraAdapter& lead = *lora_.find(l, first);
  const int64_t width = group.size * lora_.options().rank, K = lead.in;
  stackLoraA(l, group);
  // (count, size·R) = x (count, K) · stacked Aᵀ
  gemm_f32(cublas_, false, true, span.count, width, K, 1.0f, inp, K, plan_->scratch().loraStackedA, K, 0.0f,
           loraHidden + loraHiddenRows(lead, span, pass).offset, width);
}

void CudaBackend::loraForward(const LoraAdapter& adapter, float* out, const float* loraHidden, TokenRange span,
                              const Pass& pass, float beta) {
  const int64_t R = lora_.options().rank, N = adapter.out;
  const HiddenRows rows = loraHiddenRows(adapter, span, pass);
  // out (count, N) = scale · h (count, R) · B (N, R)ᵀ + beta · out
  gemm_f32(cublas_, false, true, span.count, N, R, lora_.scale(), loraHidden + rows.offset, rows.stride,
           plan_->lora().params + adapter.offsetB, R, beta, out, N);
}

void CudaBackend::loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp,
                               const float* loraHidden, TokenRange span, const Pass& pass, bool accumulate,
                               const __nv_bfloat16* inpBf16) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const float* params = plan_->lora().params;
  float* grads = plan_->lora().grads;
  const int64_t R = lora_.options().rank, K = adapter.in, N = adapter.out, T = span.count;
  const float scale = lora_.scale();
  const HiddenRows rows = loraHiddenRows(adapter, span, pass);
  const float* h = loraHidden + rows.offset;              // (T, R), rows.stride apart
  const float* x = loraInput(adapter, inp, span, pass);  // (T, K)
  // dB (N, R) += scale · dout (T, N)ᵀ · h (T, R)
  gemm_f32(cublas_, true, false, N, R, T, scale, dout, N, h, rows.stride, 1.0f, grads + adapter.offsetB, R);
  // dh (T, R) = scale · dout (T, N) · B (N, R)
  gemm_f32(cublas_, false, false, T, R, N, scale, dout, N, params + adapter.offsetB, R, 0.0f, a.dLoraHidden, R);
  // dA (R, K) += dh (T, R)ᵀ · x (T, K)
  if (inpBf16) {
    to_bf16(s.dLoraHiddenBf16, a.dLoraHidden, T * R, stream_);
    gemm_bf16(cublas_, true, false, R, K, T, 1.0f, s.dLoraHiddenBf16, R, inpBf16, K, 1.0f, grads + adapter.offsetA, K);
  } else {
    gemm_f32(cublas_, true, false, R, K, T, 1.0f, a.dLoraHidden, R, x, K, 1.0f, grads + adapter.offsetA, K);
  }
  if (!dinp) return;  // the layer's input gradient is not wanted
  if (x == inp) {
    gemm_f32(cublas_, false, false, T, K, R, 1.0f, a.dLoraHidden, R, params + adapter.offsetA, K, accumulate ? 1.0f : 0.0f,
             dinp, K);
    return;
  }
  // dropout: the input gradient passes only where the mask kept the element, scaled like the input
  gemm_f32(cublas_, false, false, T, K, R, 1.0f, a.dLoraHidden, R, params + adapter.offsetA, K, 0.0f, s.droppedInput, K);
  if (!accumulate) zero(dinp, sizeof(float) * T * K);
  dropout_backward(dinp, s.droppedInput, T * K, dropoutMask(adapter, span, pass), stream_);
}

bool CudaBackend::loraGroupBackward(int64_t l, Projection first, const float* const* douts, const float* inp,
                                    float* dinp, const float* loraHidden, TokenRange span, const Pass& pass,
                                    bool accumulate) {
  const LoraGroup group = loraGroup(first);
  if (!fusedGroup(l, group, pass)) {
    bool wrote = false;
    for (int i = 0; i < group.size; ++i) {
      if (const LoraAdapter* adapter = lora_.find(l, static_cast<Projection>(group.first + i))) {
        loraBackward(*adapter, inp, douts[i], dinp, loraHidden, span, pass, accumulate || wrote);
        wrote = true;
      }
    }
    return wrote && dinp;
  }
  const CudaScratch& s = plan_->scratch();
  const float* params = plan_->lora().params;
  float* grads = plan_->lora().grads;
  const int64_t R = lora_.options().rank, T = span.count, width = group.size * R;
  const int64_t K = lora_.find(l, first)->in;  // the members' shared input width
  const float scale = lora_.scale();
  // each member's dB, and its dh into columns i·R of dH (T, size·R)
  for (int i = 0; i < group.size; ++i) {
    const LoraAdapter& adapter = *lora_.find(l, static_cast<Projection>(group.first + i));
    const int64_t N = adapter.out;
    const HiddenRows rows = loraHiddenRows(adapter, span, pass);
    gemm_f32(cublas_, true, false, N, R, T, scale, douts[i], N, loraHidden + rows.offset, rows.stride, 1.0f,
             grads + adapter.offsetB, R);
    gemm_f32(cublas_, false, false, T, R, N, scale, douts[i], N, params + adapter.offsetB, R, 0.0f,
             s.loraHiddenGrad + i * R, width);
  }
  // the stacked dA (size·R, K) = dHᵀ · x, added to each member's
  gemm_f32(cublas_, true, false, width, K, T, 1.0f, s.loraHiddenGrad, width, inp, K, 0.0f, s.loraStackedAGrad, K);
  for (int i = 0; i < group.size; ++i) {
    const LoraAdapter& adapter = *lora_.find(l, static_cast<Projection>(group.first + i));
    add_inplace(grads + adapter.offsetA, s.loraStackedAGrad + i * R * K, R * K, stream_);
  }
  if (!dinp) return false;
  // dinp (T, K) (+)= dH · stacked A
  stackLoraA(l, group);
  gemm_f32(cublas_, false, false, T, K, width, 1.0f, s.loraHiddenGrad, width, s.loraStackedA, K,
           accumulate ? 1.0f : 0.0f, dinp, K);
  return true;
}

void CudaBackend::downHiddenForward(int64_t l, TokenRange chunk, const Pass& pass) {
  const LoraAdapter* down = lora_.find(l, Projection::Down);
  if (!down) return;
  float* loraHidden = plan_->layerActivations(l).loraHidden;
  if (hiddenInFp32(l, pass)) {
    loraHiddenForward(*down, plan_->activations().hidden, loraHidden, chunk, pass);
    return;
  }
  const CudaScratch& s = plan_->scratch();
  const int64_t R = lora_.options().rank, K = down->in;
  const HiddenRows rows = loraHiddenRows(*down, chunk, pass);
  to_bf16(s.loraABf16, plan_->lora().params + down->offsetA, R * K, stream_);
  // (count, R) = h (count, F) · Aᵀ, h in bf16 as the base product reads it
  gemm_bf16(cublas_, false, true, chunk.count, R, K, 1.0f, s.gradientBf16, K, s.loraABf16, K, 0.0f,
            loraHidden + rows.offset, rows.stride);
}

void CudaBackend::attentionForward(int64_t l, int64_t T, const Pass& pass) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const ModelConfig& c = model_.config();
  const CudaRowBuffers& b = plan_->rowBuffers();
  const DeviceLayer& w = plan_->weights().layer(l);
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim();
  const float* x = plan_->layerInput(l, T);  // (T, C) layer input
  const LayerActivations& saved = plan_->layerActivations(l);
  const TokenRange row = TokenRange::whole(T);

  rmsnorm_forward(a.normed1, s.inputBf16, a.rstd1, x, w.attnNorm, T, C, c.rmsEps, stream_);  // bf16: the three products' input
  float* qkv[3] = {a.q, a.k, a.v};
  loraGroupHiddenForward(l, Projection::Q, a.normed1, saved.loraHidden, row, pass);
  for (int p = 0; p < 3; ++p) projectForward(l, static_cast<Projection>(p), s.inputBf16, qkv[p], saved.loraHidden, row, pass);
  rope_forward(a.q, saved.q, a.ropeCache, b.positions, T, c.nHead, c.headDim, c.neoxRope(), stream_);
  rope_forward(a.k, saved.k, a.ropeCache, b.positions, T, c.nHeadKv, c.headDim, c.neoxRope(), stream_);
  to_bf16(saved.v, a.v, T * KD, stream_);
  if (plan_->flash()) {
    flash_attention_forward(flashArgs(saved, T), stream_);
    to_f32(a.attn, saved.attn, T * QD, stream_);
  } else {
    attention_forward(a.attn, saved.lse, a.q, a.k, a.v, a.seqStart, hostSeqStart_.data(), attentionShape(T), s.attention,
                      cublas_, stream_);
    to_bf16(saved.attn, a.attn, T * QD, stream_);
  }
  loraGroupHiddenForward(l, Projection::O, a.attn, saved.loraHidden, row, pass);
  projectForward(l, Projection::O, saved.attn, saved.residual2, saved.loraHidden, row, pass);
  add_inplace(saved.residual2, x, T * C, stream_);
  rmsnorm_forward(a.normed2, s.normedBf16, a.rstd2, saved.residual2, w.ffnNorm, T, C, c.rmsEps, stream_);
}

void CudaBackend::gateUpForward(int64_t l, TokenRange chunk, const Pass& pass) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const int64_t C = model_.config().nEmbd, F = model_.config().nFf;
  const LayerActivations& saved = plan_->layerActivations(l);
  const int64_t row = feedForwardRow(saved, chunk);
  const __nv_bfloat16* normedBf16 = s.normedBf16 + chunk.begin * C;
  const float* normed = a.normed2 + chunk.begin * C;
  __nv_bfloat16* gate = saved.gate + row * F;
  __nv_bfloat16* up = saved.up + row * F;
  loraGroupHiddenForward(l, Projection::Gate, normed, saved.loraHidden, chunk, pass);
  projectForwardBf16(l, Projection::Gate, normedBf16, gate, saved.loraHidden, chunk, pass);
  projectForwardBf16(l, Projection::Up, normedBf16, up, saved.loraHidden, chunk, pass);
  // bf16 hidden: down's input; the fp32 one (dropout) over a.up (the plan shares their buffer)
  swiglu_forward(hiddenInFp32(l, pass) ? a.hidden : nullptr, s.gradientBf16, gate, up, chunk.count * F, stream_);
}

void CudaBackend::layerForward(int64_t l, int64_t T, const Pass& pass) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const int64_t C = model_.config().nEmbd, L = model_.config().nLayer, TF = plan_->feedForwardTokens();
  const LayerActivations& saved = plan_->layerActivations(l);
  // the input to host memory for the backward (the last layer's stays in its slot until then)
  if (plan_->checkpointsOnHost() && pass.backward && l < L - 1) saveCheckpoint(l, T);
  attentionForward(l, T, pass);
  // the output's slot held the layer below's input: its copy must be out first
  if (l > 0 && plan_->checkpointsOnHost() && savePending_[static_cast<size_t>(l - 1)]) {
    waitForCopy(savedEvents_[static_cast<size_t>(l - 1)]);
    savePending_[static_cast<size_t>(l - 1)] = false;
  }
  float* next = plan_->layerInput(l + 1, T);  // (T, C) layer output
  for (int64_t t0 = 0; t0 < T; t0 += TF) {
    const TokenRange chunk{t0, std::min(TF, T - t0), T};
    gateUpForward(l, chunk, pass);
    downHiddenForward(l, chunk, pass);
    projectForward(l, Projection::Down, s.gradientBf16, next + t0 * C, saved.loraHidden, chunk, pass);
  }
  add_inplace(next, saved.residual2, T * C, stream_);
}

void CudaBackend::rebuildLayerScratch(int64_t l, int64_t T) {
  const ActivationBuffers& a = plan_->activations();
  const ModelConfig& c = model_.config();
  const DeviceLayer& w = plan_->weights().layer(l);
  const LayerActivations& saved = plan_->layerActivations(l);
  rmsnorm_forward(a.normed1, nullptr, a.rstd1, plan_->layerInput(l, T), w.attnNorm, T, c.nEmbd, c.rmsEps, stream_);
  // without its own gate and up, the layer recomputes them from the normed input's bf16 copy
  rmsnorm_forward(a.normed2, saved.ownFeedForward ? nullptr : plan_->scratch().normedBf16, a.rstd2, saved.residual2,
                  w.ffnNorm, T, c.nEmbd, c.rmsEps, stream_);
  to_f32(a.attn, saved.attn, T * c.qDim(), stream_);
}

void CudaBackend::layerBackward(int64_t l, int64_t T, const Pass& pass, bool recompute, bool inputGradient) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const CudaRowBuffers& b = plan_->rowBuffers();
  const ModelConfig& c = model_.config();
  const DeviceLayer& w = plan_->weights().layer(l);
  const int64_t C = c.nEmbd, F = c.nFf, TF = plan_->feedForwardTokens();
  const LayerActivations& saved = plan_->layerActivations(l);
  if (plan_->checkpointsOnHost()) {
    // this layer's input was brought back during the layer above's backward; the one below's comes
    // back during this one
    if (loadPending_[static_cast<size_t>(l)]) {
      waitForCopy(loadedEvents_[static_cast<size_t>(l)]);
      loadPending_[static_cast<size_t>(l)] = false;
    }
    if (l > 0) loadCheckpoint(l - 1, T);
  }
  if (recompute) {
    if (plan_->keeps(l)) rebuildLayerScratch(l, T);
    else attentionForward(l, T, pass);  // the feed-forward block is recomputed chunk by chunk below
  }
  const float* x = plan_->layerInput(l, T);  // (T, C)

  // FFN, a chunk of positions at a time: dResidual holds dL/d(layer output) and, by the skip
  // connection, part of dL/d(residual2) (dResidualBf16: its bf16 copy, from the RMSNorm backward that
  // produced it). Only the forward of the last layer, in one chunk, left the block's buffers whole.
  const bool forwardLeftFeedForward = !recompute && T <= TF;
  for (int64_t t0 = 0; t0 < T; t0 += TF) {
    const TokenRange chunk{t0, std::min(TF, T - t0), T};
    const int64_t row = feedForwardRow(saved, chunk), n = chunk.count * F;
    // the down adapter's dA reads the hidden in fp32 (a.hidden) or in bf16 (scratch.gradientBf16, which the
    // last layer's forward left there: the loss head does not use it)
    const bool fp32 = hiddenInFp32(l, pass);
    if (!forwardLeftFeedForward) {
      if (saved.ownFeedForward) {
        swiglu_forward(fp32 ? a.hidden : nullptr, fp32 ? nullptr : s.gradientBf16, saved.gate + row * F,
                       saved.up + row * F, n, stream_);
      } else {
        gateUpForward(l, chunk, pass);
        // the down projection's output is not needed again, but its adapter's backward reads hidden·Aᵀ
        // (a kept layer has it from the forward)
        if (!plan_->keeps(l)) downHiddenForward(l, chunk, pass);
      }
    }
    projectBackward(l, Projection::Down, a.dResidual + t0 * C, s.dResidualBf16 + t0 * C, fp32 ? a.hidden : nullptr,
                    a.dHidden, saved.loraHidden, chunk, false, pass, fp32 ? nullptr : s.gradientBf16);
    float* dGate = a.dHidden;  // in place: dHidden is read once per element
    // up now holds d(up); the bf16 copies of d(gate) and d(up) for the two products
    swiglu_backward(dGate, a.up, s.inputBf16, s.gradientBf16, a.dHidden, saved.gate + row * F, saved.up + row * F, n,
                    stream_);
    const float* normed = a.normed2 + t0 * C;
    float* dNormed = a.dNormed + t0 * C;
    const float* douts[2] = {dGate, a.up};
    const __nv_bfloat16* doutsBf16[2] = {s.inputBf16, s.gradientBf16};
    projectGroupBackward(l, Projection::Gate, douts, doutsBf16, normed, dNormed, saved.loraHidden, chunk, false, pass);
  }
  rmsnorm_backward(a.dResidual, s.dResidualBf16, a.dNormed, saved.residual2, w.ffnNorm, a.rstd2, T, C, stream_);

  // attention: dResidual now holds dL/d(residual2) = dL/d(O output), and the skip share of dL/dx
  const TokenRange whole = TokenRange::whole(T);
  projectBackward(l, Projection::O, a.dResidual, s.dResidualBf16, a.attn, a.dAttn, saved.loraHidden, whole, false, pass);
  if (plan_->flash()) {
    to_bf16(s.dAttnBf16, a.dAttn, T * c.qDim(), stream_);
    flash_attention_backward(flashArgs(saved, T), {s.dAttnBf16, a.dq, a.dk, a.dv, b.rowDots}, stream_);
  } else {
    attention_backward(a.dq, a.dk, a.dv, b.rowDots, a.dAttn, a.q, a.k, a.v, a.attn, saved.lse, a.seqStart, hostSeqStart_.data(),
                       attentionShape(T), s.attention, cublas_, stream_);
  }
  rope_backward(a.dq, s.inputBf16, a.ropeCache, b.positions, T, c.nHead, c.headDim, c.neoxRope(), stream_);
  rope_backward(a.dk, s.gradientBf16, a.ropeCache, b.positions, T, c.nHeadKv, c.headDim, c.neoxRope(), stream_);
  const float* dqkv[3] = {a.dq, a.dk, a.dv};
  const __nv_bfloat16* dqkvBf16[3] = {s.inputBf16, s.gradientBf16, nullptr};  // dv: converted where it is used
  projectGroupBackward(l, Projection::Q, dqkv, dqkvBf16, a.normed1, inputGradient ? a.dNormed : nullptr, saved.loraHidden,
                       whole, false, pass);
  if (inputGradient) rmsnorm_backward(a.dResidual, s.dResidualBf16, a.dNormed, x, w.attnNorm, a.rstd1, T, C, stream_);
}

// ---- residual checkpoints in host memory ----

void CudaBackend::copyAfterCompute() {
  check(cudaEventRecord(computeMark_, stream_), "cudaEventRecord");
  check(cudaStreamWaitEvent(copyStream_, computeMark_, 0), "cudaStreamWaitEvent");
}

void CudaBackend::saveCheckpoint(int64_t l, int64_t T) {
  copyAfterCompute();  // the input is complete: the layer below wrote it
  check(cudaMemcpyAsync(plan_->hostCheckpoint(l, T), plan_->layerInput(l, T), sizeof(float) * T * model_.config().nEmbd,
                        cudaMemcpyDeviceToHost, copyStream_),
        "cudaMemcpyAsync (checkpoint to host memory)");
  check(cudaEventRecord(savedEvents_[static_cast<size_t>(l)], copyStream_), "cudaEventRecord");
  savePending_[static_cast<size_t>(l)] = true;
}

void CudaBackend::loadCheckpoint(int64_t l, int64_t T) {
  // the slot's last reader, the backward of the layer above l + 1 (or the loss head), is enqueued already
  copyAfterCompute();
  check(cudaMemcpyAsync(plan_->layerInput(l, T), plan_->hostCheckpoint(l, T), sizeof(float) * T * model_.config().nEmbd,
                        cudaMemcpyHostToDevice, copyStream_),
        "cudaMemcpyAsync (checkpoint from host memory)");
  check(cudaEventRecord(loadedEvents_[static_cast<size_t>(l)], copyStream_), "cudaEventRecord");
  loadPending_[static_cast<size_t>(l)] = true;
}

void CudaBackend::waitForCopy(cudaEvent_t copied) {
  if (waitTimersUsed_ == waitTimers_.size()) {
    cudaEvent_t before = nullptr, after = nullptr;
    check(cudaEventCreate(&before), "cudaEventCreate");
    check(cudaEventCreate(&after), "cudaEventCreate");
    waitTimers_.emplace_back(before, after);
  }
  auto [before, after] = waitTimers_[waitTimersUsed_++];
  check(cudaEventRecord(before, stream_), "cudaEventRecord");
  check(cudaStreamWaitEvent(stream_, copied, 0), "cudaStreamWaitEvent");
  check(cudaEventRecord(after, stream_), "cudaEventRecord");
}

// after a synchronize of the compute stream: every timed wait has completed
void CudaBackend::collectCopyWaits() {
  double seconds = 0.0;
  for (size_t i = 0; i < waitTimersUsed_; ++i) {
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, waitTimers_[i].first, waitTimers_[i].second), "cudaEventElapsedTime");
    seconds += ms / 1000.0;
  }
  waitTimersUsed_ = 0;
  plan_->recordCopyWait(seconds);
}

// Final norm, lm_head and cross-entropy over the row's target positions, adding the loss to
// *lossSum on the device; with grad, leaves dL/d(final residual) in dResidual. Returns the count.
int64_t CudaBackend::lossHead(const Row& row, bool withGradient) {
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const CudaRowBuffers& b = plan_->rowBuffers();
  const ModelConfig& c = model_.config();
  const DeviceModel& weights = plan_->weights();
  const MappedTensor& w = *weights.output().host;
  const int64_t vocabChunk = plan_->vocabChunk();
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  const int64_t C = c.nEmbd, V = c.nVocab;
  const float* x = plan_->layerInput(c.nLayer, T);  // (T, C) final residual
  rmsnorm_forward(a.normedFinal, nullptr, a.rstdFinal, x, weights.outputNorm(), T, C, c.rmsEps, stream_);

  // only positions with a target reach the lm_head
  std::vector<int32_t> positions, targets;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t target = row.targets[static_cast<size_t>(t)];
    if (target < 0) continue;
    positions.push_back(static_cast<int32_t>(t));
    targets.push_back(target);
  }
  const int64_t N = static_cast<int64_t>(positions.size());
  if (withGradient) zero(a.dResidual, sizeof(float) * T * C);
  if (N == 0) return 0;
  upload(a.lossPositions, positions.data(), sizeof(int32_t) * positions.size());
  upload(a.lossTargets, targets.data(), sizeof(int32_t) * targets.size());
  gather_rows(a.lossInput, a.normedFinal, a.lossPositions, N, C, stream_);
  to_bf16(s.inputBf16, a.lossInput, N * C, stream_);  // (N, C), read by every chunk below

  // one pass over the vocabulary; with the gradient, dLossInput (N, C) gathers Σ exp(z − m)·W chunk by
  // chunk (cross_entropy.cu), its rows rescaled by lossLse's exp(m_old − m_new) when their max moves
  float* rescale = withGradient ? a.lossLse : nullptr;
  __nv_bfloat16* dlogits = withGradient ? s.dlogits : nullptr;
  cross_entropy_begin(a.runMax, a.runSum, a.targetLogit, N, stream_);
  for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
    const int64_t chunk = std::min(vocabChunk, V - v0);
    dequantize_rows_bf16(s.weightBf16, weights.output().data, static_cast<uint32_t>(w.type), static_cast<int64_t>(w.rowBytes),
                         C, v0, chunk, stream_);  // (chunk, C)
    gemm_bf16(cublas_, false, true, N, chunk, C, 1.0f, s.inputBf16, C, s.weightBf16, C, 0.0f, s.logitsChunk, chunk);
    cross_entropy_accumulate(a.runMax, a.runSum, a.targetLogit, s.logitsChunk, a.lossTargets, N, chunk, v0, rescale,
                             dlogits, stream_);
    if (!withGradient) continue;
    if (v0 > 0) cross_entropy_rescale_rows(a.dLossInput, rescale, N, C, stream_);
    // dLossInput (N, C) (+)= exp(z − m) (N, chunk) · W (chunk, C)
    gemm_bf16(cublas_, false, false, N, C, chunk, 1.0f, dlogits, chunk, s.weightBf16, C, v0 > 0 ? 1.0f : 0.0f,
              a.dLossInput, C);
  }
  cross_entropy_finish(a.lossLse, b.lossSum, a.runMax, a.runSum, a.targetLogit, N, stream_);
  if (!withGradient) return N;
  // the targets' rows of the output matrix (fp32) into lossInput, free since its bf16 copy was made
  dequantize_gather_f32(a.lossInput, weights.output().data, static_cast<uint32_t>(w.type),
                        static_cast<int64_t>(w.rowBytes), C, a.lossTargets, N, stream_);
  zero(a.dNormed, sizeof(float) * T * C);
  cross_entropy_input_gradient(a.dNormed, a.dLossInput, a.runSum, a.lossInput, a.lossPositions, N, C, stream_);
  rmsnorm_backward(a.dResidual, s.dResidualBf16, a.dNormed, x, weights.outputNorm(), a.rstdFinal, T, C, stream_);
  return N;
}


void CudaBackend::logitsHead(int64_t T, float* logits) {
  const ModelConfig& c = model_.config();
  const ActivationBuffers& a = plan_->activations();
  const CudaScratch& s = plan_->scratch();
  const DeviceMatrix& output = plan_->weights().output();
  const MappedTensor& w = *output.host;
  const int64_t C = c.nEmbd, V = c.nVocab, vocabChunk = plan_->vocabChunk();
  rmsnorm_forward(a.normedFinal, s.inputBf16, a.rstdFinal, plan_->layerInput(c.nLayer, T),
                  plan_->weights().outputNorm(), T, C, c.rmsEps, stream_);
  for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
    const int64_t chunk = std::min(vocabChunk, V - v0);
    dequantize_rows_bf16(s.weightBf16, output.data, static_cast<uint32_t>(w.type), static_cast<int64_t>(w.rowBytes), C,
                         v0, chunk, stream_);
    gemm_bf16(cublas_, false, true, T, chunk, C, 1.0f, s.inputBf16, C, s.weightBf16, C, 0.0f, s.logitsChunk, chunk);
    check(cudaMemcpy2DAsync(logits + v0, sizeof(float) * V, s.logitsChunk, sizeof(float) * chunk,
                            sizeof(float) * chunk, static_cast<size_t>(T), cudaMemcpyDeviceToHost, stream_),
          "cudaMemcpy2DAsync (logits)");
    synchronize();  // the next chunk overwrites logitsChunk
  }
}

}  // namespace

std::unique_ptr<Backend> createCudaBackend(const EngineOptions& options, const Model& model, const Lora& lora) {
  return std::make_unique<CudaBackend>(options, model, lora);
}

bool cudaBackendBuilt() { return true; }

const char* cudaArchitectures() { return THINKTUNE_CUDA_ARCHITECTURES; }  // from the build (cuda.cmake)

int cudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

}  // namespace thinktune
