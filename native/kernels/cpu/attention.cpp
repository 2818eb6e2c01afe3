#include "kernels/cpu/attention.h"

#include <omp.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/threading.h"

namespace thinktune::kernels {

namespace {
inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void axpy(float* y, float alpha, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// exp(x) for x <= 0 (scores minus their maximum or log-sum-exp), Cephes' expf polynomial (about one
// ulp), written without calls so the loops over keys vectorize; ggml's softmax vectorizes likewise.
inline float expNonPositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// probabilities (n) = exp(scores (n) − shift) in place; returns their sum
inline float expShifted(float* values, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    values[j] = expNonPositive(values[j] - shift);
    sum += values[j];
  }
  return sum;
}
}  // namespace

size_t attentionWorkspaceFloats(int64_t maxT, int64_t nHead, int threads) {
  // a row of scores per thread, and the backward pass's D_i = dout_i·out_i per (head, position)
  return static_cast<size_t>(threads + nHead) * static_cast<size_t>(maxT);
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* seqStart, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                       float scale, float* workspace) {
  const int64_t group = nHead / nHeadKv;
#pragma omp parallel if (T * T * nHead * D / 2 >= kParallelMinWork)
  {
    float* scores = workspace + static_cast<int64_t>(omp_get_thread_num()) * T;  // (T)
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t h = 0; h < nHead; ++h) {
        const int64_t kvHead = h / group;
        const int64_t first = seqStart[i], count = i - first + 1;
        const float* query = q + (i * nHead + h) * D;  // (D)
        float* result = out + (i * nHead + h) * D;     // (D)
        float maxScore = -INFINITY;
        for (int64_t j = 0; j < count; ++j) {
          scores[j] = dot(query, k + ((first + j) * nHeadKv + kvHead) * D, D) * scale;
          maxScore = scores[j] > maxScore ? scores[j] : maxScore;
        }
        const float sum = expShifted(scores, count, maxScore);
        for (int64_t d = 0; d < D; ++d) result[d] = 0.0f;
        for (int64_t j = 0; j < count; ++j) axpy(result, scores[j], v + ((first + j) * nHeadKv + kvHead) * D, D);
        const float inverse = 1.0f / sum;
        for (int64_t d = 0; d < D; ++d) result[d] *= inverse;
        lse[h * T + i] = maxScore + std::log(sum);
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const int32_t* seqStart,
                        const int32_t* seqEnd, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                        float scale, float* workspace) {
  const int64_t group = nHead / nHeadKv;
  float* rowDots = workspace;  // (nHead, T): D_i = dout_i · out_i
#pragma omp parallel if (T * T * nHead * D / 2 >= kParallelMinWork)
  {
    float* probabilities = workspace + (nHead + omp_get_thread_num()) * T;  // (T)
#pragma omp for collapse(2) schedule(static)
    for (int64_t h = 0; h < nHead; ++h)
      for (int64_t i = 0; i < T; ++i)
        rowDots[h * T + i] = dot(dout + (i * nHead + h) * D, out + (i * nHead + h) * D, D);

    // dq_i = scale · Σ_j P_ij (dP_ij − D_i) k_j, with dP_ij = dout_i · v_j
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t h = 0; h < nHead; ++h) {
        const int64_t kvHead = h / group;
        const int64_t first = seqStart[i], count = i - first + 1;
        const float* query = q + (i * nHead + h) * D;      // (D)
        const float* gradOut = dout + (i * nHead + h) * D;  // (D)
        float* gradQuery = dq + (i * nHead + h) * D;        // (D)
        for (int64_t j = 0; j < count; ++j)
          probabilities[j] = dot(query, k + ((first + j) * nHeadKv + kvHead) * D, D) * scale;
        expShifted(probabilities, count, lse[h * T + i]);
        for (int64_t d = 0; d < D; ++d) gradQuery[d] = 0.0f;
        const float rowDot = rowDots[h * T + i];
        for (int64_t j = 0; j < count; ++j) {
          const int64_t key = ((first + j) * nHeadKv + kvHead) * D;
          const float dp = dot(gradOut, v + key, D);
          axpy(gradQuery, scale * probabilities[j] * (dp - rowDot), k + key, D);
        }
      }
    }

    // dk_j = scale · Σ_{h in group, i ≥ j} dS_ij q_i ; dv_j = Σ P_ij dout_i
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t j = 0; j < T; ++j) {
      for (int64_t kvHead = 0; kvHead < nHeadKv; ++kvHead) {
        const float* key = k + (j * nHeadKv + kvHead) * D;    // (D)
        const float* value = v + (j * nHeadKv + kvHead) * D;  // (D)
        float* gradKey = dk + (j * nHeadKv + kvHead) * D;     // (D)
        float* gradValue = dv + (j * nHeadKv + kvHead) * D;   // (D)
        for (int64_t d = 0; d < D; ++d) gradKey[d] = gradValue[d] = 0.0f;
        const int64_t count = seqEnd[j] - j;
        for (int64_t h = kvHead * group; h < (kvHead + 1) * group; ++h) {
          for (int64_t n = 0; n < count; ++n) {
            const int64_t i = j + n;
            probabilities[n] = dot(q + (i * nHead + h) * D, key, D) * scale - lse[h * T + i];
          }
          expShifted(probabilities, count, 0.0f);
          for (int64_t n = 0; n < count; ++n) {
            const int64_t i = j + n;
            const float* gradOut = dout + (i * nHead + h) * D;
            const float dp = dot(gradOut, value, D);
            axpy(gradValue, probabilities[n], gradOut, D);
            axpy(gradKey, scale * probabilities[n] * (dp - rowDots[h * T + i]), q + (i * nHead + h) * D, D);
          }
        }
      }
    }
  }
}

}  // namespace thinktune::kernels
