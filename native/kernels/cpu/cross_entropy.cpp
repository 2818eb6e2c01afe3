#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/threading.h"

#include <cmath>

namespace thinktune::kernels {

void cross_entropy_begin(float* runMax, float* runSum, float* targetLogit, int64_t N) {
  for (int64_t n = 0; n < N; ++n) {
    runMax[n] = -INFINITY;
    runSum[n] = 0.0f;
    targetLogit[n] = NAN;
  }
}

void cross_entropy_accumulate(float* runMax, float* runSum, float* targetLogit, const float* logits,
                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0) {
#pragma omp parallel for schedule(static) if (N * chunk >= kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    const float* row = logits + n * chunk;  // (chunk)
    float chunkMax = -INFINITY;
    for (int64_t v = 0; v < chunk; ++v) chunkMax = row[v] > chunkMax ? row[v] : chunkMax;
    const float newMax = chunkMax > runMax[n] ? chunkMax : runMax[n];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < chunk; ++v) sum += std::exp(row[v] - newMax);
    runSum[n] = runSum[n] * std::exp(runMax[n] - newMax) + sum;
    runMax[n] = newMax;
    const int64_t target = targets[n] - vocab0;
    if (target >= 0 && target < chunk) targetLogit[n] = row[target];
  }
}

double cross_entropy_finish(float* lse, const float* runMax, const float* runSum, const float* targetLogit,
                            int64_t N) {
  double loss = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    lse[n] = runMax[n] + std::log(runSum[n]);
    loss += static_cast<double>(lse[n]) - targetLogit[n];
  }
  return loss;
}

void cross_entropy_backward(float* logits, const float* lse, const int32_t* targets, int64_t N, int64_t chunk,
                            int64_t vocab0, float scale) {
#pragma omp parallel for schedule(static) if (N * chunk >= kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    float* row = logits + n * chunk;  // (chunk)
    const float logSumExp = lse[n];
#pragma omp simd
    for (int64_t v = 0; v < chunk; ++v) row[v] = scale * std::exp(row[v] - logSumExp);
    const int64_t target = targets[n] - vocab0;
    if (target >= 0 && target < chunk) row[target] -= scale;
  }
}

}  // namespace thinktune::kernels
