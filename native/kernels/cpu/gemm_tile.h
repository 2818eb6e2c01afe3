// The edge of a GEMM's C: a register tile written to the (rows, cols) corner that is inside the matrix.
#pragma once
#include <cstddef>
#include <cstdint>

namespace thinktune::kernels {

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
