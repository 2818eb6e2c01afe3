// AdamW with decoupled weight decay, in PyTorch's order: p ← p·(1 − lr·wd), then the bias-corrected
// Adam step. `hyper.gradScale` folds the mean over tokens and the clipping factor into the gradient.
#pragma once
#include <cstdint>

#include "common/adamw_step.h"

namespace thinktune::kernels {

// params, m, v (N) updated from grads (N)
void adamw_update(float* params, float* m, float* v, const float* grads, int64_t N, const AdamWStep& hyper);

}  // namespace thinktune::kernels
