// The loss head's cross-entropy over vocabulary chunks (kernels/cpu/cross_entropy.cpp): a running
// max and sum per position, so no (positions × vocabulary) array ever exists. One block per position.
// Training takes one pass over the vocabulary: each chunk's exp(z − m)·W is added to the input gradient
// as it goes (rows rescaled when their max moves, as in flash attention's online softmax), and the end
// divides by the sum and subtracts the target's row: softmax·W − W[target].
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void cross_entropy_begin_kernel(float* runMax, float* runSum, float* targetLogit, int64_t N) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  runMax[n] = -INFINITY;
  runSum[n] = 0.0f;
  targetLogit[n] = __int_as_float(0x7fc00000);
}

// With rescale and dlogits (training), also the chunk's share of the gradient in one pass over the
// vocabulary: dlogits = exp(z − m) against the new running max m, and rescale = exp(m_old − m) for the
// gradient summed over the earlier chunks (cross_entropy_rescale_rows); the sum S divides it at the end.
__global__ void cross_entropy_accumulate_kernel(float* runMax, float* runSum, float* targetLogit, float* rescale,
                                                __nv_bfloat16* dlogits, const float* logits, const int32_t* targets,
                                                int64_t chunk, int64_t vocab0) {
  const int64_t n = blockIdx.x;
  const float* row = logits + n * chunk;  // (chunk)
  float chunkMax = -INFINITY;
  for (int64_t v = threadIdx.x; v < chunk; v += blockDim.x) chunkMax = fmaxf(chunkMax, row[v]);
  chunkMax = blockMax(chunkMax);
  const float newMax = fmaxf(chunkMax, runMax[n]);
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < chunk; v += blockDim.x) {
    const float e = expf(row[v] - newMax);
    sum += e;
    if (dlogits) dlogits[n * chunk + v] = __float2bfloat16(e);
  }
  sum = blockSum(sum);
  if (threadIdx.x == 0) {
    const float factor = expf(runMax[n] - newMax);
    if (rescale) rescale[n] = factor;
    runSum[n] = runSum[n] * factor + sum;
    runMax[n] = newMax;
    const int64_t target = targets[n] - vocab0;
    if (target >= 0 && target < chunk) targetLogit[n] = row[target];
  }
}

// x (N, C) rows times factor (N); rows whose factor is 1 (the running max did not move) are left alone
__global__ void scale_rows_kernel(float* x, const float* factor, int64_t C) {
  const float f = factor[blockIdx.x];
  if (f == 1.0f) return;
  float* row = x + static_cast<int64_t>(blockIdx.x) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) row[c] *= f;
}

// dInput row positions[n] = weighted[n] / runSum[n] − targetRows[n]: softmax·W − W[target]
__global__ void cross_entropy_input_gradient_kernel(float* dInput, const float* weighted, const float* runSum,
                                                    const float* targetRows, const int32_t* positions, int64_t C) {
  const int64_t n = blockIdx.x;
  const float inverse = 1.0f / runSum[n];
  float* out = dInput + static_cast<int64_t>(positions[n]) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    out[c] = weighted[n * C + c] * inverse - targetRows[n * C + c];
  }
}

__global__ void cross_entropy_finish_kernel(float* lse, double* lossSum, const float* runMax, const float* runSum,
                                            const float* targetLogit, int64_t N) {
  double local = 0.0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    lse[n] = runMax[n] + logf(runSum[n]);
    local += static_cast<double>(lse[n]) - targetLogit[n];
  }
  for (int offset = 16; offset > 0; offset >>= 1) local += __shfl_xor_sync(0xffffffffu, local, offset);
  __shared__ double partial[kThreads / 32];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    *lossSum += total;
  }
}

}  // namespace

void cross_entropy_begin(float* runMax, float* runSum, float* targetLogit, int64_t N, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_begin_kernel<<<blocksFor(N, kThreads), kThreads, 0, stream>>>(runMax, runSum, targetLogit, N);
  checkLaunch("cross_entropy_begin");
}

void cross_entropy_accumulate(float* runMax, float* runSum, float* targetLogit, const float* logits,
                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0, float* rescale,
                              __nv_bfloat16* dlogits, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_accumulate_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
      runMax, runSum, targetLogit, rescale, dlogits, logits, targets, chunk, vocab0);
  checkLaunch("cross_entropy_accumulate");
}

void cross_entropy_rescale_rows(float* weighted, const float* rescale, int64_t N, int64_t C, cudaStream_t stream) {
  if (N * C == 0) return;
  scale_rows_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(weighted, rescale, C);
  checkLaunch("cross_entropy_rescale_rows");
}

void cross_entropy_input_gradient(float* dInput, const float* weighted, const float* runSum, const float* targetRows,
                                  const int32_t* positions, int64_t N, int64_t C, cudaStream_t stream) {
  if (N * C == 0) return;
  cross_entropy_input_gradient_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
      dInput, weighted, runSum, targetRows, positions, C);
  checkLaunch("cross_entropy_input_gradient");
}

void cross_entropy_finish(float* lse, double* lossSum, const float* runMax, const float* runSum,
                          const float* targetLogit, int64_t N, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_finish_kernel<<<1, kThreads, 0, stream>>>(lse, lossSum, runMax, runSum, targetLogit, N);
  checkLaunch("cross_entropy_finish");
}

}  // namespace thinktune::cuda
