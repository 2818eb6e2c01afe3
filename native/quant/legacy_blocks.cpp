// Q8_0 and Q4_0: blocks of 32 values sharing one f16 scale, following ggml's reference quantizers
// (quantize_row_q8_0_ref, quantize_row_q4_0_ref) operation for operation.
// No fused multiply-add: results must not depend on what the compiler contracts.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>

#include "quant/blocks.h"
#include "quant/half.h"

namespace thinktune::quant {

void dequantizeQ8_0(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  const auto* blocks = reinterpret_cast<const BlockQ8_0*>(src);
  for (int64_t b = 0; b < n / kLegacyBlock; ++b, dst += kLegacyBlock) {
    const float d = halfToFloat(loadLe16(blocks[b].d));
    for (int j = 0; j < kLegacyBlock; ++j) dst[j] = static_cast<float>(blocks[b].qs[j]) * d;
  }
}

void quantizeQ8_0(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  auto* blocks = reinterpret_cast<BlockQ8_0*>(dst);
  for (int64_t b = 0; b < n / kLegacyBlock; ++b, src += kLegacyBlock) {
    float amax = 0.0f;
    for (int j = 0; j < kLegacyBlock; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = amax / 127.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    storeLe16(blocks[b].d, floatToHalf(d));
    for (int j = 0; j < kLegacyBlock; ++j) blocks[b].qs[j] = static_cast<int8_t>(std::round(src[j] * inverse));
  }
}

void dequantizeQ4_0(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  const auto* blocks = reinterpret_cast<const BlockQ4_0*>(src);
  constexpr int half = kLegacyBlock / 2;
  for (int64_t b = 0; b < n / kLegacyBlock; ++b, dst += kLegacyBlock) {
    const float d = halfToFloat(loadLe16(blocks[b].d));
    for (int j = 0; j < half; ++j) dst[j] = static_cast<float>((blocks[b].qs[j] & 0x0F) - 8) * d;
    for (int j = 0; j < half; ++j) dst[j + half] = static_cast<float>((blocks[b].qs[j] >> 4) - 8) * d;
  }
}

void quantizeQ4_0(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  auto* blocks = reinterpret_cast<BlockQ4_0*>(dst);
  constexpr int half = kLegacyBlock / 2;
  for (int64_t b = 0; b < n / kLegacyBlock; ++b, src += kLegacyBlock) {
    // The value of largest magnitude maps to -8 exactly, keeping its sign (the one asymmetric level).
    float amax = 0.0f;
    float extreme = 0.0f;
    for (int j = 0; j < kLegacyBlock; ++j) {
      if (amax < std::fabs(src[j])) {
        amax = std::fabs(src[j]);
        extreme = src[j];
      }
    }
    const float d = extreme / -8.0f;
    const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
    storeLe16(blocks[b].d, floatToHalf(d));
    for (int j = 0; j < half; ++j) {
      // +8.5 then truncation rounds to the nearest level in 0..16; 16 is clamped to 15.
      const int low = std::min(15, static_cast<int>(static_cast<int8_t>(src[j] * inverse + 8.5f)));
      const int high = std::min(15, static_cast<int>(static_cast<int8_t>(src[j + half] * inverse + 8.5f)));
      blocks[b].qs[j] = static_cast<uint8_t>(low | (high << 4));
    }
  }
}

}  // namespace thinktune::quant
