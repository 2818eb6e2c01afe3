#include "kernels/cpu/matmul.h"
#include "kernels/cpu/gemm_tile.h"
#include "kernels/cpu/threading.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace thinktune::kernels {

namespace {

// Register tile: MR rows of A times NR = 2 vectors of B, held in 2·MR vector accumulators that must
// stay in registers with room for the two B vectors and the broadcast A value. AVX-512 has 32
// registers of 16 floats (8 rows: 16 accumulators); AVX2 has 16 of 8 floats (6 rows: 12
// accumulators). An AVX-512 tile on AVX2 spills every accumulator and runs ~25x slower.
#if defined(__AVX512F__)
constexpr int64_t kVectorFloats = 16;
constexpr int64_t MR = 8;
#else
constexpr int64_t kVectorFloats = 8;
constexpr int64_t MR = 6;
#endif
constexpr int64_t NR = 2 * kVectorFloats;
// Cache blocks: a packed B panel KC×NR (16 or 32 KB) stays in L1 while a packed A block MC×KC
// (384 or 512 KB) streams from L2 past it.
constexpr int64_t KC = 256;
constexpr int64_t MC = 64 * MR;  // a whole number of MR-row panels

typedef float Vec __attribute__((vector_size(4 * kVectorFloats)));
typedef float VecUnaligned __attribute__((vector_size(4 * kVectorFloats), aligned(4)));
typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec16Unaligned __attribute__((vector_size(64), aligned(4)));

inline int64_t roundUp(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// One MR-row panel of A for k in [k0, k0+kc): layout (kc, MR), rows past M are zero.
void packPanelA(float* dst, const float* a, ptrdiff_t rowStride, ptrdiff_t colStride, int64_t i0, int64_t M,
                int64_t k0, int64_t kc) {
  const int64_t rows = std::min(MR, M - i0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a + (i0 + r) * rowStride + k0 * colStride;
    if (colStride == 1) {
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k * colStride];
    }
  }
  for (int64_t r = rows; r < MR; ++r)
    for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.0f;
}

// One NR-column panel of B for k in [k0, k0+kc): layout (kc, NR), columns past N are zero.
void packPanelB(float* dst, const float* b, ptrdiff_t rowStride, ptrdiff_t colStride, int64_t j0, int64_t N,
                int64_t k0, int64_t kc) {
  const int64_t cols = std::min(NR, N - j0);
  if (colStride == 1) {  // B rows contiguous (e.g. W in dX = dY·W): copy row pieces
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = b + (k0 + k) * rowStride + j0;
      float* out = dst + k * NR;
      std::memcpy(out, src, sizeof(float) * cols);
      for (int64_t n = cols; n < NR; ++n) out[n] = 0.0f;
    }
    return;
  }
  if (rowStride == 1 && cols == NR) {  // Wᵀ in y = x·Wᵀ: transpose in 16×16 tiles held in registers
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) {
      for (int64_t half = 0; half < NR; half += 16) {
        Vec16 rows[16];
        for (int64_t n = 0; n < 16; ++n)
          rows[n] = *reinterpret_cast<const Vec16Unaligned*>(b + (j0 + half + n) * colStride + k0 + k);
        for (int64_t kk = 0; kk < 16; ++kk) {
          Vec16 column;
          for (int64_t n = 0; n < 16; ++n) column[n] = rows[n][kk];
          *reinterpret_cast<Vec16*>(dst + (k + kk) * NR + half) = column;
        }
      }
    }
    for (; k < kc; ++k)
      for (int64_t n = 0; n < NR; ++n) dst[k * NR + n] = b[(j0 + n) * colStride + k0 + k];
    return;
  }
  for (int64_t n = 0; n < cols; ++n) {  // B columns contiguous (e.g. Wᵀ in y = x·Wᵀ): transpose
    const float* src = b + (j0 + n) * colStride + k0 * rowStride;
    if (rowStride == 1) {
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + n] = src[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + n] = src[k * rowStride];
    }
  }
  for (int64_t n = cols; n < NR; ++n)
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + n] = 0.0f;
}

// c (rows, cols) = alpha · packedA (kc, MR)ᵀ-panel · packedB (kc, NR) + (addToC ? c : 0)
void microKernel(int64_t kc, const float* __restrict__ packedA, const float* __restrict__ packedB, float* c,
                 ptrdiff_t ldc, int64_t rows, int64_t cols, float alpha, bool addToC) {
  Vec acc0[MR], acc1[MR];
  for (int64_t r = 0; r < MR; ++r) {
    acc0[r] = Vec{};
    acc1[r] = Vec{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    const Vec b0 = *reinterpret_cast<const Vec*>(packedB + k * NR);
    const Vec b1 = *reinterpret_cast<const Vec*>(packedB + k * NR + kVectorFloats);
    const float* aCol = packedA + k * MR;
#pragma GCC unroll 8
    for (int64_t r = 0; r < MR; ++r) {
      acc0[r] += aCol[r] * b0;
      acc1[r] += aCol[r] * b1;
    }
  }
  if (rows == MR && cols == NR) {
    for (int64_t r = 0; r < MR; ++r) {
      VecUnaligned* out0 = reinterpret_cast<VecUnaligned*>(c + r * ldc);
      VecUnaligned* out1 = reinterpret_cast<VecUnaligned*>(c + r * ldc + kVectorFloats);
      if (addToC) {
        *out0 += alpha * acc0[r];
        *out1 += alpha * acc1[r];
      } else {
        *out0 = alpha * acc0[r];
        *out1 = alpha * acc1[r];
      }
    }
    return;
  }
  alignas(64) float tile[MR * NR];
  for (int64_t r = 0; r < MR; ++r) {
    *reinterpret_cast<Vec*>(tile + r * NR) = alpha * acc0[r];
    *reinterpret_cast<Vec*>(tile + r * NR + kVectorFloats) = alpha * acc1[r];
  }
  storeTileCorner(c, ldc, tile, NR, rows, cols, addToC);
}

}  // namespace

size_t gemmWorkspaceFloats(int64_t maxThreads) {
  return static_cast<size_t>(std::max<int64_t>(maxThreads, 1) * (MC * KC + KC * NR) + 16);
}

// Each thread owns a block of C: a range of NR-panels of columns (when N is wide) or of MR-panels of
// rows (when N is narrow, e.g. a LoRA rank), packs its own A and B pieces and never waits for another
// thread until the end: no barriers inside the K loop.
void gemm(int64_t M, int64_t N, int64_t K, float alpha, const float* a, ptrdiff_t rowStrideA,
          ptrdiff_t colStrideA, const float* b, ptrdiff_t rowStrideB, ptrdiff_t colStrideB, float* c,
          ptrdiff_t ldc, bool accumulate, float* workspace) {
  if (gemmHasNoProduct(M, N, K, c, ldc, accumulate)) return;
  const int64_t panelsN = roundUp(N, NR) / NR;
  const int64_t panelsM = roundUp(M, MR) / MR;
  // Called from inside a parallel region (attention's blocks) it runs on the calling thread, whatever
  // the nesting settings: the workspace holds one slot per thread of a single team.
  const bool parallel = M * N * K >= 16 * kParallelMinWork && !omp_in_parallel();
#pragma omp parallel if (parallel)
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t thread = omp_get_thread_num();
    float* packedA = workspace + thread * (MC * KC + KC * NR);  // (MC / MR, KC, MR)
    float* packedB = packedA + MC * KC;                          // (KC, NR)
    // split the wider dimension: columns when there are enough panels for every thread
    const bool splitColumns = panelsN >= 2 * threads || panelsN >= panelsM;
    const int64_t parts = splitColumns ? panelsN : panelsM;
    const int64_t first = parts * thread / threads, last = parts * (thread + 1) / threads;
    const int64_t rowBegin = splitColumns ? 0 : first * MR, rowEnd = splitColumns ? M : std::min(M, last * MR);
    const int64_t panelBegin = splitColumns ? first : 0, panelEnd = splitColumns ? last : panelsN;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      const bool addToC = accumulate || k0 > 0;
      for (int64_t i0 = rowBegin; i0 < rowEnd; i0 += MC) {
        const int64_t mc = std::min(MC, rowEnd - i0);
        for (int64_t i = 0; i < mc; i += MR) packPanelA(packedA + (i / MR) * KC * MR, a, rowStrideA, colStrideA, i0 + i, M, k0, kc);
        for (int64_t p = panelBegin; p < panelEnd; ++p) {
          const int64_t j = p * NR;
          packPanelB(packedB, b, rowStrideB, colStrideB, j, N, k0, kc);
          for (int64_t i = 0; i < mc; i += MR) {
            microKernel(kc, packedA + (i / MR) * KC * MR, packedB, c + (i0 + i) * ldc + j, ldc,
                        std::min(MR, M - i0 - i), std::min(NR, N - j), alpha, addToC);
          }
        }
      }
    }
  }
}

void bias_forward(float* out, ptrdiff_t ldOut, const float* bias, int64_t T, int64_t N) {
#pragma omp parallel for schedule(static) if (T * N >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) out[t * ldOut + n] += bias[n];
}

void matmul_forward(float* out, ptrdiff_t ldOut, const float* inp, const float* weight, const float* bias,
                    int64_t T, int64_t K, int64_t N, bool accumulate, float* workspace) {
  // B(k, n) = weight[n·K + k]
  gemm(T, N, K, 1.0f, inp, K, 1, weight, 1, K, out, ldOut, accumulate, workspace);
  if (bias) bias_forward(out, ldOut, bias, T, N);
}

void matmul_backward_input(float* dinp, const float* dout, ptrdiff_t ldDout, const float* weight, int64_t T,
                           int64_t K, int64_t N, float scale, bool accumulate, float* workspace) {
  gemm(T, K, N, scale, dout, ldDout, 1, weight, K, 1, dinp, K, accumulate, workspace);
}

void matmul_backward_weight(float* dweight, const float* dout, const float* inp, int64_t T, int64_t K,
                            int64_t N, float scale, float* workspace) {
  // A(n, t) = dout[t·N + n], B(t, k) = inp[t·K + k]
  gemm(N, K, T, scale, dout, 1, N, inp, K, 1, dweight, K, true, workspace);
}

}  // namespace thinktune::kernels
