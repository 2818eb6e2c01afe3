// Causal grouped-query attention inside packed sequences on tensor cores: queries go a tile at a
// time (Bq positions, every head), and for each tile cuBLAS computes the scores against the keys
// the tile can see, (Bq·group, Lk) per kv head; a row kernel applies the causal/sequence mask and
// the softmax, and cuBLAS multiplies by V. Memory is O(Bq·T) per head, never (T, T). Backward
// recomputes each tile's scores from the saved log-sum-exp (FlashAttention-2's formulas, as in
// kernels/cpu/attention.cpp): dS = P∘(dP − D), dQ = scale·dS·K, dK += scale·dSᵀ·Q, dV += Pᵀ·dO.
// Q and dO are regrouped as (Hkv, T, group, D) so the group's query heads of a tile are one
// contiguous (Bq·group, D) matrix per kv head, and a strided batch runs every kv head at once.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowThreads = 128;
constexpr int kWarps = 8;

// out (Hkv, T, group, D) bf16 = inp (T, Hkv·group, D) f32 regrouped
__global__ void group_heads_kernel(__nv_bfloat16* out, const float* inp, int64_t T, int64_t heads, int64_t group,
                                   int64_t D) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // index into inp
  if (i >= T * heads * D) return;
  const int64_t d = i % D, h = (i / D) % heads, t = i / (D * heads);
  const int64_t g = h / group, j = h % group;
  out[((g * T + t) * group + j) * D + d] = __float2bfloat16(inp[i]);
}

// out (T, Hkv·group, D) rows [t0, t0 + nq) = tile (Hkv, tileStride) holding (nq·group, D) per kv head
__global__ void ungroup_heads_kernel(float* out, const float* tile, int64_t tileStride, int64_t t0, int64_t nq,
                                     int64_t heads, int64_t group, int64_t D) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // index into out rows
  if (i >= nq * heads * D) return;
  const int64_t d = i % D, h = (i / D) % heads, r = i / (D * heads);
  const int64_t g = h / group, j = h % group;
  out[((t0 + r) * heads + h) * D + d] = tile[g * tileStride + (r * group + j) * D + d];
}

// One block per score row (kv head g = blockIdx.y, row = (t − t0)·group + j): key k0 + c is visible to
// query t when seqStart[t] <= k0 + c <= t. probs = softmax over the visible keys (0 elsewhere),
// lse (nHead, T) = the row's log-sum-exp.
__global__ void softmax_forward_kernel(__nv_bfloat16* probs, float* lse, const float* scores, const int32_t* seqStart,
                                       int64_t rowStride, int64_t t0, int64_t k0, int64_t Lk, int64_t T,
                                       int64_t group) {
  const int64_t g = blockIdx.y, row = blockIdx.x;
  const int64_t t = t0 + row / group, h = g * group + row % group;
  const float* s = scores + g * rowStride + row * Lk;  // (Lk)
  __nv_bfloat16* p = probs + g * rowStride + row * Lk;  // (Lk)
  const int64_t first = seqStart[t] - k0, last = t - k0;  // visible columns [first, last]
  float rowMax = -INFINITY;
  for (int64_t c = first + threadIdx.x; c <= last; c += blockDim.x) rowMax = fmaxf(rowMax, s[c]);
  rowMax = blockMax(rowMax);
  float sum = 0.0f;
  for (int64_t c = first + threadIdx.x; c <= last; c += blockDim.x) sum += expf(s[c] - rowMax);
  sum = blockSum(sum);
  const float inverse = 1.0f / sum;
  for (int64_t c = threadIdx.x; c < Lk; c += blockDim.x) {
    p[c] = __float2bfloat16(c >= first && c <= last ? expf(s[c] - rowMax) * inverse : 0.0f);
  }
  if (threadIdx.x == 0) lse[h * T + t] = rowMax + logf(sum);
}

// Backward, per score element: P = exp(S − lse) where visible, dS = scale·P·(dP − D_t)
__global__ void softmax_backward_kernel(__nv_bfloat16* probs, __nv_bfloat16* dscoresOut, const float* scores,
                                        const float* dprobs, const float* lse, const float* rowDots,
                                        const int32_t* seqStart, int64_t rowStride, int64_t t0, int64_t k0,
                                        int64_t Lk, int64_t T, int64_t group, float scale) {
  const int64_t g = blockIdx.y, row = blockIdx.x;
  const int64_t t = t0 + row / group, h = g * group + row % group;
  const int64_t offset = g * rowStride + row * Lk;
  const int64_t first = seqStart[t] - k0, last = t - k0;
  const float logSumExp = lse[h * T + t], rowDot = rowDots[h * T + t];
  for (int64_t c = threadIdx.x; c < Lk; c += blockDim.x) {
    const bool visible = c >= first && c <= last;
    const float p = visible ? expf(scores[offset + c] - logSumExp) : 0.0f;
    probs[offset + c] = __float2bfloat16(p);
    dscoresOut[offset + c] = __float2bfloat16(visible ? scale * p * (dprobs[offset + c] - rowDot) : 0.0f);
  }
}

// rowDots (nHead, T) = dout_i · out_i, one warp per (i, h)
__global__ void attention_row_dots_kernel(float* rowDots, const float* dout, const float* out, int64_t T,
                                          int64_t nHead, int64_t D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // i·nHead + h
  if (row >= T * nHead) return;
  float sum = 0.0f;
  for (int64_t d = threadIdx.x % 32; d < D; d += 32) sum += dout[row * D + d] * out[row * D + d];
  sum = warpSum(sum);
  if (threadIdx.x % 32 == 0) rowDots[(row % nHead) * T + row / nHead] = sum;
}

void checkShape(const AttentionShape& shape) {
  if (shape.D <= 0 || shape.nHeadKv <= 0 || shape.nHead % shape.nHeadKv != 0) {
    throw Error("attention: nHead " + std::to_string(shape.nHead) + " must be a positive multiple of nHeadKv " +
                std::to_string(shape.nHeadKv) + " and the head size positive");
  }
  if (shape.queryTile <= 0) throw Error("attention: the query tile must be positive");
}

void groupHeads(__nv_bfloat16* out, const float* inp, int64_t T, int64_t heads, int64_t group, int64_t D,
                cudaStream_t stream) {
  group_heads_kernel<<<blocksFor(T * heads * D, kThreads), kThreads, 0, stream>>>(out, inp, T, heads, group, D);
  checkLaunch("attention (group heads)");
}

void ungroupHeads(float* out, const float* tile, int64_t tileStride, int64_t t0, int64_t nq, int64_t heads,
                  int64_t group, int64_t D, cudaStream_t stream) {
  ungroup_heads_kernel<<<blocksFor(nq * heads * D, kThreads), kThreads, 0, stream>>>(out, tile, tileStride, t0, nq,
                                                                                     heads, group, D);
  checkLaunch("attention (ungroup heads)");
}

}  // namespace

int64_t attentionQueryTile(int64_t T, int64_t nHead) {
  // score buffers (two fp32, two bf16 per element) of about 256 MiB, tiles of 64..1024 positions
  const int64_t budget = (int64_t{256} << 20) / (12 * std::max<int64_t>(T, 1) * nHead);
  const int64_t tile = std::min<int64_t>(1024, std::max<int64_t>(64, budget / 16 * 16));
  return std::min(tile, std::max<int64_t>(T, 1));
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* seqStart,
                       const int32_t* hostSeqStart, const AttentionShape& shape, const AttentionWorkspace& w,
                       cublasHandle_t cublas, cudaStream_t stream) {
  checkShape(shape);
  const int64_t T = shape.T, H = shape.nHead, Hkv = shape.nHeadKv, D = shape.D, Bq = shape.queryTile;
  const int64_t group = H / Hkv;
  if (T == 0) return;
  groupHeads(w.q, q, T, H, group, D, stream);
  groupHeads(w.k, k, T, Hkv, 1, D, stream);
  groupHeads(w.v, v, T, Hkv, 1, D, stream);
  const int64_t rowStride = Bq * group * T;  // per kv head in the score buffers
  for (int64_t t0 = 0; t0 < T; t0 += Bq) {
    const int64_t nq = std::min(Bq, T - t0), k0 = hostSeqStart[t0], Lk = t0 + nq - k0, M = nq * group;
    // scores (M, Lk) = scale · Q_tile (M, D) · K[k0 : k0 + Lk]ᵀ, per kv head
    gemm_bf16_batched(cublas, false, true, M, Lk, D, shape.scale, w.q + t0 * group * D, D, T * group * D,
                      w.k + k0 * D, D, T * D, 0.0f, w.scores, Lk, rowStride, Hkv);
    softmax_forward_kernel<<<dim3(static_cast<unsigned>(M), static_cast<unsigned>(Hkv)), kRowThreads, 0, stream>>>(
        w.probs, lse, w.scores, seqStart, rowStride, t0, k0, Lk, T, group);
    checkLaunch("attention_forward (softmax)");
    // tileOut (M, D) = P (M, Lk) · V[k0 : k0 + Lk] (Lk, D)
    gemm_bf16_batched(cublas, false, false, M, D, Lk, 1.0f, w.probs, Lk, rowStride, w.v + k0 * D, D, T * D, 0.0f,
                      w.tileOut, D, Bq * group * D, Hkv);
    ungroupHeads(out, w.tileOut, Bq * group * D, t0, nq, H, group, D, stream);
  }
}

void attention_backward(float* dq, float* dk, float* dv, float* rowDots, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse, const int32_t* seqStart,
                        const int32_t* hostSeqStart, const AttentionShape& shape, const AttentionWorkspace& w,
                        cublasHandle_t cublas, cudaStream_t stream) {
  checkShape(shape);
  const int64_t T = shape.T, H = shape.nHead, Hkv = shape.nHeadKv, D = shape.D, Bq = shape.queryTile;
  const int64_t group = H / Hkv;
  if (T == 0) return;
  attention_row_dots_kernel<<<blocksFor(T * H, kWarps), kWarps * 32, 0, stream>>>(rowDots, dout, out, T, H, D);
  checkLaunch("attention_backward (row dots)");
  groupHeads(w.q, q, T, H, group, D, stream);
  groupHeads(w.dout, dout, T, H, group, D, stream);
  groupHeads(w.k, k, T, Hkv, 1, D, stream);
  groupHeads(w.v, v, T, Hkv, 1, D, stream);
  check(cudaMemsetAsync(w.dkAcc, 0, sizeof(float) * Hkv * T * D, stream), "cudaMemsetAsync (attention dK)");
  check(cudaMemsetAsync(w.dvAcc, 0, sizeof(float) * Hkv * T * D, stream), "cudaMemsetAsync (attention dV)");
  const int64_t rowStride = Bq * group * T;
  for (int64_t t0 = 0; t0 < T; t0 += Bq) {
    const int64_t nq = std::min(Bq, T - t0), k0 = hostSeqStart[t0], Lk = t0 + nq - k0, M = nq * group;
    const __nv_bfloat16* qTile = w.q + t0 * group * D;     // (M, D) per kv head
    const __nv_bfloat16* doTile = w.dout + t0 * group * D;  // (M, D) per kv head
    gemm_bf16_batched(cublas, false, true, M, Lk, D, shape.scale, qTile, D, T * group * D, w.k + k0 * D, D, T * D, 0.0f,
                      w.scores, Lk, rowStride, Hkv);
    // dP (M, Lk) = dO_tile (M, D) · V[k0 : k0 + Lk]ᵀ
    gemm_bf16_batched(cublas, false, true, M, Lk, D, 1.0f, doTile, D, T * group * D, w.v + k0 * D, D, T * D, 0.0f,
                      w.dscores, Lk, rowStride, Hkv);
    softmax_backward_kernel<<<dim3(static_cast<unsigned>(M), static_cast<unsigned>(Hkv)), kRowThreads, 0, stream>>>(
        w.probs, w.dprobs, w.scores, w.dscores, lse, rowDots, seqStart, rowStride, t0, k0, Lk, T, group, shape.scale);
    checkLaunch("attention_backward (softmax)");
    // dQ_tile (M, D) = dS (M, Lk) · K[k0 : k0 + Lk] (Lk, D); each query row is written once
    gemm_bf16_batched(cublas, false, false, M, D, Lk, 1.0f, w.dprobs, Lk, rowStride, w.k + k0 * D, D, T * D, 0.0f,
                      w.tileOut, D, Bq * group * D, Hkv);
    ungroupHeads(dq, w.tileOut, Bq * group * D, t0, nq, H, group, D, stream);
    // dK[k0 : k0 + Lk] += dSᵀ (Lk, M) · Q_tile (M, D); dV[k0 : k0 + Lk] += Pᵀ (Lk, M) · dO_tile (M, D)
    gemm_bf16_batched(cublas, true, false, Lk, D, M, 1.0f, w.dprobs, Lk, rowStride, qTile, D, T * group * D, 1.0f,
                      w.dkAcc + k0 * D, D, T * D, Hkv);
    gemm_bf16_batched(cublas, true, false, Lk, D, M, 1.0f, w.probs, Lk, rowStride, doTile, D, T * group * D, 1.0f,
                      w.dvAcc + k0 * D, D, T * D, Hkv);
  }
  ungroupHeads(dk, w.dkAcc, T * D, 0, T, Hkv, 1, D, stream);
  ungroupHeads(dv, w.dvAcc, T * D, 0, T, Hkv, 1, D, stream);
}

}  // namespace thinktune::cuda
