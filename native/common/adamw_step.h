// One AdamW update's settings, computed once by the engine (bias correction included) and applied
// by the CPU and the CUDA kernel alike.
#pragma once
#include <cmath>
#include <cstdint>

namespace thinktune {

struct AdamWStep {
  float lr, beta1, beta2, eps, weightDecay;
  float stepSize;         // lr / (1 − beta1^step)
  float sqrtCorrection2;  // sqrt(1 − beta2^step)
  float gradScale;        // mean over tokens × clipping factor
};

// The settings of update number `step` (1 for the first), bias corrections in double precision.
inline AdamWStep adamwStep(float lr, float beta1, float beta2, float eps, float weightDecay, int64_t step,
                           float gradScale) {
  const double correction1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double correction2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  return {lr,
          beta1,
          beta2,
          eps,
          weightDecay,
          static_cast<float>(lr / correction1),
          static_cast<float>(std::sqrt(correction2)),
          gradScale};
}

}  // namespace thinktune
