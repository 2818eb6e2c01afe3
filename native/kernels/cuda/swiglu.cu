// SwiGLU: h = silu(g)·u and its gradients (kernels/cpu/swiglu.cpp). The gate and up products write g and
// u in bf16 (kept between the forward and the backward), so a kept layer and a recomputed one see the
// same numbers.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

// h = silu(g)·u in fp32 and/or bf16 (either output may be null)
__global__ void swiglu_forward_kernel(float* h, __nv_bfloat16* hBf16, const __nv_bfloat16* g, const __nv_bfloat16* u,
                                      int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float gate = __bfloat162float(g[i]), up = __bfloat162float(u[i]);
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

void swiglu_forward(float* h, __nv_bfloat16* hBf16, const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n,
                    cudaStream_t stream) {
  if (n == 0) return;
  swiglu_forward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(h, hBf16, g, u, n);
  checkLaunch("swiglu_forward");
}

void swiglu_backward(float* dg, float* du, __nv_bfloat16* dgBf16, __nv_bfloat16* duBf16, const float* dh,
                     const __nv_bfloat16* g, const __nv_bfloat16* u, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_backward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(dg, du, dgBf16, duBf16, dh, g, u, n);
  checkLaunch("swiglu_backward");
}

}  // namespace thinktune::cuda
