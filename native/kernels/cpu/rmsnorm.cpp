#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t T, int64_t C,
                     float eps) {
#pragma omp parallel for schedule(static) if (T * C >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;  // (C)
    double sumSquares = 0.0;
#pragma omp simd reduction(+ : sumSquares)
    for (int64_t c = 0; c < C; ++c) sumSquares += static_cast<double>(x[c]) * x[c];
    const float scale = 1.0f / std::sqrt(static_cast<float>(sumSquares / C) + eps);
    rstd[t] = scale;
    float* y = out + t * C;  // (C)
    for (int64_t c = 0; c < C; ++c) y[c] = (x[c] * scale) * weight[c];
  }
}

void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int64_t T, int64_t C) {
#pragma omp parallel for schedule(static) if (T * C >= kParallelMinWork)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;    // (C)
    const float* dy = dout + t * C;  // (C)
    float* dx = dinp + t * C;        // (C)
    const float r = rstd[t];
    // y_c = w_c·x_c·r with r = (mean(x²)+eps)^-1/2, so dx_c = r·w_c·dy_c − x_c·r³/C·Σ_j w_j·dy_j·x_j
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(weight[c] * dy[c]) * x[c];
    const float coefficient = static_cast<float>(dot) * r * r * r / static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) dx[c] += r * weight[c] * dy[c] - x[c] * coefficient;
  }
}

}  // namespace thinktune::kernels
