#include "kernels/cpu/adamw.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t N, const AdamWStep& hyper) {
  const float decay = 1.0f - hyper.lr * hyper.weightDecay;
#pragma omp parallel for simd schedule(static) if (N >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float g = grads[i] * hyper.gradScale;
    m[i] = hyper.beta1 * m[i] + (1.0f - hyper.beta1) * g;
    v[i] = hyper.beta2 * v[i] + (1.0f - hyper.beta2) * g * g;
    const float denominator = std::sqrt(v[i]) / hyper.sqrtCorrection2 + hyper.eps;
    params[i] = params[i] * decay - hyper.stepSize * m[i] / denominator;
  }
}

}  // namespace thinktune::kernels
