// IEEE half (F16) and bfloat16 (BF16) conversions, rounding exactly as ggml's reference does:
// round to nearest even, overflow to infinity, NaN kept NaN (F16: the quiet NaN 0x7E00; BF16: the
// top half of the payload with the quiet bit forced). Inline: the dequantizers call them per block.
#pragma once
#include <cstdint>
#include <cstring>

namespace thinktune::quant {

inline uint32_t floatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float floatFromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline float halfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1Fu;
  const uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0x1F) return floatFromBits(sign | 0x7F800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return floatFromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa · 2^-24, exact in float
  return floatFromBits(sign | floatBits(static_cast<float>(mantissa) * 0x1p-24f));
}

inline uint16_t floatToHalf(float value) {
  const uint32_t bits = floatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;  // NaN
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to infinity
  if (magnitude >= 0x38800000u) {                        // normal half (>= 2^-14)
    const uint32_t mantissa = magnitude & 0x7FFFFFu;
    uint32_t half = (((magnitude >> 23) - 112) << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry rolls into the exponent
    return sign | static_cast<uint16_t>(half);
  }
  // Subnormal half: adding 0.5 (whose ulp is 2^-24) makes the FPU round |value| to a multiple of
  // 2^-24, nearest even; the low mantissa bits are then the half's bits (1024 = smallest normal).
  const float rounded = floatFromBits(magnitude) + 0.5f;
  return sign | static_cast<uint16_t>(floatBits(rounded) - 0x3F000000u);
}

inline float bf16ToFloat(uint16_t bf16) { return floatFromBits(static_cast<uint32_t>(bf16) << 16); }

inline uint16_t floatToBf16(float value) {
  const uint32_t bits = floatBits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  const uint32_t roundingBias = 0x7FFFu + ((bits >> 16) & 1u);  // nearest, ties to even
  return static_cast<uint16_t>((bits + roundingBias) >> 16);
}

// GGUF stores halves little-endian; blocks may sit at odd addresses inside a Uint8Array.
inline uint16_t loadLe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline void storeLe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace thinktune::quant
