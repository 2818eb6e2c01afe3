// The CPU backend (backend.h): fp32 reference passes over host memory, OpenMP kernels. Per layer: RMSNorm → Q/K/V (+bias, +LoRA) → RoPE →
// causal GQA attention → O (+LoRA) → residual → RMSNorm → SwiGLU FFN (+LoRA) → residual, as llama.cpp
// builds qwen2 and llama graphs. Backward recomputes each layer from its saved input (activation
// checkpointing) and produces gradients for the LoRA A and B only.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>

#include <memory>
#include <thread>

#include "common/error.h"
#include "common/host_memory.h"
#include "common/parallel.h"
#include "engine/backend.h"
#include "engine/engine.h"
#include "engine/memory_plan.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_bf16.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "quant/quant.h"
#include "kernels/cpu/threading.h"

namespace thinktune {

using namespace kernels;

namespace {
constexpr int64_t kWeightChunkFloats = int64_t{4} << 20;  // 16 MiB of dequantized rows
constexpr int64_t kLogitsChunkFloats = int64_t{8} << 20;  // 32 MiB of (tokens, vocab chunk) logits
// Each of the shared set's four (positions, F) feed-forward buffers holds at most this much, so a recomputed
// layer's memory stays flat in the sequence length (a 7B's F = 18944 runs 1771 positions a chunk; the
// embedded tiny model never chunks). Kept layers hold whole rows, within their own budget.
constexpr int64_t kFeedForwardChunkFloats = int64_t{32} << 20;  // 128 MiB

// a (N) += b (N)
void addInPlace(float* a, const float* b, int64_t N) {
#pragma omp parallel for simd schedule(static) if (N >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) a[i] += b[i];
}

// Rows [row0, row0 + nRows) of a base matrix as f32: the mapped bytes for F32, else dequantized
// into `chunk`.
const float* matrixRows(const MappedTensor& weight, int64_t row0, int64_t nRows, float* chunk) {
  if (weight.type == quant::GgmlType::F32) {
    return reinterpret_cast<const float*>(weight.data) + row0 * weight.rowLength;
  }
  dequantizeMatrixRows(weight, row0, nRows, chunk);
  return chunk;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(const EngineOptions& options, const Model& model, const Lora& lora);

  void beginCall() override { setThreadCount(threads_); }
  void beginRow(const Row& row) override;
  void layerForward(int64_t layer, int64_t T, const Pass& pass) override;
  void layerBackward(int64_t layer, int64_t T, const Pass& pass, bool recompute, bool inputGradient) override;
  int64_t lossHead(const Row& row, bool withGradient) override;
  void resetLoss() override { lossSum_ = 0.0; }
  double lossSum() override { return lossSum_; }
  void logitsHead(int64_t T, float* logits) override;
  void zeroGradients() override;
  double sumSquares(LoraBlock block) override;
  void adamwUpdate(const AdamWStep& hyper) override;
  void saveState() override;
  void restoreState() override;
  void readBlock(LoraBlock block, float* host) override;
  void writeBlock(LoraBlock block, const float* host) override;
  std::vector<std::pair<std::string, double>> memoryPlan() const override { return plan_->report(model_); }

 private:
  float* block(LoraBlock which) const { return loraBlock(plan_->lora(), which); }
  void embed(const Row& row);
  // use(r0, nRows, rows) over fp32 row chunks of a base matrix of any type
  template <typename UseRows>
  void forEachWeightChunk(const MappedTensor& weight, UseRows use);
  // out (T, N) = inp (T, K)·Wᵀ (+ bias) for a base matrix of any type
  void baseForward(const MappedTensor& weight, const float* bias, const float* inp, float* out, int64_t T);
  // out (T, N) [row stride ldOut] = inp (T, K)·rowsᵀ (+ bias) / dinp (T, K) (+)= dout·rows, in the
  // engine's precision
  void weightMatmulForward(float* out, ptrdiff_t ldOut, const float* inp, const float* rows, const float* bias,
                           int64_t T, int64_t K, int64_t N);
  void weightMatmulBackwardInput(float* dinp, const float* dout, ptrdiff_t ldDout, const float* rows, int64_t T,
                                 int64_t K, int64_t N, bool accumulate);
  // dinp (T, K) (+)= dout (T, N)·W
  void baseBackwardInput(const MappedTensor& weight, const float* dout, float* dinp, int64_t T, bool accumulate);
  // For the positions of `span` (inp, out and dinp point at its first): out (count, N) +=
  // scale·((dropout(inp)·Aᵀ)·Bᵀ), keeping x·Aᵀ in the LoRA hidden buffer
  void loraForward(const LoraAdapter& adapter, const float* inp, float* out, TokenRange span, const Pass& pass);
  // parameter grads += ; dinp (count, K) += the LoRA path's input gradient (skipped when dinp is null)
  void loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp, TokenRange span,
                    const Pass& pass);
  // input of the LoRA path: inp itself, or dropout(inp) in scratch.droppedInput (the masks of the whole row's
  // elements, whatever the span)
  const float* loraInput(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass);
  float* loraHidden(const LoraAdapter& adapter, TokenRange span) const;
  // the LoRA hidden product alone: loraHidden = dropout(inp)·Aᵀ (count, R)
  void loraHiddenForward(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass);
  // a base product plus its adapter's, when the layer has one
  void projectForward(int64_t layer, Projection p, const float* bias, const float* inp, float* out, TokenRange span,
                      const Pass& pass);
  void projectBackward(int64_t layer, Projection p, const float* inp, const float* dout, float* dinp, TokenRange span,
                       bool accumulate, const Pass& pass);
  // attention half of a layer's forward, up to the feed-forward's RMSNorm output normed2
  void attentionForward(int64_t layer, int64_t T, const Pass& pass);
  // gate, up and hidden = silu(gate)·up of a feed-forward chunk
  void gateUpForward(int64_t layer, TokenRange chunk, const Pass& pass);

  Precision precision_;
  int threads_ = 1;
  const Model& model_;
  const Lora& lora_;
  std::unique_ptr<MemoryPlan> plan_;
  double lossSum_ = 0.0;
};

CpuBackend::CpuBackend(const EngineOptions& options, const Model& model, const Lora& lora)
    : precision_(options.precision), model_(model), lora_(lora) {
  if (precision_ == Precision::BF16 && !bf16MatmulAvailable()) {
    throw Error("precision \"bf16\" needs a CPU with AVX512-BF16 (and a build for it); use precision \"fp32\"");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  threads_ = options.threads > 0 ? options.threads : static_cast<int>(cores == 0 ? 1 : cores);
  setThreadCount(threads_);
  const ModelConfig& c = model.config();
  PlanSizes sizes;
  sizes.maxTokens = options.maxTokens;
  sizes.threads = threads_;
  sizes.vocabChunk = std::min<int64_t>(c.nVocab, std::max<int64_t>(256, kLogitsChunkFloats / sizes.maxTokens));
  sizes.feedForwardTokens = std::min<int64_t>(
      sizes.maxTokens, options.feedForwardTokens > 0 ? options.feedForwardTokens
                                                     : std::max<int64_t>(16, kFeedForwardChunkFloats / c.nFf));
  // layers kept from the forward are not recomputed in the backward (a quarter fewer products): as many
  // as a quarter of the machine's memory holds, or maxKeptLayers
  const size_t perLayer = MemoryPlan::keptLayerBytes(c, sizes.maxTokens, lora.options().rank);
  const size_t budget = physicalMemoryBytes() / 4;
  sizes.keptLayers = static_cast<int64_t>(budget / perLayer);
  if (options.maxKeptLayers >= 0) sizes.keptLayers = std::min(sizes.keptLayers, options.maxKeptLayers);
  const int64_t largestMatrix = model.maxRows() * model.maxRowLength();
  sizes.weightChunkFloats = std::max(std::min(kWeightChunkFloats, largestMatrix),
                                     std::max(model.maxRowLength() * 32, sizes.vocabChunk * c.nEmbd));
  plan_ = std::make_unique<MemoryPlan>(model, lora, sizes);
}


void CpuBackend::zeroGradients() { std::fill(plan_->lora().grads, plan_->lora().grads + lora_.parameterCount(), 0.0f); }

double CpuBackend::sumSquares(LoraBlock which) {
  const float* x = block(which);
  const int64_t P = static_cast<int64_t>(lora_.parameterCount());
  double sum = 0.0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (P >= kParallelMinWork)
  for (int64_t i = 0; i < P; ++i) sum += static_cast<double>(x[i]) * x[i];
  return sum;
}

void CpuBackend::adamwUpdate(const AdamWStep& hyper) {
  const LoraBuffers& l = plan_->lora();
  adamw_update(l.params, l.m, l.v, l.grads, static_cast<int64_t>(lora_.parameterCount()), hyper);
}

void CpuBackend::saveState() {
  const size_t bytes = sizeof(float) * lora_.parameterCount();
  for (auto [to, from] : stateCopies(plan_->lora(), true)) std::memcpy(to, from, bytes);
}

void CpuBackend::restoreState() {
  const size_t bytes = sizeof(float) * lora_.parameterCount();
  for (auto [to, from] : stateCopies(plan_->lora(), false)) std::memcpy(to, from, bytes);
}

void CpuBackend::readBlock(LoraBlock which, float* host) {
  std::memcpy(host, block(which), sizeof(float) * lora_.parameterCount());
}

void CpuBackend::writeBlock(LoraBlock which, const float* host) {
  std::memcpy(block(which), host, sizeof(float) * lora_.parameterCount());
}

void CpuBackend::weightMatmulForward(float* out, ptrdiff_t ldOut, const float* inp, const float* rows, const float* bias,
                                 int64_t T, int64_t K, int64_t N) {
  if (precision_ == Precision::BF16) {
    matmul_forward_bf16(out, ldOut, inp, rows, bias, T, K, N, false, plan_->scratch().gemm);
  } else {
    matmul_forward(out, ldOut, inp, rows, bias, T, K, N, false, plan_->scratch().gemm);
  }
}

void CpuBackend::weightMatmulBackwardInput(float* dinp, const float* dout, ptrdiff_t ldDout, const float* rows, int64_t T,
                                       int64_t K, int64_t N, bool accumulate) {
  if (precision_ == Precision::BF16) {
    matmul_backward_input_bf16(dinp, dout, ldDout, rows, T, K, N, 1.0f, accumulate, plan_->scratch().gemm);
  } else {
    matmul_backward_input(dinp, dout, ldDout, rows, T, K, N, 1.0f, accumulate, plan_->scratch().gemm);
  }
}

// An F32 weight is used in place, in one piece; other types are dequantized a chunk of rows at a time.
template <typename UseRows>
void CpuBackend::forEachWeightChunk(const MappedTensor& weight, UseRows use) {
  const int64_t K = weight.rowLength, N = weight.nRows;
  const int64_t chunkRows = weight.type == quant::GgmlType::F32
                                ? N
                                : std::max<int64_t>(1, plan_->sizes().weightChunkFloats / K);
  for (int64_t r0 = 0; r0 < N; r0 += chunkRows) {
    const int64_t nRows = std::min(chunkRows, N - r0);
    use(r0, nRows, matrixRows(weight, r0, nRows, plan_->scratch().weightChunk));  // (nRows, K)
  }
}

void CpuBackend::baseForward(const MappedTensor& weight, const float* bias, const float* inp, float* out, int64_t T) {
  const int64_t K = weight.rowLength, N = weight.nRows;
  forEachWeightChunk(weight, [&](int64_t r0, int64_t nRows, const float* rows) {
    weightMatmulForward(out + r0, N, inp, rows, bias ? bias + r0 : nullptr, T, K, nRows);
  });
}

void CpuBackend::baseBackwardInput(const MappedTensor& weight, const float* dout, float* dinp, int64_t T,
                               bool accumulate) {
  const int64_t K = weight.rowLength, N = weight.nRows;
  forEachWeightChunk(weight, [&](int64_t r0, int64_t nRows, const float* rows) {
    weightMatmulBackwardInput(dinp, dout + r0, N, rows, T, K, nRows, accumulate || r0 > 0);
  });
}

const float* CpuBackend::loraInput(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass) {
  const float dropout = lora_.options().dropout;
  if (!pass.training || dropout <= 0.0f) return inp;
  const int64_t K = adapter.in, n = span.count * K;
  const uint64_t first = static_cast<uint64_t>(span.begin * K);
  float* dropped = plan_->scratch().droppedInput;  // (count, K)
  const float keepScale = 1.0f / (1.0f - dropout);
  const uint64_t step = pass.dropoutStep;
#pragma omp parallel for schedule(static) if (n >= kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) {
    dropped[i] = lora_.keeps(step, adapter.layer, adapter.projection, first + static_cast<uint64_t>(i)) ? inp[i] * keepScale
                                                                                                       : 0.0f;
  }
  return dropped;
}

float* CpuBackend::loraHidden(const LoraAdapter& adapter, TokenRange span) const {
  const int64_t R = lora_.options().rank;
  // (7, rowLength, R): each projection's x·Aᵀ over the whole row
  return plan_->layerActivations(adapter.layer).loraHidden +
         (static_cast<int>(adapter.projection) * span.rowLength + span.begin) * R;
}

void CpuBackend::loraHiddenForward(const LoraAdapter& adapter, const float* inp, TokenRange span, const Pass& pass) {
  const int64_t R = lora_.options().rank;
  const float* x = loraInput(adapter, inp, span, pass);  // (T, K)
  matmul_forward(loraHidden(adapter, span), R, x, plan_->lora().params + adapter.offsetA, nullptr, span.count,
                 adapter.in, R, false, plan_->scratch().gemm);
}

void CpuBackend::loraForward(const LoraAdapter& adapter, const float* inp, float* out, TokenRange span, const Pass& pass) {
  const int64_t R = lora_.options().rank, N = adapter.out, T = span.count;
  loraHiddenForward(adapter, inp, span, pass);
  // out (T, N) += scale · hidden (T, R) · B (N, R)ᵀ
  gemm(T, N, R, lora_.scale(), loraHidden(adapter, span), R, 1, plan_->lora().params + adapter.offsetB, 1, R, out, N,
       true, plan_->scratch().gemm);
}

void CpuBackend::loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp, TokenRange span,
                              const Pass& pass) {
  const int64_t R = lora_.options().rank, K = adapter.in, N = adapter.out, T = span.count;
  const float scale = lora_.scale();
  const float* params = plan_->lora().params;
  float* grads = plan_->lora().grads;
  float* workspace = plan_->scratch().gemm;
  const float* hidden = loraHidden(adapter, span);    // (T, R)
  float* dHidden = plan_->activations().dLoraHidden;  // (T, R)
  const float* x = loraInput(adapter, inp, span, pass);  // (T, K)
  matmul_backward_weight(grads + adapter.offsetB, dout, hidden, T, R, N, scale, workspace);
  matmul_backward_input(dHidden, dout, N, params + adapter.offsetB, T, R, N, scale, false, workspace);
  matmul_backward_weight(grads + adapter.offsetA, dHidden, x, T, K, R, 1.0f, workspace);
  if (!dinp) return;
  if (x == inp) {
    matmul_backward_input(dinp, dHidden, R, params + adapter.offsetA, T, K, R, 1.0f, true, workspace);
    return;
  }
  // dropout: the input gradient passes only where the mask kept the element, scaled like the input
  float* dDropped = plan_->scratch().droppedInput;  // (T, K), x is no longer needed
  matmul_backward_input(dDropped, dHidden, R, params + adapter.offsetA, T, K, R, 1.0f, false, workspace);
  const float dropout = lora_.options().dropout;
  const float keepScale = 1.0f / (1.0f - dropout);
  const uint64_t step = pass.dropoutStep, first = static_cast<uint64_t>(span.begin * K);
#pragma omp parallel for schedule(static) if (T * K >= kParallelMinWork)
  for (int64_t i = 0; i < T * K; ++i) {
    if (lora_.keeps(step, adapter.layer, adapter.projection, first + static_cast<uint64_t>(i))) dinp[i] += dDropped[i] * keepScale;
  }
}

void CpuBackend::projectForward(int64_t layer, Projection p, const float* bias, const float* inp, float* out,
                                TokenRange span, const Pass& pass) {
  baseForward(*model_.layer(layer).matrix[static_cast<int>(p)], bias, inp, out, span.count);
  if (const LoraAdapter* adapter = lora_.find(layer, p)) loraForward(*adapter, inp, out, span, pass);
}

void CpuBackend::projectBackward(int64_t layer, Projection p, const float* inp, const float* dout, float* dinp,
                                 TokenRange span, bool accumulate, const Pass& pass) {
  if (dinp) baseBackwardInput(*model_.layer(layer).matrix[static_cast<int>(p)], dout, dinp, span.count, accumulate);
  if (const LoraAdapter* adapter = lora_.find(layer, p)) loraBackward(*adapter, inp, dout, dinp, span, pass);
}

void CpuBackend::beginRow(const Row& row) {
  const ActivationBuffers& a = plan_->activations();
  const CpuBuffers& b = plan_->cpuBuffers();
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  for (size_t s = 0; s < row.seqStarts.size(); ++s) {
    const int32_t start = row.seqStarts[s];
    const int32_t end = s + 1 < row.seqStarts.size() ? row.seqStarts[s + 1] : static_cast<int32_t>(T);
    for (int32_t t = start; t < end; ++t) {
      b.positions[t] = t - start;
      a.seqStart[t] = start;
      b.seqEnd[t] = end;
    }
  }
  const ModelConfig& c = model_.config();
  rope_cache(a.ropeCache, b.positions, T, c.headDim, c.ropeBase, model_.ropeFreqs());
  embed(row);
}

void CpuBackend::embed(const Row& row) {
  const MappedTensor& table = model_.tokenEmbedding();
  const int64_t C = model_.config().nEmbd;
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  float* x = plan_->activations().residual;  // (T, C)
  std::atomic<int64_t> badPosition{-1};
#pragma omp parallel for schedule(static) if (T * C >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t token = row.tokens[static_cast<size_t>(t)];
    float* dst = x + t * C;
    quant::dequantizeRow(table.type, table.data + static_cast<size_t>(token) * table.rowBytes, dst, C);
    for (int64_t c = 0; c < C; ++c)
      if (!std::isfinite(dst[c])) badPosition.store(t);
  }
  if (badPosition.load() >= 0) {
    throw Error("tensor " + table.name + " holds a NaN or infinite value in the row of token " +
                std::to_string(row.tokens[static_cast<size_t>(badPosition.load())]) +
                "; the model file is damaged: re-download or re-convert it");
  }
}

void CpuBackend::attentionForward(int64_t layer, int64_t T, const Pass& pass) {
  const ModelConfig& c = model_.config();
  const LayerWeights& w = model_.layer(layer);
  const ActivationBuffers& a = plan_->activations();
  const CpuLayerActivations& l = plan_->layerActivations(layer);
  const int64_t C = c.nEmbd;
  const float* x = a.residual + layer * T * C;  // (T, C) layer input
  const TokenRange row = TokenRange::whole(T);

  rmsnorm_forward(l.normed1, l.rstd1, x, w.attnNorm, T, C, c.rmsEps);
  float* qkv[3] = {l.q, l.k, l.v};
  for (int p = 0; p < 3; ++p) projectForward(layer, static_cast<Projection>(p), w.bias[p], l.normed1, qkv[p], row, pass);
  rope_forward(l.q, a.ropeCache, T, c.nHead, c.headDim, c.neoxRope());
  rope_forward(l.k, a.ropeCache, T, c.nHeadKv, c.headDim, c.neoxRope());
  attention_forward(l.attn, l.lse, l.q, l.k, l.v, a.seqStart, T, c.nHead, c.nHeadKv, c.headDim,
                    1.0f / std::sqrt(static_cast<float>(c.headDim)), plan_->scratch().attention);
  projectForward(layer, Projection::O, nullptr, l.attn, l.residual2, row, pass);
  addInPlace(l.residual2, x, T * C);
  rmsnorm_forward(l.normed2, l.rstd2, l.residual2, w.ffnNorm, T, C, c.rmsEps);
}

void CpuBackend::gateUpForward(int64_t layer, TokenRange chunk, const Pass& pass) {
  const CpuLayerActivations& l = plan_->layerActivations(layer);
  const float* normed2 = l.normed2 + chunk.begin * model_.config().nEmbd;
  projectForward(layer, Projection::Gate, nullptr, normed2, l.gate, chunk, pass);
  projectForward(layer, Projection::Up, nullptr, normed2, l.up, chunk, pass);
  swiglu_forward(l.hidden, l.gate, l.up, chunk.count * model_.config().nFf);
}

void CpuBackend::layerForward(int64_t layer, int64_t T, const Pass& pass) {
  const CpuLayerActivations& l = plan_->layerActivations(layer);
  const int64_t C = model_.config().nEmbd, TF = l.feedForwardTokens;
  attentionForward(layer, T, pass);
  float* next = plan_->activations().residual + (layer + 1) * T * C;  // (T, C) layer output
  for (int64_t t0 = 0; t0 < T; t0 += TF) {
    const TokenRange chunk{t0, std::min(TF, T - t0), T};
    gateUpForward(layer, chunk, pass);
    projectForward(layer, Projection::Down, nullptr, l.hidden, next + t0 * C, chunk, pass);
  }
  addInPlace(next, l.residual2, T * C);
}

void CpuBackend::layerBackward(int64_t layer, int64_t T, const Pass& pass, bool recompute, bool inputGradient) {
  const ModelConfig& c = model_.config();
  const LayerWeights& w = model_.layer(layer);
  const ActivationBuffers& a = plan_->activations();
  const CpuLayerActivations& l = plan_->layerActivations(layer);
  const int64_t C = c.nEmbd, F = c.nFf, TF = l.feedForwardTokens;
  // a kept layer's activations are still there; others are rebuilt from the saved input, the feed-forward's
  // chunk by chunk below (its output is not needed)
  recompute = recompute && !plan_->kept(layer);
  if (recompute) attentionForward(layer, T, pass);
  const float* x = a.residual + layer * T * C;  // (T, C)
  const TokenRange row = TokenRange::whole(T);

  // FFN, a chunk of positions at a time: a.dResidual holds dL/d(layer output) and, by the skip
  // connection, part of dL/d(residual2). The forward left gate/up/hidden of its last chunk only.
  const bool wholeFeedForwardKept = !recompute && T <= TF;
  for (int64_t t0 = 0; t0 < T; t0 += TF) {
    const TokenRange chunk{t0, std::min(TF, T - t0), T};
    const float* normed2 = l.normed2 + t0 * C;
    float* dNormed = a.dNormed + t0 * C;
    if (!wholeFeedForwardKept) {
      gateUpForward(layer, chunk, pass);
      // the down projection's output is not needed again, but its adapter's backward reads hidden·Aᵀ
      if (const LoraAdapter* down = lora_.find(layer, Projection::Down)) loraHiddenForward(*down, l.hidden, chunk, pass);
    }
    projectBackward(layer, Projection::Down, l.hidden, a.dResidual + t0 * C, a.dHidden, chunk, false, pass);
    // gate, up now hold their gradients
    swiglu_backward(l.gate, l.up, a.dHidden, l.gate, l.up, chunk.count * F);
    projectBackward(layer, Projection::Gate, normed2, l.gate, dNormed, chunk, false, pass);
    projectBackward(layer, Projection::Up, normed2, l.up, dNormed, chunk, true, pass);
  }
  rmsnorm_backward(a.dResidual, a.dNormed, l.residual2, w.ffnNorm, l.rstd2, T, C);

  // attention: a.dResidual now holds dL/d(residual2) = dL/d(O output), and the skip share of dL/dx
  projectBackward(layer, Projection::O, l.attn, a.dResidual, a.dAttn, row, false, pass);
  attention_backward(a.dq, a.dk, a.dv, a.dAttn, l.q, l.k, l.v, l.attn, l.lse, a.seqStart, plan_->cpuBuffers().seqEnd, T,
                     c.nHead, c.nHeadKv, c.headDim, 1.0f / std::sqrt(static_cast<float>(c.headDim)),
                     plan_->scratch().attention);
  rope_backward(a.dq, a.ropeCache, T, c.nHead, c.headDim, c.neoxRope());
  rope_backward(a.dk, a.ropeCache, T, c.nHeadKv, c.headDim, c.neoxRope());
  float* dqkv[3] = {a.dq, a.dk, a.dv};
  for (int p = 0; p < 3; ++p)
    projectBackward(layer, static_cast<Projection>(p), l.normed1, dqkv[p], inputGradient ? a.dNormed : nullptr, row, p > 0, pass);
  if (inputGradient) rmsnorm_backward(a.dResidual, a.dNormed, x, w.attnNorm, l.rstd1, T, C);
}

int64_t CpuBackend::lossHead(const Row& row, bool withGradient) {
  const ModelConfig& c = model_.config();
  const ActivationBuffers& a = plan_->activations();
  const ScratchBuffers& s = plan_->scratch();
  const int64_t T = static_cast<int64_t>(row.tokens.size());
  const int64_t C = c.nEmbd, V = c.nVocab, vocabChunk = plan_->sizes().vocabChunk;
  const float* x = a.residual + c.nLayer * T * C;  // (T, C) final residual
  rmsnorm_forward(a.normedFinal, a.rstdFinal, x, model_.outputNorm(), T, C, c.rmsEps);

  // only positions with a target reach the lm_head
  int64_t N = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t target = row.targets[static_cast<size_t>(t)];
    if (target < 0) continue;
    a.lossPositions[N] = static_cast<int32_t>(t);
    a.lossTargets[N] = target;
    std::memcpy(a.lossInput + N * C, a.normedFinal + t * C, sizeof(float) * C);
    ++N;
  }
  if (withGradient) std::fill(a.dResidual, a.dResidual + T * C, 0.0f);
  if (N == 0) return 0;

  const MappedTensor& output = model_.output();
  cross_entropy_begin(a.runMax, a.runSum, a.targetLogit, N);
  for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
    const int64_t chunk = std::min(vocabChunk, V - v0);
    const float* rows = matrixRows(output, v0, chunk, s.weightChunk);  // (chunk, C)
    weightMatmulForward(s.logitsChunk, chunk, a.lossInput, rows, nullptr, N, C, chunk);
    cross_entropy_accumulate(a.runMax, a.runSum, a.targetLogit, s.logitsChunk, a.lossTargets, N, chunk, v0);
  }
  lossSum_ += cross_entropy_finish(a.lossLse, a.runMax, a.runSum, a.targetLogit, N);
  if (!withGradient) return N;

  // second pass over the vocabulary: logits again, their gradient, and its product with the weights
  for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
    const int64_t chunk = std::min(vocabChunk, V - v0);
    const float* rows = matrixRows(output, v0, chunk, s.weightChunk);  // (chunk, C)
    weightMatmulForward(s.logitsChunk, chunk, a.lossInput, rows, nullptr, N, C, chunk);
    cross_entropy_backward(s.logitsChunk, a.lossLse, a.lossTargets, N, chunk, v0, 1.0f);
    weightMatmulBackwardInput(a.dLossInput, s.logitsChunk, chunk, rows, N, C, chunk, v0 > 0);
  }
  std::fill(a.dNormed, a.dNormed + T * C, 0.0f);
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(a.dNormed + static_cast<int64_t>(a.lossPositions[n]) * C, a.dLossInput + n * C, sizeof(float) * C);
  rmsnorm_backward(a.dResidual, a.dNormed, x, model_.outputNorm(), a.rstdFinal, T, C);
  return N;
}

void CpuBackend::logitsHead(int64_t T, float* logits) {
  const ModelConfig& c = model_.config();
  const ActivationBuffers& a = plan_->activations();
  const int64_t C = c.nEmbd, V = c.nVocab, vocabChunk = plan_->sizes().vocabChunk;
  rmsnorm_forward(a.normedFinal, a.rstdFinal, a.residual + c.nLayer * T * C, model_.outputNorm(), T, C, c.rmsEps);
  for (int64_t v0 = 0; v0 < V; v0 += vocabChunk) {
    const int64_t chunk = std::min(vocabChunk, V - v0);
    const float* rows = matrixRows(model_.output(), v0, chunk, plan_->scratch().weightChunk);
    weightMatmulForward(logits + v0, V, a.normedFinal, rows, nullptr, T, C, chunk);
  }
}

}  // namespace

std::unique_ptr<Backend> createCpuBackend(const EngineOptions& options, const Model& model, const Lora& lora) {
  return std::make_unique<CpuBackend>(options, model, lora);
}

}  // namespace thinktune
