// What the fp32 and bf16 GEMMs share around their register tiles: shapes with nothing to multiply, and the
// edge of C, where a tile is written to the (rows, cols) corner that is inside the matrix.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace thinktune::kernels {

// true when C (M, N) has no product to add: empty, or K = 0 (then C = 0 unless accumulating)
inline bool gemmHasNoProduct(int64_t M, int64_t N, int64_t K, float* c, ptrdiff_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return true;
  if (K > 0) return false;
  if (!accumulate)
    for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, 0.0f);
  return true;
}

// c (rows, cols) [row stride ldc] (+)= tile (rows, cols) [row stride tileStride]
inline void storeTileCorner(float* c, ptrdiff_t ldc, const float* tile, int64_t tileStride, int64_t rows, int64_t cols,
                            bool addToC) {
  for (int64_t r = 0; r < rows; ++r) {
    float* out = c + r * ldc;
    const float* in = tile + r * tileStride;
    if (addToC) {
      for (int64_t n = 0; n < cols; ++n) out[n] += in[n];
    } else {
      for (int64_t n = 0; n < cols; ++n) out[n] = in[n];
    }
  }
}

}  // namespace thinktune::kernels
