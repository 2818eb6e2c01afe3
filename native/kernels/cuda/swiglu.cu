// SwiGLU: h = silu(g)·u and its gradients (kernels/cpu/swiglu.cpp). The engine keeps g and u in bf16
// between the forward and the backward, so the forward rounds them first and computes h from the
// rounded values: a kept layer and a recomputed one see the same numbers.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

__device__ inline float toFloat(float x) { return x; }
__device__ inline float toFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class Input>
__global__ void swiglu_forward_kernel(float* h, __nv_bfloat16* hBf16, __nv_bfloat16* gBf16, __nv_bfloat16* uBf16,
                                      const Input* g, const Input* u, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __nv_bfloat16 gRounded = __float2bfloat16(toFloat(g[i])), uRounded = __float2bfloat16(toFloat(u[i]));
  if (gBf16) gBf16[i] = gRounded;
  if (uBf16) uBf16[i] = uRounded;
  const float gate = __bfloat162float(gRounded), up = __bfloat162float(uRounded);
  const float value = gate / (1.0f + expf(-gate)) * up;
  if (h) h[i] = value;
  if (hBf16) hBf16[i] = __float2bfloat16(value);
}

__global__ void swiglu_backward_kernel(float* dg, float* du, __nv_bfloat16* dgBf16, __nv_bfloat16* duBf16,
                                       const float* dh, const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gate = __bfloat162float(g[i]), up = __bfloat162float(u[i]), grad = dh[i];  // dg may alias dh
  const float sigmoid = 1.0f / (1.0f + expf(-gate));
  const float dUp = grad * gate * sigmoid, dGate = grad * up * sigmoid * (1.0f + gate * (1.0f - sigmoid));
  du[i] = dUp;
  dg[i] = dGate;
  duBf16[i] = __float2bfloat16(dUp);
  dgBf16[i] = __float2bfloat16(dGate);
}

}  // namespace

void swiglu_forward(float* h, __nv_bfloat16* hBf16, __nv_bfloat16* gBf16, __nv_bfloat16* uBf16, const float* g,
                    const float* u, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<float><<<blocksFor(n, kThreads), kThreads, 0, stream>>>(h, hBf16, gBf16, uBf16, g, u, n);
  checkLaunch("swiglu_forward");
}

void swiglu_forward(float* h, __nv_bfloat16* hBf16, const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<__nv_bfloat16>
      <<<blocksFor(n, kThreads), kThreads, 0, stream>>>(h, hBf16, nullptr, nullptr, g, u, n);
  checkLaunch("swiglu_forward");
}

void swiglu_backward(float* dg, float* du, __nv_bfloat16* dgBf16, __nv_bfloat16* duBf16, const float* dh,
                     const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(dg, du, dgBf16, duBf16, dh, g, u, n);
  checkLaunch("swiglu_backward");
}

}  // namespace thinktune::cuda
