// Rotary position embedding over a (cos, sin) table built on the host by kernels::rope_cache, so the
// angles (llama3 frequency factors included) are the CPU engine's to the bit. The table is indexed by
// position within the sequence: built once for every position a row can hold, each row then only
// uploads its positions. Backward rotates by −θ.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

constexpr int kThreads = 256;

// one thread per rotated pair: x (T, nHeads, D) in place and, unless null, in bf16 as xBf16; table
// (positions, D), positions (T)
__global__ void rope_kernel(float* x, __nv_bfloat16* xBf16, const float* table, const int32_t* positions, int64_t T,
                            int64_t nHeads, int64_t D, bool neox, float sinSign) {
  const int64_t pairs = D / 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= T * nHeads * pairs) return;
  const int64_t pair = i % pairs, head = (i / pairs) % nHeads, t = i / (pairs * nHeads);
  float* h = x + (t * nHeads + head) * D;  // (D)
  const int64_t first = neox ? pair : 2 * pair;
  const int64_t second = neox ? pair + D / 2 : 2 * pair + 1;
  const float* angles = table + static_cast<int64_t>(positions[t]) * D;
  const float cosTheta = angles[2 * pair];
  const float sinTheta = angles[2 * pair + 1] * sinSign;
  const float x0 = h[first], x1 = h[second];
  const float y0 = x0 * cosTheta - x1 * sinTheta, y1 = x0 * sinTheta + x1 * cosTheta;
  h[first] = y0;
  h[second] = y1;
  if (xBf16) {
    __nv_bfloat16* b = xBf16 + (t * nHeads + head) * D;
    b[first] = __float2bfloat16(y0);
    b[second] = __float2bfloat16(y1);
  }
}

void rotate(float* x, __nv_bfloat16* xBf16, const float* table, const int32_t* positions, int64_t T, int64_t nHeads,
            int64_t D, bool neox, float sinSign, cudaStream_t stream, const char* name) {
  const int64_t total = T * nHeads * (D / 2);
  if (total == 0) return;
  rope_kernel<<<blocksFor(total, kThreads), kThreads, 0, stream>>>(x, xBf16, table, positions, T, nHeads, D, neox, sinSign);
  checkLaunch(name);
}

}  // namespace

void rope_forward(float* x, __nv_bfloat16* xBf16, const float* table, const int32_t* positions, int64_t T,
                  int64_t nHeads, int64_t D, bool neox, cudaStream_t stream) {
  rotate(x, xBf16, table, positions, T, nHeads, D, neox, 1.0f, stream, "rope_forward");
}

void rope_backward(float* dx, __nv_bfloat16* dxBf16, const float* table, const int32_t* positions, int64_t T,
                   int64_t nHeads, int64_t D, bool neox, cudaStream_t stream) {
  rotate(dx, dxBf16, table, positions, T, nHeads, D, neox, -1.0f, stream, "rope_backward");
}

}  // namespace thinktune::cuda
