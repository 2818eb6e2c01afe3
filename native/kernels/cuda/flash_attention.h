// The fused (FlashAttention-2 style) attention of flash_attention.cu: causal, grouped-query, inside
// packed sequences (key j is visible to query i when seqStart[i] <= j <= i), bf16 operands on the
// tensor cores, fp32 softmax statistics and gradients. Head dimensions 64 and 128.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace thinktune::cuda {

struct FlashAttentionArgs {
  __nv_bfloat16* out = nullptr;      // (T, nHead, D) written by the forward, read by the backward
  float* lse = nullptr;              // (nHead, T) natural-log log-sum-exp of each query's scores
  const __nv_bfloat16* q = nullptr;  // (T, nHead, D)
  const __nv_bfloat16* k = nullptr;  // (T, nHeadKv, D)
  const __nv_bfloat16* v = nullptr;  // (T, nHeadKv, D)
  const int32_t* seqStart = nullptr;  // (T) first position of each position's sequence
  int T = 0, nHead = 0, nHeadKv = 0, D = 0;
  float scale = 1.0f;                // applied to q·k
  // forward: forwardRowTiles × 16 query rows per warp; backward: 16 keys per warp. 8 warps and two
  // row tiles forward measured fastest on an H200 (2026-12-01: 7.48 ms against 7.90 with one row tile
  // at 16384 tokens, 28/4 heads); flash_attention_forward/backward list the builds.
  int forwardWarps = 8, forwardRowTiles = 2, backwardWarps = 8;
  // head dimension 128 on a compute capability 9.0 GPU with an sm_90a build: the kernels on warpgroup
  // MMAs (flash_forward/backward_hopper_kernel) instead of the mma.sync ones. Their forward measured
  // fastest with 64-key tiles, two blocks an SM (H200, 2026-12-01, 16384 tokens, 28/4 heads: 4.87 ms
  // against 5.76 with 128-key tiles, one block an SM, and 7.50 for the mma.sync kernel)
  bool hopperKernels = true;
};

struct FlashAttentionGradients {
  const __nv_bfloat16* dout = nullptr;  // (T, nHead, D)
  float* dq = nullptr;                  // (T, nHead, D) assigned
  float* dk = nullptr;                  // (T, nHeadKv, D) assigned
  float* dv = nullptr;                  // (T, nHeadKv, D) assigned
  float* rowDots = nullptr;             // (nHead, T) workspace: Σ dO·O per query
};

// whether the fused kernels handle this head shape
bool flashAttentionSupports(int64_t headDim, int64_t nHead, int64_t nHeadKv);

// out, lse from q, k, v
void flash_attention_forward(const FlashAttentionArgs& args, cudaStream_t stream);
// dq, dk, dv from dout and the forward's q, k, v, out, lse
void flash_attention_backward(const FlashAttentionArgs& args, const FlashAttentionGradients& gradients,
                              cudaStream_t stream);

}  // namespace thinktune::cuda
