// fp32 matrix products for the CPU engine: a cache-blocked, packed GEMM (BLIS loop order, an 8x32
// register-tiled micro-kernel written with GCC vector extensions so -march=native picks AVX-512 or
// AVX2+FMA), multi-threaded with OpenMP, and the three products a linear layer needs.
// Weights are stored as llama.cpp and PyTorch store them: W (out, in) row-major, y = x·Wᵀ.
#pragma once
#include <cstddef>
#include <cstdint>

namespace thinktune::kernels {

// Floats of workspace gemm needs when run with up to `maxThreads` OpenMP threads (any M, N, K).
size_t gemmWorkspaceFloats(int64_t maxThreads);

// C (M, N) = alpha·A·B + (accumulate ? C : 0), where A (M, K) and B (K, N) are read through
// arbitrary element strides: A(i, k) = a[i·rowStrideA + k·colStrideA], likewise B. C has row stride
// ldc. `workspace` holds gemmWorkspaceFloats(threads) floats and is 64-byte aligned.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* a, ptrdiff_t rowStrideA,
          ptrdiff_t colStrideA, const float* b, ptrdiff_t rowStrideB, ptrdiff_t colStrideB, float* c,
          ptrdiff_t ldc, bool accumulate, float* workspace);

// out (T, N, row stride ldOut) += bias (N) on every row.
void bias_forward(float* out, ptrdiff_t ldOut, const float* bias, int64_t T, int64_t N);

// out (T, N) [row stride ldOut] (+)= inp (T, K) · weight (N, K)ᵀ, plus bias (N) when given.
void matmul_forward(float* out, ptrdiff_t ldOut, const float* inp, const float* weight, const float* bias,
                    int64_t T, int64_t K, int64_t N, bool accumulate, float* workspace);

// dinp (T, K) (+)= scale · dout (T, N) [row stride ldDout] · weight (N, K)
void matmul_backward_input(float* dinp, const float* dout, ptrdiff_t ldDout, const float* weight, int64_t T,
                           int64_t K, int64_t N, float scale, bool accumulate, float* workspace);

// dweight (N, K) += scale · dout (T, N)ᵀ · inp (T, K)   (parameter gradients accumulate)
void matmul_backward_weight(float* dweight, const float* dout, const float* inp, int64_t T, int64_t K,
                            int64_t N, float scale, float* workspace);

}  // namespace thinktune::kernels
