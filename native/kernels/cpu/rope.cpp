#include "kernels/cpu/rope.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void rope_cache(float* cache, const int32_t* positions, int64_t T, int64_t D, float base,
                const float* freqFactors) {
  const float thetaScale = std::pow(base, -2.0f / static_cast<float>(D));
#pragma omp parallel for schedule(static) if (T * D >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t) {
    float theta = static_cast<float>(positions[t]);
    float* row = cache + t * D;  // (D)
    for (int64_t i0 = 0; i0 < D; i0 += 2) {
      const float factor = freqFactors ? freqFactors[i0 / 2] : 1.0f;
      row[i0] = std::cos(theta / factor);
      row[i0 + 1] = std::sin(theta / factor);
      theta *= thetaScale;
    }
  }
}

namespace {
void rotate(float* x, const float* cache, int64_t T, int64_t nHeads, int64_t D, bool neox, float sinSign) {
  const int64_t offset = neox ? D / 2 : 1;
#pragma omp parallel for collapse(2) schedule(static) if (T * nHeads * D >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < nHeads; ++h) {
      float* head = x + (t * nHeads + h) * D;  // (D)
      const float* row = cache + t * D;        // (D)
      for (int64_t i0 = 0; i0 < D; i0 += 2) {
        const int64_t first = neox ? i0 / 2 : i0;
        const float cosTheta = row[i0];
        const float sinTheta = row[i0 + 1] * sinSign;
        const float x0 = head[first];
        const float x1 = head[first + offset];
        head[first] = x0 * cosTheta - x1 * sinTheta;
        head[first + offset] = x0 * sinTheta + x1 * cosTheta;
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, const float* cache, int64_t T, int64_t nHeads, int64_t D, bool neox) {
  rotate(x, cache, T, nHeads, D, neox, 1.0f);
}

void rope_backward(float* dx, const float* cache, int64_t T, int64_t nHeads, int64_t D, bool neox) {
  rotate(dx, cache, T, nHeads, D, neox, -1.0f);
}

}  // namespace thinktune::kernels
