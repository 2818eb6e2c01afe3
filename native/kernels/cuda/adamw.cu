// The optimizer on the GPU: the gradient's sum of squares (for the global norm) and AdamW with
// decoupled weight decay in kernels::adamw_update's order.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void sum_squares_kernel(double* sumSquares, const float* g, int64_t n) {
  double local = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    local += static_cast<double>(g[i]) * g[i];
  }
  for (int offset = 16; offset > 0; offset >>= 1) local += __shfl_xor_sync(0xffffffffu, local, offset);
  __shared__ double partial[kThreads / 32];
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = local;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
    atomicAdd(sumSquares, total);
  }
}

__global__ void adamw_kernel(float* params, float* m, float* v, const float* grads, int64_t n, AdamWStep h) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float decay = 1.0f - h.lr * h.weightDecay;
  const float g = grads[i] * h.gradScale;
  const float mi = h.beta1 * m[i] + (1.0f - h.beta1) * g;
  const float vi = h.beta2 * v[i] + (1.0f - h.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  const float denominator = sqrtf(vi) / h.sqrtCorrection2 + h.eps;
  params[i] = params[i] * decay - h.stepSize * mi / denominator;
}

}  // namespace

void sum_squares(double* sumSquares, const float* g, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = blocksFor(n, kThreads) < 1024u ? blocksFor(n, kThreads) : 1024u;
  sum_squares_kernel<<<blocks, kThreads, 0, stream>>>(sumSquares, g, n);
  checkLaunch("sum_squares");
}

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t n, const AdamWStep& hyper,
                  cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(params, m, v, grads, n, hyper);
  checkLaunch("adamw_update");
}

}  // namespace thinktune::cuda
