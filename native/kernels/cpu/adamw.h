// AdamW with decoupled weight decay, in PyTorch's order: p ← p·(1 − lr·wd), then the bias-corrected
// Adam step. `gradScale` folds the mean over tokens and the clipping factor into the gradient.
#pragma once
#include <cstdint>

namespace thinktune::kernels {

struct AdamWHyper {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weightDecay;
  int64_t step;  // 1 for the first update (bias correction)
};

// params, m, v (N) updated from grads (N)
void adamw_update(float* params, float* m, float* v, const float* grads, int64_t N, float gradScale,
                  const AdamWHyper& hyper);

}  // namespace thinktune::kernels
