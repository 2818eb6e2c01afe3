// bf16 matrix products for the base-weight matmuls when the engine runs with precision "bf16": both
// operands are rounded to bfloat16 (nearest even) while packing and multiplied with AVX512-BF16's
// vdpbf16ps, which accumulates in fp32 at twice the rate of fp32 FMAs. Same blocking and threading
// as gemm in matmul.h. Opt-in: it trades about 2^-9 relative rounding per operand for speed.
#pragma once
#include <cstddef>
#include <cstdint>

namespace thinktune::kernels {

// Whether this build can run the bf16 kernels (compiled for a CPU with AVX512-BF16).
bool bf16MatmulAvailable();

// As gemm (matmul.h), operands rounded to bf16; `workspace` holds gemmWorkspaceFloats(threads) floats.
// Throws nothing; call only when bf16MatmulAvailable().
void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const float* a, ptrdiff_t rowStrideA,
               ptrdiff_t colStrideA, const float* b, ptrdiff_t rowStrideB, ptrdiff_t colStrideB, float* c,
               ptrdiff_t ldc, bool accumulate, float* workspace);

// out (T, N) [row stride ldOut] (+)= inp (T, K) · weight (N, K)ᵀ (+ bias (N)), in bf16
void matmul_forward_bf16(float* out, ptrdiff_t ldOut, const float* inp, const float* weight, const float* bias,
                         int64_t T, int64_t K, int64_t N, bool accumulate, float* workspace);

// dinp (T, K) (+)= scale · dout (T, N) [row stride ldDout] · weight (N, K), in bf16
void matmul_backward_input_bf16(float* dinp, const float* dout, ptrdiff_t ldDout, const float* weight, int64_t T,
                                int64_t K, int64_t N, float scale, bool accumulate, float* workspace);

}  // namespace thinktune::kernels
