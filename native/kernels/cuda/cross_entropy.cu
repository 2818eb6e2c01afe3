// The loss head's cross-entropy over vocabulary chunks (kernels/cpu/cross_entropy.cpp): a running
// max and sum per position, so no (positions × vocabulary) array ever exists. One block per position.
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

__global__ void cross_entropy_accumulate_kernel(float* runMax, float* runSum, float* targetLogit, const float* logits,
                                                const int32_t* targets, int64_t chunk, int64_t vocab0) {
  const int64_t n = blockIdx.x;
  const float* row = logits + n * chunk;  // (chunk)
  float chunkMax = -INFINITY;
  for (int64_t v = threadIdx.x; v < chunk; v += blockDim.x) chunkMax = fmaxf(chunkMax, row[v]);
  chunkMax = blockMax(chunkMax);
  const float newMax = fmaxf(chunkMax, runMax[n]);
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < chunk; v += blockDim.x) sum += expf(row[v] - newMax);
  sum = blockSum(sum);
  if (threadIdx.x == 0) {
    runSum[n] = runSum[n] * expf(runMax[n] - newMax) + sum;
    runMax[n] = newMax;
    const int64_t target = targets[n] - vocab0;
    if (target >= 0 && target < chunk) targetLogit[n] = row[target];
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

__global__ void cross_entropy_backward_kernel(__nv_bfloat16* dlogits, const float* logits, const float* lse,
                                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0,
                                              float scale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * chunk) return;
  const int64_t n = i / chunk, v = i % chunk;
  float gradient = scale * expf(logits[i] - lse[n]);
  if (targets[n] - vocab0 == v) gradient -= scale;
  dlogits[i] = __float2bfloat16(gradient);
}

}  // namespace

void cross_entropy_begin(float* runMax, float* runSum, float* targetLogit, int64_t N, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_begin_kernel<<<blocksFor(N, kThreads), kThreads, 0, stream>>>(runMax, runSum, targetLogit, N);
  checkLaunch("cross_entropy_begin");
}

void cross_entropy_accumulate(float* runMax, float* runSum, float* targetLogit, const float* logits,
                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_accumulate_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(runMax, runSum, targetLogit,
                                                                                      logits, targets, chunk, vocab0);
  checkLaunch("cross_entropy_accumulate");
}

void cross_entropy_finish(float* lse, double* lossSum, const float* runMax, const float* runSum,
                          const float* targetLogit, int64_t N, cudaStream_t stream) {
  if (N == 0) return;
  cross_entropy_finish_kernel<<<1, kThreads, 0, stream>>>(lse, lossSum, runMax, runSum, targetLogit, N);
  checkLaunch("cross_entropy_finish");
}

void cross_entropy_backward(__nv_bfloat16* dlogits, const float* logits, const float* lse, const int32_t* targets,
                            int64_t N, int64_t chunk, int64_t vocab0, float scale, cudaStream_t stream) {
  if (N * chunk == 0) return;
  cross_entropy_backward_kernel<<<blocksFor(N * chunk, kThreads), kThreads, 0, stream>>>(dlogits, logits, lse, targets,
                                                                                         N, chunk, vocab0, scale);
  checkLaunch("cross_entropy_backward");
}

}  // namespace thinktune::cuda
