// Q4_K, Q5_K and Q6_K: 256-value super-blocks. The quantizers follow ggml's reference
// (quantize_row_q{4,5,6}_K_ref with make_qkx2_quants / make_qx_quants) operation for operation, so
// the bytes match llama.cpp's quantizer without an importance matrix.
// No fused multiply-add: results must not depend on what the compiler contracts.
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/blocks.h"
#include "quant/half.h"

namespace thinktune::quant {

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // below this a group counts as all zero

// Round to nearest, ties to even, for |value| < 2^22: adding 1.5·2^23 leaves the rounded integer in
// the low mantissa bits (ggml's nearest_int).
inline int nearestInt(float value) {
  const float shifted = value + 12582912.0f;
  return static_cast<int>(floatBits(shifted) & 0x007FFFFFu) - 0x00400000;
}

constexpr int kAsymmetricGroup = 32;                         // Q4_K / Q5_K sub-block length
constexpr int kAsymmetricLanes = kSuperBlock / kAsymmetricGroup;  // sub-blocks per super-block

// One value per sub-block of a super-block (GCC/Clang vector extensions: element-wise IEEE
// arithmetic, mapped onto whatever SIMD width the target has).
using Lanes = float __attribute__((vector_size(4 * kAsymmetricLanes)));
using LaneInts = int32_t __attribute__((vector_size(4 * kAsymmetricLanes)));

// nearestInt for every lane.
inline LaneInts nearestInts(Lanes value) {
  const Lanes shifted = value + 12582912.0f;
  LaneInts bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007FFFFF) - 0x00400000;
}

inline LaneInts clampLevels(LaneInts level, int nmax) {
  const LaneInts zero = {};
  const LaneInts top = zero + nmax;
  level = level < zero ? zero : level;
  return level > top ? top : level;
}

inline Lanes toFloat(LaneInts level) { return __builtin_convertvector(level, Lanes); }

// Asymmetric quantization of the 8 sub-blocks of 32 values of one super-block to levels 0..nmax:
// for each, finds scale and min (x ≈ scale·L - min) minimizing the weighted squared error, trying
// nSteps candidate scales around nmax/(max-min) (ggml's make_qkx2_quants, nstep = nSteps - 1).
// The sub-blocks are independent, so they run side by side as SIMD lanes (x[i] holds value i of
// every sub-block); within a lane every operation and its order are ggml's, so the results are the
// same bit for bit. A candidate that improves on a lane's best also moves the min its later
// candidates start from, as in ggml.
// Outputs per lane j: levels[j][i], scaleOut[j] and the (non-negative) minOut[j].
void fitScalesAndMins(int nmax, const Lanes (&x)[kAsymmetricGroup], const Lanes (&weights)[kAsymmetricGroup],
                      float rmin, float rdelta, int nSteps, uint8_t (&levels)[kAsymmetricLanes][kAsymmetricGroup],
                      float (&scaleOut)[kAsymmetricLanes], float (&minOut)[kAsymmetricLanes]) {
  constexpr int n = kAsymmetricGroup;
  Lanes min = x[0];
  Lanes max = x[0];
  Lanes sumW = weights[0];
  Lanes sumX = sumW * x[0];
  for (int i = 1; i < n; ++i) {
    min = x[i] < min ? x[i] : min;
    max = x[i] > max ? x[i] : max;
    sumW += weights[i];
    sumX += weights[i] * x[i];
  }
  const Lanes zero = {};
  min = min > zero ? zero : min;
  // max == min: all levels 0 and scale 0, as ggml returns early (the arithmetic below is discarded).
  const LaneInts flat = max == min;
  const Lanes minAtStart = min;

  LaneInts best[n];  // levels of each lane's best candidate so far
  Lanes inverseScale = static_cast<float>(nmax) / (max - min);
  Lanes scale = 1.0f / inverseScale;
  Lanes bestError = zero;
  for (int i = 0; i < n; ++i) {
    best[i] = clampLevels(nearestInts(inverseScale * (x[i] - min)), nmax);
    const Lanes diff = scale * toFloat(best[i]) + min - x[i];
    bestError += weights[i] * (diff * diff);
  }

  for (int step = 0; step < nSteps; ++step) {
    LaneInts trial[n];
    Lanes sumL = zero, sumL2 = zero, sumXL = zero;
    inverseScale = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (max - min);
    for (int i = 0; i < n; ++i) {
      trial[i] = clampLevels(nearestInts(inverseScale * (x[i] - min)), nmax);
      const Lanes l = toFloat(trial[i]);
      sumL += weights[i] * l;
      sumL2 += weights[i] * l * l;
      sumXL += weights[i] * l * x[i];
    }
    // Weighted least squares for (scale, min) given the trial levels; det <= 0 rules a lane out.
    const Lanes det = sumW * sumL2 - sumL * sumL;
    const Lanes fittedScale = (sumW * sumXL - sumX * sumL) / det;
    const Lanes fittedMin = (sumL2 * sumX - sumL * sumXL) / det;
    const LaneInts minClamped = fittedMin > zero;
    const Lanes trialMin = minClamped ? zero : fittedMin;
    const Lanes trialScale = minClamped ? sumXL / sumL2 : fittedScale;
    Lanes error = zero;
    for (int i = 0; i < n; ++i) {
      const Lanes diff = trialScale * toFloat(trial[i]) + trialMin - x[i];
      error += weights[i] * (diff * diff);
    }
    const LaneInts better = (det > zero) & (error < bestError);
    for (int i = 0; i < n; ++i) best[i] = better ? trial[i] : best[i];
    bestError = better ? error : bestError;
    scale = better ? trialScale : scale;
    min = better ? trialMin : min;
  }

  for (int j = 0; j < kAsymmetricLanes; ++j) {
    for (int i = 0; i < n; ++i) levels[j][i] = flat[j] ? 0 : static_cast<uint8_t>(best[i][j]);
    scaleOut[j] = flat[j] ? 0.0f : scale[j];
    minOut[j] = -(flat[j] ? minAtStart[j] : min[j]);
  }
}

constexpr int kSymmetricGroup = 16;                        // Q6_K sub-block length
constexpr int kSymmetricLanes = kSuperBlock / kSymmetricGroup;  // sub-blocks per super-block

using WideLanes = float __attribute__((vector_size(4 * kSymmetricLanes)));
using WideLaneInts = int32_t __attribute__((vector_size(4 * kSymmetricLanes)));

inline WideLaneInts nearestInts(WideLanes value) {
  const WideLanes shifted = value + 12582912.0f;
  WideLaneInts bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007FFFFF) - 0x00400000;
}

inline WideLanes absolute(WideLanes value) {
  WideLaneInts bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits &= 0x7FFFFFFF;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Symmetric quantization of the 16 sub-blocks of 16 values of one super-block to levels
// -nmax..nmax-1 (stored + nmax), weights x², trying 19 scales around the one that maps each
// sub-block's largest magnitude to -nmax (ggml's make_qx_quants with rmse_type 1). As in
// fitScalesAndMins the sub-blocks are SIMD lanes (x[i] holds value i of every sub-block) and each
// lane repeats ggml's operations in ggml's order. Outputs levels[16·j + i] and scaleOut[j].
void fitSymmetricScales(int nmax, const WideLanes (&x)[kSymmetricGroup], int8_t (&levels)[kSuperBlock],
                        float (&scaleOut)[kSymmetricLanes]) {
  constexpr int n = kSymmetricGroup;
  const WideLanes zero = {};
  const WideLaneInts low = WideLaneInts{} - nmax;
  const WideLaneInts high = WideLaneInts{} + (nmax - 1);
  auto level = [&](WideLanes inverseScale, WideLanes value) {
    const WideLaneInts l = nearestInts(inverseScale * value);
    const WideLaneInts upper = l < high ? l : high;
    return upper > low ? upper : low;
  };
  WideLanes max = zero;  // the value of largest magnitude (the first, on ties)
  WideLanes amax = zero;
  for (int i = 0; i < n; ++i) {
    const WideLanes ax = absolute(x[i]);
    const WideLaneInts larger = ax > amax;
    amax = larger ? ax : amax;
    max = larger ? x[i] : max;
  }
  const WideLaneInts allZero = amax < kGroupMaxEps;  // these lanes end with levels 0 and scale 0

  WideLaneInts best[n];
  WideLanes inverseScale = static_cast<float>(-nmax) / max;
  WideLanes sumLX = zero;
  WideLanes sumL2 = zero;
  for (int i = 0; i < n; ++i) {
    best[i] = level(inverseScale, x[i]);
    const WideLanes l = __builtin_convertvector(best[i], WideLanes);
    const WideLanes w = x[i] * x[i];
    sumLX += w * x[i] * l;
    sumL2 += w * l * l;
  }
  WideLanes scale = sumL2 != zero ? sumLX / sumL2 : zero;
  WideLanes bestScore = scale * sumLX;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    inverseScale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
    WideLaneInts trial[n];
    sumLX = sumL2 = zero;
    for (int i = 0; i < n; ++i) {
      trial[i] = level(inverseScale, x[i]);
      const WideLanes l = __builtin_convertvector(trial[i], WideLanes);
      const WideLanes w = x[i] * x[i];
      sumLX += w * x[i] * l;
      sumL2 += w * l * l;
    }
    const WideLaneInts better = (sumL2 > zero) & (sumLX * sumLX > bestScore * sumL2);
    for (int i = 0; i < n; ++i) best[i] = better ? trial[i] : best[i];
    const WideLanes trialScale = sumLX / sumL2;
    scale = better ? trialScale : scale;
    bestScore = better ? trialScale * sumLX : bestScore;
  }
  for (int j = 0; j < kSymmetricLanes; ++j) {
    for (int i = 0; i < n; ++i) levels[n * j + i] = allZero[j] ? 0 : static_cast<int8_t>(best[i][j] + nmax);
    scaleOut[j] = allZero[j] ? 0.0f : scale[j];
  }
}

// Shared by Q4_K and Q5_K: fits the eight sub-block (scale, min) pairs, quantizes them to 6 bits
// under the f16 super-scales d / dmin, and re-derives each value's level (0..nmax) from the
// quantized scales. Writes d, dmin and the packed scales through the pointers.
void quantizeSuperBlockAsymmetric(const float* x, int nmax, float rmin, int nSteps, uint8_t* dOut, uint8_t* dminOut,
                                  uint8_t* packedScales, uint8_t* levels) {
  constexpr int kSub = kAsymmetricGroup;
  Lanes values[kSub];  // values[i][j]: value i of sub-block j
  Lanes weights[kSub];
  for (int j = 0; j < kAsymmetricLanes; ++j) {
    const float* sub = x + kSub * j;
    float sumX2 = 0;
    for (int l = 0; l < kSub; ++l) sumX2 += sub[l] * sub[l];
    const float rms = std::sqrt(sumX2 / kSub);
    for (int l = 0; l < kSub; ++l) {
      values[l][j] = sub[l];
      weights[l][j] = rms + std::fabs(sub[l]);
    }
  }
  float scales[kAsymmetricLanes];
  float mins[kAsymmetricLanes];
  uint8_t fitted[kAsymmetricLanes][kSub];
  fitScalesAndMins(nmax, values, weights, rmin, 0.1f, nSteps, fitted, scales, mins);
  std::memcpy(levels, fitted, sizeof fitted);
  float maxScale = 0;  // scales are positive: the min is subtracted
  float maxMin = 0;
  for (int j = 0; j < kAsymmetricLanes; ++j) {
    if (scales[j] > maxScale) maxScale = scales[j];
    if (mins[j] > maxMin) maxMin = mins[j];
  }

  const float inverseScale = maxScale > 0 ? 63.f / maxScale : 0.f;
  const float inverseMin = maxMin > 0 ? 63.f / maxMin : 0.f;
  std::memset(packedScales, 0, 12);
  for (int j = 0; j < kSuperBlock / kSub; ++j) {
    const uint8_t ls = std::min<uint8_t>(63, static_cast<uint8_t>(nearestInt(inverseScale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(nearestInt(inverseMin * mins[j])));
    if (j < 4) {
      packedScales[j] = ls;
      packedScales[j + 4] = lm;
    } else {
      packedScales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
      packedScales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      packedScales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  storeLe16(dOut, floatToHalf(maxScale / 63.f));
  storeLe16(dminOut, floatToHalf(maxMin / 63.f));

  const float d = halfToFloat(loadLe16(dOut));
  const float dmin = halfToFloat(loadLe16(dminOut));
  for (int j = 0; j < kSuperBlock / kSub; ++j) {
    uint8_t sc, m;
    unpackScaleMin(j, packedScales, sc, m);
    const float subScale = d * sc;
    if (subScale == 0) continue;  // keeps the levels of the fit, as ggml does
    const float subMin = dmin * m;
    for (int i = 0; i < kSub; ++i) {
      const int l = nearestInt((x[kSub * j + i] + subMin) / subScale);
      levels[kSub * j + i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
}

}  // namespace

void dequantizeQ4K(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  const auto* blocks = reinterpret_cast<const BlockQ4K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const BlockQ4K& block = blocks[b];
    const float d = halfToFloat(loadLe16(block.d));
    const float dmin = halfToFloat(loadLe16(block.dmin));
    const uint8_t* q = block.qs;
    for (int j = 0; j < 8; j += 2, q += 32) {
      uint8_t sc, m;
      unpackScaleMin(j, block.scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      unpackScaleMin(j + 1, block.scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *dst++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *dst++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void quantizeQ4K(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  auto* blocks = reinterpret_cast<BlockQ4K*>(dst);
  uint8_t levels[kSuperBlock];
  for (int64_t b = 0; b < n / kSuperBlock; ++b, src += kSuperBlock) {
    BlockQ4K& block = blocks[b];
    quantizeSuperBlockAsymmetric(src, 15, -1.0f, 21, block.d, block.dmin, block.scales, levels);
    uint8_t* q = block.qs;
    for (int j = 0; j < kSuperBlock; j += 64, q += 32) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(levels[j + l] | (levels[j + l + 32] << 4));
    }
  }
}

void dequantizeQ5K(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  const auto* blocks = reinterpret_cast<const BlockQ5K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const BlockQ5K& block = blocks[b];
    const float d = halfToFloat(loadLe16(block.d));
    const float dmin = halfToFloat(loadLe16(block.dmin));
    const uint8_t* ql = block.qs;
    const uint8_t* qh = block.qh;
    int shift = 0;  // qh bit of the first 32 of each 64; the second 32 use shift + 1
    for (int j = 0; j < 8; j += 2, ql += 32, shift += 2) {
      uint8_t sc, m;
      unpackScaleMin(j, block.scales, sc, m);
      const float d1 = d * sc, m1 = dmin * m;
      unpackScaleMin(j + 1, block.scales, sc, m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] & 0xF) | (((qh[l] >> shift) & 1) << 4);
        *dst++ = d1 * static_cast<float>(q) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] >> 4) | (((qh[l] >> (shift + 1)) & 1) << 4);
        *dst++ = d2 * static_cast<float>(q) - m2;
      }
    }
  }
}

void quantizeQ5K(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  auto* blocks = reinterpret_cast<BlockQ5K*>(dst);
  uint8_t levels[kSuperBlock];
  for (int64_t b = 0; b < n / kSuperBlock; ++b, src += kSuperBlock) {
    BlockQ5K& block = blocks[b];
    quantizeSuperBlockAsymmetric(src, 31, -0.5f, 16, block.d, block.dmin, block.scales, levels);
    std::memset(block.qh, 0, sizeof block.qh);
    uint8_t* ql = block.qs;
    for (int j = 0, shift = 0; j < kSuperBlock; j += 64, ql += 32, shift += 2) {
      for (int l = 0; l < 32; ++l) {
        const int first = levels[j + l];
        const int second = levels[j + l + 32];
        block.qh[l] |= static_cast<uint8_t>(((first >> 4) << shift) | ((second >> 4) << (shift + 1)));
        ql[l] = static_cast<uint8_t>((first & 0xF) | ((second & 0xF) << 4));
      }
    }
  }
}

void dequantizeQ6K(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  const auto* blocks = reinterpret_cast<const BlockQ6K*>(src);
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {
    const BlockQ6K& block = blocks[b];
    const float d = halfToFloat(loadLe16(block.d));
    const uint8_t* ql = block.ql;
    const uint8_t* qh = block.qh;
    const int8_t* sc = block.scales;
    // Each 128 values are four runs of 32: run g takes its low 4 bits from ql[l + 32·(g % 2)] (low
    // nibble for g < 2), its top 2 bits from bits 2g of qh[l], and the scales sc[l / 16 + 2g].
    for (int half = 0; half < 2; ++half, dst += 128, ql += 64, qh += 32, sc += 8) {
      for (int run = 0; run < 4; ++run) {
        const uint8_t* low = ql + 32 * (run & 1);
        const int lowShift = run < 2 ? 0 : 4;
        const int highShift = 2 * run;
        const float scaleFirst = d * static_cast<float>(sc[2 * run]);
        const float scaleSecond = d * static_cast<float>(sc[2 * run + 1]);
        for (int l = 0; l < 32; ++l) {
          const int q = (((low[l] >> lowShift) & 0xF) | (((qh[l] >> highShift) & 3) << 4)) - 32;
          dst[32 * run + l] = (l < 16 ? scaleFirst : scaleSecond) * static_cast<float>(q);
        }
      }
    }
  }
}

void quantizeQ6K(const float* __restrict src, uint8_t* __restrict dst, int64_t n) {
  constexpr int kSub = kSymmetricGroup;
  auto* blocks = reinterpret_cast<BlockQ6K*>(dst);
  int8_t levels[kSuperBlock];
  float scales[kSymmetricLanes];
  for (int64_t b = 0; b < n / kSuperBlock; ++b, src += kSuperBlock) {
    BlockQ6K& block = blocks[b];
    WideLanes values[kSub];  // values[i][j]: value i of sub-block j
    for (int j = 0; j < kSymmetricLanes; ++j) {
      for (int i = 0; i < kSub; ++i) values[i][j] = src[kSub * j + i];
    }
    fitSymmetricScales(32, values, levels, scales);
    float maxScale = 0;
    float maxAbsScale = 0;
    for (int j = 0; j < kSuperBlock / kSub; ++j) {
      if (std::fabs(scales[j]) > maxAbsScale) {
        maxAbsScale = std::fabs(scales[j]);
        maxScale = scales[j];
      }
    }
    if (maxAbsScale < kGroupMaxEps) {
      std::memset(&block, 0, sizeof block);
      continue;
    }
    const float inverseScale = -128.f / maxScale;
    storeLe16(block.d, floatToHalf(1 / inverseScale));
    for (int j = 0; j < kSuperBlock / kSub; ++j) {
      block.scales[j] = static_cast<int8_t>(std::min(127, nearestInt(inverseScale * scales[j])));
    }
    const float d = halfToFloat(loadLe16(block.d));
    for (int j = 0; j < kSuperBlock / kSub; ++j) {
      const float subScale = d * static_cast<float>(block.scales[j]);
      if (subScale == 0) continue;  // keeps the levels of the fit, as ggml does
      for (int i = 0; i < kSub; ++i) {
        const int l = nearestInt(src[kSub * j + i] / subScale);
        levels[kSub * j + i] = static_cast<int8_t>(std::max(-32, std::min(31, l)) + 32);
      }
    }
    uint8_t* ql = block.ql;
    uint8_t* qh = block.qh;
    for (int j = 0; j < kSuperBlock; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const int l1 = levels[j + l], l2 = levels[j + l + 32], l3 = levels[j + l + 64], l4 = levels[j + l + 96];
        ql[l] = static_cast<uint8_t>((l1 & 0xF) | ((l3 & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((l2 & 0xF) | ((l4 & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6));
      }
    }
  }
}

}  // namespace thinktune::quant
