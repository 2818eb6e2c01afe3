// Causal grouped-query attention over packed sequences, flash-attention style: it works on blocks of
// 64 queries (or keys) at a time, so no (T, T) matrix is stored; the forward keeps each query's
// log-sum-exp and the backward recomputes the probabilities. Query position i attends to keys j with
// seqStart[i] <= j <= i (a packed row never crosses a sequence boundary). Query head h reads key/value
// head h / (nHead / nHeadKv), as ggml broadcasts. The block products run on the packed GEMM (matmul.h).
#pragma once
#include <cstddef>
#include <cstdint>

namespace thinktune::kernels {

// Floats of workspace for rows of up to maxT positions with `threads` threads.
size_t attentionWorkspaceFloats(int64_t maxT, int64_t nHead, int threads);

// out (T, nHead, D), lse (nHead, T); q (T, nHead, D), k and v (T, nHeadKv, D); seqStart (T)
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* seqStart, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                       float scale, float* workspace);

// dq (T, nHead, D), dk and dv (T, nHeadKv, D) are assigned. seqEnd (T): one past the last position of
// the sequence holding each position.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const int32_t* seqStart,
                        const int32_t* seqEnd, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                        float scale, float* workspace);

}  // namespace thinktune::kernels
