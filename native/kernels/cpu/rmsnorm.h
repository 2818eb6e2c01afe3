// RMSNorm as llama.cpp computes it: y = x / sqrt(mean(x²) + eps) · w (the mean summed in double).
#pragma once
#include <cstdint>

namespace thinktune::kernels {

// out (T, C), rstd (T) = 1/sqrt(mean(x²)+eps) kept for the backward pass
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t T, int64_t C,
                     float eps);

// dinp (T, C) += d(loss)/d(inp). It accumulates because inp is the residual stream, whose gradient
// already holds the skip connection's share.
void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C);

}  // namespace thinktune::kernels
