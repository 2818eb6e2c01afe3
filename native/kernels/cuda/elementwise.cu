// Small elementwise and row-copy kernels the engine strings the layers together with.
#include "common/splitmix.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

// Lora::keeps, through the same hash
__device__ inline bool keeps(const DropoutMask& mask, uint64_t index) {
  return dropoutKeeps(mask.stepKey, mask.site, mask.first + index, mask.dropout);
}

__global__ void add_inplace_kernel(float* a, const float* b, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) a[i] += b[i];
}

__global__ void to_bf16_kernel(__nv_bfloat16* out, const float* inp, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16(inp[i]);
}

__global__ void to_f32_kernel(float* out, const __nv_bfloat16* inp, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(inp[i]);
}

template <class Output>
__global__ void add_bias_kernel(Output* out, const float* bias, int64_t T, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < T * N) out[i] = static_cast<float>(out[i]) + bias[i % N];
}

__global__ void gather_rows_kernel(float* out, const float* inp, const int32_t* rows, int64_t n, int64_t C) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * C) out[i] = inp[static_cast<int64_t>(rows[i / C]) * C + i % C];
}

__global__ void dropout_forward_kernel(float* out, const float* inp, int64_t n, DropoutMask mask, float keepScale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = keeps(mask, static_cast<uint64_t>(i)) ? inp[i] * keepScale : 0.0f;
}

__global__ void dropout_backward_kernel(float* dinp, const float* dout, int64_t n, DropoutMask mask, float keepScale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && keeps(mask, static_cast<uint64_t>(i))) dinp[i] += dout[i] * keepScale;
}

}  // namespace

void add_inplace(float* a, const float* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_inplace_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(a, b, n);
  checkLaunch("add_inplace");
}

void to_bf16(__nv_bfloat16* out, const float* inp, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  to_bf16_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(out, inp, n);
  checkLaunch("to_bf16");
}

void to_f32(float* out, const __nv_bfloat16* inp, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  to_f32_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(out, inp, n);
  checkLaunch("to_f32");
}

void add_bias(float* out, const float* bias, int64_t T, int64_t N, cudaStream_t stream) {
  if (T * N == 0) return;
  add_bias_kernel<<<blocksFor(T * N, kThreads), kThreads, 0, stream>>>(out, bias, T, N);
  checkLaunch("add_bias");
}

void add_bias(__nv_bfloat16* out, const float* bias, int64_t T, int64_t N, cudaStream_t stream) {
  if (T * N == 0) return;
  add_bias_kernel<<<blocksFor(T * N, kThreads), kThreads, 0, stream>>>(out, bias, T, N);
  checkLaunch("add_bias");
}

void gather_rows(float* out, const float* inp, const int32_t* rows, int64_t n, int64_t C, cudaStream_t stream) {
  if (n * C == 0) return;
  gather_rows_kernel<<<blocksFor(n * C, kThreads), kThreads, 0, stream>>>(out, inp, rows, n, C);
  checkLaunch("gather_rows");
}

void dropout_forward(float* out, const float* inp, int64_t n, DropoutMask mask, cudaStream_t stream) {
  if (n == 0) return;
  dropout_forward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(out, inp, n, mask,
                                                                          1.0f / (1.0f - mask.dropout));
  checkLaunch("dropout_forward");
}

void dropout_backward(float* dinp, const float* dout, int64_t n, DropoutMask mask, cudaStream_t stream) {
  if (n == 0) return;
  dropout_backward_kernel<<<blocksFor(n, kThreads), kThreads, 0, stream>>>(dinp, dout, n, mask,
                                                                           1.0f / (1.0f - mask.dropout));
  checkLaunch("dropout_backward");
}

}  // namespace thinktune::cuda
