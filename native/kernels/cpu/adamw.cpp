#include "kernels/cpu/adamw.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void adamw_update(float* params, float* m, float* v, const float* grads, int64_t N, float gradScale,
                  const AdamWHyper& hyper) {
  const double correction1 = 1.0 - std::pow(static_cast<double>(hyper.beta1), static_cast<double>(hyper.step));
  const double correction2 = 1.0 - std::pow(static_cast<double>(hyper.beta2), static_cast<double>(hyper.step));
  const float stepSize = static_cast<float>(hyper.lr / correction1);
  const float sqrtCorrection2 = static_cast<float>(std::sqrt(correction2));
  const float decay = 1.0f - hyper.lr * hyper.weightDecay;
#pragma omp parallel for simd schedule(static) if (N >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float g = grads[i] * gradScale;
    m[i] = hyper.beta1 * m[i] + (1.0f - hyper.beta1) * g;
    v[i] = hyper.beta2 * v[i] + (1.0f - hyper.beta2) * g * g;
    const float denominator = std::sqrt(v[i]) / sqrtCorrection2 + hyper.eps;
    params[i] = params[i] * decay - stepSize * m[i] / denominator;
  }
}

}  // namespace thinktune::kernels
