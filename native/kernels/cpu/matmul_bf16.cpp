#include "kernels/cpu/matmul_bf16.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm_tile.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/threading.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define THINKTUNE_HAVE_BF16_MATMUL 1
#endif

namespace thinktune::kernels {

#ifdef THINKTUNE_HAVE_BF16_MATMUL

namespace {

constexpr int64_t MR = 8;
constexpr int64_t NR = 32;
constexpr int64_t KC = 256;  // even: packed in pairs of k
constexpr int64_t MC = 512;

inline int64_t roundUp(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

inline uint32_t bf16Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;  // nearest even (operands are finite)
}

// words (pairs) = bf16 of src (2·pairs floats, contiguous): word p holds elements 2p (low) and 2p+1
void convertPairs(uint32_t* words, const float* src, int64_t pairs) {
  int64_t p = 0;
  for (; p + 16 <= pairs; p += 16) {
    const __m512 low = _mm512_loadu_ps(src + 2 * p);
    const __m512 high = _mm512_loadu_ps(src + 2 * p + 16);
    _mm512_storeu_si512(words + p, (__m512i)_mm512_cvtne2ps_pbh(high, low));  // RNE, element order kept
  }
  for (; p < pairs; ++p) words[p] = bf16Bits(src[2 * p]) | (bf16Bits(src[2 * p + 1]) << 16);
}

// A panel for k in [k0, k0+kc): (kc/2, MR) words, each the bf16 pair (k, k+1) of one row; zero padded.
void packPanelA(uint32_t* dst, const float* a, ptrdiff_t rowStride, ptrdiff_t colStride, int64_t i0, int64_t M,
                int64_t k0, int64_t kc) {
  const int64_t pairs = (kc + 1) / 2;
  if (colStride == 1 && kc % 2 == 0 && i0 + MR <= M) {  // rows contiguous: convert a row at a time
    alignas(64) uint32_t words[KC / 2];
    for (int64_t r = 0; r < MR; ++r) {
      convertPairs(words, a + (i0 + r) * rowStride + k0, pairs);
      for (int64_t p = 0; p < pairs; ++p) dst[p * MR + r] = words[p];
    }
    return;
  }
  for (int64_t r = 0; r < MR; ++r) {
    const bool valid = i0 + r < M;
    const float* src = a + (i0 + r) * rowStride + k0 * colStride;
    for (int64_t p = 0; p < pairs; ++p) {
      const uint32_t low = valid ? bf16Bits(src[(2 * p) * colStride]) : 0u;
      const uint32_t high = valid && 2 * p + 1 < kc ? bf16Bits(src[(2 * p + 1) * colStride]) : 0u;
      dst[p * MR + r] = low | (high << 16);
    }
  }
}

// B panel: (kc/2, NR, 2) bf16, the pair (k, k+1) of each column adjacent; zero padded.
void packPanelB(uint16_t* dst, const float* b, ptrdiff_t rowStride, ptrdiff_t colStride, int64_t j0, int64_t N,
                int64_t k0, int64_t kc) {
  const int64_t pairs = (kc + 1) / 2;
  if (rowStride == 1 && kc % 2 == 0 && j0 + NR <= N) {  // Wᵀ: each column is a contiguous weight row
    auto* dstWords = reinterpret_cast<uint32_t*>(dst);   // (kc/2, NR) words
    alignas(64) uint32_t words[KC / 2];
    for (int64_t n = 0; n < NR; ++n) {
      convertPairs(words, b + (j0 + n) * colStride + k0, pairs);
      for (int64_t p = 0; p < pairs; ++p) dstWords[p * NR + n] = words[p];
    }
    return;
  }
  for (int64_t n = 0; n < NR; ++n) {
    const bool valid = j0 + n < N;
    const float* src = b + (j0 + n) * colStride + k0 * rowStride;
    for (int64_t p = 0; p < pairs; ++p) {
      dst[(p * NR + n) * 2] = valid ? static_cast<uint16_t>(bf16Bits(src[(2 * p) * rowStride])) : 0;
      dst[(p * NR + n) * 2 + 1] =
          valid && 2 * p + 1 < kc ? static_cast<uint16_t>(bf16Bits(src[(2 * p + 1) * rowStride])) : 0;
    }
  }
}

void microKernel(int64_t pairs, const uint32_t* __restrict__ packedA, const uint16_t* __restrict__ packedB, float* c,
                 ptrdiff_t ldc, int64_t rows, int64_t cols, float alpha, bool addToC) {
  __m512 acc0[MR], acc1[MR];
  for (int64_t r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(packedB + p * NR * 2);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(packedB + p * NR * 2 + 32);
#pragma GCC unroll 8
    for (int64_t r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(packedA[p * MR + r]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], a, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], a, b1);
    }
  }
  const __m512 scale = _mm512_set1_ps(alpha);
  alignas(64) float tile[MR * NR];
  for (int64_t r = 0; r < MR; ++r) {
    _mm512_store_ps(tile + r * NR, _mm512_mul_ps(acc0[r], scale));
    _mm512_store_ps(tile + r * NR + 16, _mm512_mul_ps(acc1[r], scale));
  }
  storeTileCorner(c, ldc, tile, NR, rows, cols, addToC);
}

}  // namespace

bool bf16MatmulAvailable() { return true; }

void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const float* a, ptrdiff_t rowStrideA,
               ptrdiff_t colStrideA, const float* b, ptrdiff_t rowStrideB, ptrdiff_t colStrideB, float* c,
               ptrdiff_t ldc, bool accumulate, float* workspace) {
  if (gemmHasNoProduct(M, N, K, c, ldc, accumulate)) return;
  const int64_t panelsN = roundUp(N, NR) / NR;
  const int64_t panelsM = roundUp(M, MR) / MR;
  // the fp32 gemm's per-thread workspace (MC·KC + KC·NR floats) holds these halved-size packs
  const int64_t perThreadFloats = static_cast<int64_t>(gemmWorkspaceFloats(1) - 16);
#pragma omp parallel if (M * N * K >= 16 * kParallelMinWork && !omp_in_parallel())
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t thread = omp_get_thread_num();
    auto* packedA = reinterpret_cast<uint32_t*>(workspace + thread * perThreadFloats);  // (MC/MR, KC/2, MR)
    auto* packedB = reinterpret_cast<uint16_t*>(packedA + MC * KC / 2);                // (KC/2, NR, 2)
    const bool splitColumns = panelsN >= 2 * threads || panelsN >= panelsM;
    const int64_t parts = splitColumns ? panelsN : panelsM;
    const int64_t first = parts * thread / threads, last = parts * (thread + 1) / threads;
    const int64_t rowBegin = splitColumns ? 0 : first * MR, rowEnd = splitColumns ? M : std::min(M, last * MR);
    const int64_t panelBegin = splitColumns ? first : 0, panelEnd = splitColumns ? last : panelsN;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      const int64_t pairs = (kc + 1) / 2;
      const bool addToC = accumulate || k0 > 0;
      for (int64_t i0 = rowBegin; i0 < rowEnd; i0 += MC) {
        const int64_t mc = std::min(MC, rowEnd - i0);
        for (int64_t i = 0; i < mc; i += MR)
          packPanelA(packedA + (i / MR) * (KC / 2) * MR, a, rowStrideA, colStrideA, i0 + i, M, k0, kc);
        for (int64_t p = panelBegin; p < panelEnd; ++p) {
          const int64_t j = p * NR;
          packPanelB(packedB, b, rowStrideB, colStrideB, j, N, k0, kc);
          for (int64_t i = 0; i < mc; i += MR) {
            microKernel(pairs, packedA + (i / MR) * (KC / 2) * MR, packedB, c + (i0 + i) * ldc + j, ldc,
                        std::min(MR, M - i0 - i), std::min(NR, N - j), alpha, addToC);
          }
        }
      }
    }
  }
}

#else

bool bf16MatmulAvailable() { return false; }

// Without AVX512-BF16 the engine refuses precision "bf16"; these keep the results right regardless.
void gemm_bf16(int64_t M, int64_t N, int64_t K, float alpha, const float* a, ptrdiff_t rowStrideA,
               ptrdiff_t colStrideA, const float* b, ptrdiff_t rowStrideB, ptrdiff_t colStrideB, float* c,
               ptrdiff_t ldc, bool accumulate, float* workspace) {
  gemm(M, N, K, alpha, a, rowStrideA, colStrideA, b, rowStrideB, colStrideB, c, ldc, accumulate, workspace);
}

#endif

void matmul_forward_bf16(float* out, ptrdiff_t ldOut, const float* inp, const float* weight, const float* bias,
                         int64_t T, int64_t K, int64_t N, bool accumulate, float* workspace) {
  gemm_bf16(T, N, K, 1.0f, inp, K, 1, weight, 1, K, out, ldOut, accumulate, workspace);
  if (bias) bias_forward(out, ldOut, bias, T, N);
}

void matmul_backward_input_bf16(float* dinp, const float* dout, ptrdiff_t ldDout, const float* weight, int64_t T,
                                int64_t K, int64_t N, float scale, bool accumulate, float* workspace) {
  gemm_bf16(T, K, N, scale, dout, ldDout, 1, weight, K, 1, dinp, K, accumulate, workspace);
}

}  // namespace thinktune::kernels
