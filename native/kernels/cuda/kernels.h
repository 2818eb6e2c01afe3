// Launchers of the CUDA kernels, llm.c style: (outputs, inputs, sizes, stream), each checks its
// launch and throws thinktune::Error on failure. Activations are fp32 (T rows, row-major), frozen
// base weights are dequantized to bf16 just before their matrix product, LoRA runs in fp32.
// Every function mirrors the CPU kernel of the same name in kernels/cpu/ (same formulas, same order
// of the packed-sequence bookkeeping), which the GPU tests hold it to.
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/adamw_step.h"

namespace thinktune::cuda {

// ---- dequantize.cu: GGUF block formats → bf16 / f32 (layouts as native/quant/blocks.h) ----

// out (nRows, rowLength) = rows [row0, row0 + nRows) of a matrix of ggml `type` stored row after row
void dequantize_rows_bf16(__nv_bfloat16* out, const uint8_t* src, uint32_t type, int64_t rowBytes,
                          int64_t rowLength, int64_t row0, int64_t nRows, cudaStream_t stream);
// out (n, rowLength) = rows[i] of the matrix, for i < n (token embedding lookup)
void dequantize_gather_f32(float* out, const uint8_t* src, uint32_t type, int64_t rowBytes, int64_t rowLength,
                           const int32_t* rows, int64_t n, cudaStream_t stream);
// *firstRow = min(*firstRow, the first row holding a NaN or infinite value); caller sets it to ~0
void find_nonfinite_row(unsigned long long* firstRow, const uint8_t* src, uint32_t type, int64_t rowBytes,
                        int64_t rowLength, int64_t nRows, cudaStream_t stream);
// whether dequantize_* know `type`
bool dequantize_supports(uint32_t type);

// ---- matmul.cu: row-major products through cuBLAS ----

// C (M, N) = alpha·op(A)·op(B) + beta·C, row-major with leading dimensions; A and B bf16, C fp32,
// fp32 accumulation. op(A) is (M, K): A is stored (M, K), or (K, M) when transA.
void gemm_bf16(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const __nv_bfloat16* A, int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta, float* C,
               int64_t ldc);
// the same with C in bf16: alpha·op(A)·op(B) + beta·C summed in fp32 and rounded once
void gemm_bf16_out(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const __nv_bfloat16* A, int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta,
                   __nv_bfloat16* C, int64_t ldc);
// the same over `batch` matrices at element strides strideA, strideB, strideC
void gemm_bf16_batched(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                       const __nv_bfloat16* A, int64_t lda, int64_t strideA, const __nv_bfloat16* B, int64_t ldb,
                       int64_t strideB, float beta, float* C, int64_t ldc, int64_t strideC, int64_t batch);
// the same with fp32 operands (LoRA A and B are fp32 master weights), multiplied on the TF32 tensor cores
void gemm_f32(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// ---- elementwise.cu ----

void add_inplace(float* a, const float* b, int64_t n, cudaStream_t stream);          // a (n) += b (n)
void to_bf16(__nv_bfloat16* out, const float* inp, int64_t n, cudaStream_t stream);  // out (n) = inp (n)
void to_f32(float* out, const __nv_bfloat16* inp, int64_t n, cudaStream_t stream);   // out (n) = inp (n)
void add_bias(float* out, const float* bias, int64_t T, int64_t N, cudaStream_t stream);  // out (T, N) += bias (N)
void add_bias(__nv_bfloat16* out, const float* bias, int64_t T, int64_t N, cudaStream_t stream);
// out (n, C) = inp[rows[i]] (C) for i < n
void gather_rows(float* out, const float* inp, const int32_t* rows, int64_t n, int64_t C, cudaStream_t stream);
// LoRA dropout with the CPU engine's counter-based mask (Lora::keeps, common/splitmix.h): element i
// survives when dropoutKeeps(stepKey, site, first + i, dropout), stepKey = dropoutStepKey(seed, step).
struct DropoutMask {
  uint64_t stepKey;
  uint64_t site;  // layer · 7 + projection
  float dropout;
  uint64_t first;  // index of element 0 in the whole row's input (a feed-forward chunk starts past 0)
};
// out (n) = keep ? inp·1/(1−p) : 0
void dropout_forward(float* out, const float* inp, int64_t n, DropoutMask mask, cudaStream_t stream);
// dinp (n) += keep ? dout·1/(1−p) : 0
void dropout_backward(float* dinp, const float* dout, int64_t n, DropoutMask mask, cudaStream_t stream);

// ---- rmsnorm.cu ----

// out (T, C) = inp·rstd·weight, and in bf16 as outBf16 unless it is null; rstd (T)
void rmsnorm_forward(float* out, __nv_bfloat16* outBf16, float* rstd, const float* inp, const float* weight, int64_t T,
                     int64_t C, float eps, cudaStream_t stream);
// dinp (T, C) += the input gradient, the sum also written in bf16 as dinpBf16 unless it is null
void rmsnorm_backward(float* dinp, __nv_bfloat16* dinpBf16, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t T, int64_t C, cudaStream_t stream);

// ---- rope.cu ----

// x (T, nHeads, D) rotated in place, position t by row positions[t] of table (·, D) = (cos, sin) pairs
// (kernels::rope_cache of positions 0, 1, …), and written in bf16 as xBf16 unless it is null; neox: pairs
// (i, i + D/2) as qwen2, else adjacent pairs as llama
void rope_forward(float* x, __nv_bfloat16* xBf16, const float* table, const int32_t* positions, int64_t T,
                  int64_t nHeads, int64_t D, bool neox, cudaStream_t stream);
void rope_backward(float* dx, __nv_bfloat16* dxBf16, const float* table, const int32_t* positions, int64_t T,
                   int64_t nHeads, int64_t D, bool neox, cudaStream_t stream);

// ---- swiglu.cu ----

// h (n) = silu(g)·u from the bf16 g, u, in fp32 as h and in bf16 as hBf16 (either may be null)
void swiglu_forward(float* h, __nv_bfloat16* hBf16, const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n,
                    cudaStream_t stream);
// dg, du (n) from dh and the bf16 g, u, also in bf16 as dgBf16, duBf16 (the products' inputs); dg may alias dh
void swiglu_backward(float* dg, float* du, __nv_bfloat16* dgBf16, __nv_bfloat16* duBf16, const float* dh,
                     const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n, cudaStream_t stream);

// ---- attention.cu: causal grouped-query attention inside packed sequences, no (T, T) matrix ----

struct AttentionShape {
  int64_t T, nHead, nHeadKv, D;
  float scale;
  int64_t queryTile;  // Bq: query positions per tile (attentionQueryTile)
};
// Buffers of the tiled attention (group = nHead / nHeadKv, Bq = queryTile, T = the planned maximum).
struct AttentionWorkspace {
  __nv_bfloat16* q = nullptr;        // (nHeadKv, T, group, D)
  __nv_bfloat16* k = nullptr;        // (nHeadKv, T, D)
  __nv_bfloat16* v = nullptr;        // (nHeadKv, T, D)
  __nv_bfloat16* dout = nullptr;     // (nHeadKv, T, group, D)
  float* scores = nullptr;           // (nHeadKv, Bq·group, T)
  float* dscores = nullptr;          // (nHeadKv, Bq·group, T) dP
  __nv_bfloat16* probs = nullptr;    // (nHeadKv, Bq·group, T)
  __nv_bfloat16* dprobs = nullptr;   // (nHeadKv, Bq·group, T) dS
  float* tileOut = nullptr;          // (nHeadKv, Bq·group, D)
  float* dkAcc = nullptr;            // (nHeadKv, T, D)
  float* dvAcc = nullptr;            // (nHeadKv, T, D)
};
// query positions per tile for rows of up to T positions: score buffers of about 256 MiB
int64_t attentionQueryTile(int64_t T, int64_t nHead);

// out (T, nHead, D), lse (nHead, T); q (T, nHead, D), k, v (T, nHeadKv, D); key j is visible to query i
// when seqStart[i] <= j <= i. hostSeqStart is the same array in host memory (tile bounds).
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, const int32_t* seqStart,
                       const int32_t* hostSeqStart, const AttentionShape& shape, const AttentionWorkspace& workspace,
                       cublasHandle_t cublas, cudaStream_t stream);
// dq (T, nHead, D), dk, dv (T, nHeadKv, D) assigned; rowDots (nHead, T) workspace
void attention_backward(float* dq, float* dk, float* dv, float* rowDots, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse, const int32_t* seqStart,
                        const int32_t* hostSeqStart, const AttentionShape& shape, const AttentionWorkspace& workspace,
                        cublasHandle_t cublas, cudaStream_t stream);

// ---- cross_entropy.cu: lm_head logits a vocabulary chunk at a time (online log-sum-exp) ----

void cross_entropy_begin(float* runMax, float* runSum, float* targetLogit, int64_t N, cudaStream_t stream);
// logits (N, chunk) for ids [vocab0, vocab0 + chunk); with rescale (N) and dlogits (N, chunk), also
// rescale = exp(m_old − m_new) and dlogits = exp(logits − m_new) as bf16 (both null: the loss alone)
void cross_entropy_accumulate(float* runMax, float* runSum, float* targetLogit, const float* logits,
                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0, float* rescale,
                              __nv_bfloat16* dlogits, cudaStream_t stream);
// weighted (N, C) rows *= rescale before the next chunk's dlogits·W is added
void cross_entropy_rescale_rows(float* weighted, const float* rescale, int64_t N, int64_t C, cudaStream_t stream);
// lse (N) = runMax + log(runSum); *lossSum += Σ (lse − targetLogit)
void cross_entropy_finish(float* lse, double* lossSum, const float* runMax, const float* runSum,
                          const float* targetLogit, int64_t N, cudaStream_t stream);
// dInput row positions[n] (of (T, C)) = weighted[n] / runSum[n] − targetRows[n], targetRows (N, C) the
// output matrix's rows of the targets: the loss's gradient with respect to the lm_head's input
void cross_entropy_input_gradient(float* dInput, const float* weighted, const float* runSum, const float* targetRows,
                                  const int32_t* positions, int64_t N, int64_t C, cudaStream_t stream);

// ---- adamw.cu ----

// *sumSquares += Σ g² (fp64 accumulation)
void sum_squares(double* sumSquares, const float* g, int64_t n, cudaStream_t stream);
// params, m, v (n) updated from grads (n) exactly as kernels::adamw_update
void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWStep& hyper,
                  cudaStream_t stream);

}  // namespace thinktune::cuda
