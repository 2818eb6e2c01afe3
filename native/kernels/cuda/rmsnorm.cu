// RMSNorm forward and backward, one block per row (kernels/cpu/rmsnorm.cpp's formulas).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_forward_kernel(float* out, __nv_bfloat16* outBf16, float* rstd, const float* inp,
                                       const float* weight, int64_t C, float eps) {
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;  // (C)
  float sumSquares = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sumSquares += x[c] * x[c];
  sumSquares = blockSum(sumSquares);
  const float scale = 1.0f / sqrtf(sumSquares / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[t] = scale;
  float* y = out + t * C;  // (C)
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float value = (x[c] * scale) * weight[c];
    y[c] = value;
    if (outBf16) outBf16[t * C + c] = __float2bfloat16(value);
  }
}

// dx_c += r·w_c·dy_c − x_c·r³/C·Σ_j w_j·dy_j·x_j
__global__ void rmsnorm_backward_kernel(float* dinp, __nv_bfloat16* dinpBf16, const float* dout, const float* inp,
                                        const float* weight, const float* rstd, int64_t C) {
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;    // (C)
  const float* dy = dout + t * C;  // (C)
  float* dx = dinp + t * C;        // (C)
  const float r = rstd[t];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += weight[c] * dy[c] * x[c];
  dot = blockSum(dot);
  const float coefficient = dot * r * r * r / static_cast<float>(C);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float value = dx[c] + (r * weight[c] * dy[c] - x[c] * coefficient);
    dx[c] = value;
    if (dinpBf16) dinpBf16[t * C + c] = __float2bfloat16(value);
  }
}

}  // namespace

void rmsnorm_forward(float* out, __nv_bfloat16* outBf16, float* rstd, const float* inp, const float* weight, int64_t T,
                     int64_t C, float eps, cudaStream_t stream) {
  if (T == 0) return;
  rmsnorm_forward_kernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(out, outBf16, rstd, inp, weight, C, eps);
  checkLaunch("rmsnorm_forward");
}

void rmsnorm_backward(float* dinp, __nv_bfloat16* dinpBf16, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t T, int64_t C, cudaStream_t stream) {
  if (T == 0) return;
  rmsnorm_backward_kernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(dinp, dinpBf16, dout, inp, weight, rstd, C);
  checkLaunch("rmsnorm_backward");
}

}  // namespace thinktune::cuda
