// F32, F16 and BF16 rows: element-wise, block size 1.
#include <cstring>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include "quant/blocks.h"
#include "quant/half.h"

namespace thinktune::quant {

void dequantizeF32(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}

void quantizeF32(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}

void dequantizeF16(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
#ifdef __F16C__
  // The hardware conversion is exact like halfToFloat; it differs only in quieting signalling NaNs.
  for (; i + 8 <= n; i += 8) {
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(halves));
  }
#endif
  for (; i < n; ++i) dst[i] = halfToFloat(loadLe16(src + 2 * i));
}

void quantizeF16(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) storeLe16(dst + 2 * i, floatToHalf(src[i]));
}

void dequantizeBF16(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(loadLe16(src + 2 * i));
}

void quantizeBF16(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) storeLe16(dst + 2 * i, floatToBf16(src[i]));
}

}  // namespace thinktune::quant
