// SwiGLU: h = silu(g)·u and its gradients (kernels/cpu/swiglu.cpp).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void swiglu_forward_kernel(float* h, const float* g, const float* u, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void swiglu_backward_kernel(float* dg, float* du, const float* dh, const float* g, const float* u,
                                       int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gate = g[i], up = u[i];  // read before writing: dg and du may alias g and u
  const float sigmoid = 1.0f / (1.0f + expf(-gate));
  du[i] = dh[i] * gate * sigmoid;
  dg[i] = dh[i] * up * sigmoid * (1.0f + gate * (1.0f - sigmoid));
}

}  // namespace

void swiglu_forward(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(h, g, u, n);
  checkLaunch("swiglu_forward");
}

void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(dg, du, dh, g, u, n);
  checkLaunch("swiglu_backward");
}

}  // namespace thinktune::cuda
