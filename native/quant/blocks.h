// Block layouts of the GGUF quantized formats (ggml-common.h) and the per-format row converters.
// Internal to native/quant: the engine goes through quant.h. Every struct is bytes only (alignment 1)
// because blocks sit at any offset in a mapped file or a Uint8Array.
#pragma once
#include <cstdint>

namespace thinktune::quant {

constexpr int kLegacyBlock = 32;  // QK4_0 = QK8_0
constexpr int kSuperBlock = 256;  // QK_K

struct BlockQ8_0 {
  uint8_t d[2];  // f16 scale
  int8_t qs[kLegacyBlock];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block is 34 bytes");

struct BlockQ4_0 {
  uint8_t d[2];                  // f16 scale
  uint8_t qs[kLegacyBlock / 2];  // element j in the low nibble of qs[j], element j+16 in the high one
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block is 18 bytes");

// Q4_K / Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed into 12 bytes.
struct BlockQ4K {
  uint8_t d[2];     // f16 super-scale of the sub-block scales
  uint8_t dmin[2];  // f16 super-scale of the sub-block mins
  uint8_t scales[12];
  uint8_t qs[kSuperBlock / 2];  // per 64 elements: 32 bytes, low nibbles first 32, high nibbles next 32
};
static_assert(sizeof(BlockQ4K) == 144, "Q4_K block is 144 bytes");

struct BlockQ5K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[12];
  uint8_t qh[kSuperBlock / 8];  // fifth bits: bit 2k / 2k+1 of qh[l] for elements 64k+l / 64k+32+l
  uint8_t qs[kSuperBlock / 2];  // low four bits, as in Q4_K
};
static_assert(sizeof(BlockQ5K) == 176, "Q5_K block is 176 bytes");

// Q6_K: 16 sub-blocks of 16 with int8 scales; 6-bit quants split into 4 low + 2 high bits.
struct BlockQ6K {
  uint8_t ql[kSuperBlock / 2];
  uint8_t qh[kSuperBlock / 4];
  int8_t scales[kSuperBlock / 16];
  uint8_t d[2];  // f16 super-scale
};
static_assert(sizeof(BlockQ6K) == 210, "Q6_K block is 210 bytes");

// Sub-block j's 6-bit scale and min of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
inline void unpackScaleMin(int j, const uint8_t* packed, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = packed[j] & 63;
    min = packed[j + 4] & 63;
  } else {
    scale = static_cast<uint8_t>((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4));
  }
}

// Row converters; n is a multiple of the format's block size.
void dequantizeF32(const uint8_t* src, float* dst, int64_t n);
void dequantizeF16(const uint8_t* src, float* dst, int64_t n);
void dequantizeBF16(const uint8_t* src, float* dst, int64_t n);
void dequantizeQ8_0(const uint8_t* src, float* dst, int64_t n);
void dequantizeQ4_0(const uint8_t* src, float* dst, int64_t n);
void dequantizeQ4K(const uint8_t* src, float* dst, int64_t n);
void dequantizeQ5K(const uint8_t* src, float* dst, int64_t n);
void dequantizeQ6K(const uint8_t* src, float* dst, int64_t n);

void quantizeF32(const float* src, uint8_t* dst, int64_t n);
void quantizeF16(const float* src, uint8_t* dst, int64_t n);
void quantizeBF16(const float* src, uint8_t* dst, int64_t n);
void quantizeQ8_0(const float* src, uint8_t* dst, int64_t n);
void quantizeQ4_0(const float* src, uint8_t* dst, int64_t n);
void quantizeQ4K(const float* src, uint8_t* dst, int64_t n);
void quantizeQ5K(const float* src, uint8_t* dst, int64_t n);
void quantizeQ6K(const float* src, uint8_t* dst, int64_t n);

}  // namespace thinktune::quant
