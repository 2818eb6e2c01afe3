#include "kernels/cpu/swiglu.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void swiglu_forward(float* h, const float* g, const float* u, int64_t N) {
#pragma omp parallel for simd schedule(static) if (N >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) h[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t N) {
#pragma omp parallel for simd schedule(static) if (N >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float gate = g[i], up = u[i];  // read before writing: dg and du may alias g and u
    const float sigmoid = 1.0f / (1.0f + std::exp(-gate));
    du[i] = dh[i] * gate * sigmoid;
    dg[i] = dh[i] * up * sigmoid * (1.0f + gate * (1.0f - sigmoid));
  }
}

}  // namespace thinktune::kernels
