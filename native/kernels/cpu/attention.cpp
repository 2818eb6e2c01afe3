#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/threading.h"

namespace thinktune::kernels {

namespace {
constexpr int64_t kBlock = 64;  // queries (forward, dq) or keys (dk, dv) per block

inline float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
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

// row (n): entries [begin, end) become exp(row − shift), the rest 0; returns the sum
inline float expMasked(float* row, int64_t n, int64_t begin, int64_t end, float shift) {
  float sum = 0.0f;
  for (int64_t j = 0; j < begin; ++j) row[j] = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = begin; j < end; ++j) {
    row[j] = expNonPositive(row[j] - shift);
    sum += row[j];
  }
  for (int64_t j = end; j < n; ++j) row[j] = 0.0f;
  return sum;
}

// Per-thread pieces of the workspace: the GEMM's packing space and two (kBlock, T) score blocks.
struct ThreadSpace {
  float* gemm;
  float* scores;  // (kBlock, T)
  float* grads;   // (kBlock, T)
};

int64_t threadFloats(int64_t maxT) {
  const int64_t gemmFloats = (static_cast<int64_t>(gemmWorkspaceFloats(1)) + 15) / 16 * 16;  // keeps 64-byte alignment
  return gemmFloats + 2 * kBlock * ((maxT + 15) / 16 * 16);
}

ThreadSpace threadSpace(float* workspace, int64_t nHead, int64_t T) {
  const int64_t rowDots = (nHead * T + 15) / 16 * 16;
  float* base = workspace + rowDots + omp_get_thread_num() * threadFloats(T);
  const int64_t gemmFloats = (static_cast<int64_t>(gemmWorkspaceFloats(1)) + 15) / 16 * 16;
  return {base, base + gemmFloats, base + gemmFloats + kBlock * ((T + 15) / 16 * 16)};
}
}  // namespace

size_t attentionWorkspaceFloats(int64_t maxT, int64_t nHead, int threads) {
  // D_i = dout_i·out_i per (head, position), then one ThreadSpace per thread
  return static_cast<size_t>((nHead * maxT + 15) / 16 * 16 + threads * threadFloats(maxT));
}

// Inside the parallel loops below the GEMM calls run on their own thread (OpenMP does not nest).
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                       const int32_t* seqStart, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                       float scale, float* workspace) {
  const int64_t group = nHead / nHeadKv;
  const int64_t blocks = (T + kBlock - 1) / kBlock;
  const ptrdiff_t qStride = nHead * D, kvStride = nHeadKv * D;
#pragma omp parallel if (T * T * nHead * D / 2 >= kParallelMinWork)
  {
    const ThreadSpace space = threadSpace(workspace, nHead, T);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t h = 0; h < nHead; ++h) {
        const int64_t kvHead = h / group;
        const int64_t i0 = block * kBlock, rows = std::min(kBlock, T - i0);
        const int64_t j0 = seqStart[i0], n = i0 + rows - j0;  // keys any query of the block may see
        float* scores = space.scores;                          // (rows, n)
        // scores = scale · Q_block · K_rangeᵀ
        gemm(rows, n, D, scale, q + i0 * qStride + h * D, qStride, 1, k + j0 * kvStride + kvHead * D, 1, kvStride,
             scores, n, false, space.gemm);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r, begin = seqStart[i] - j0, end = i - j0 + 1;
          float* row = scores + r * n;
          float maxScore = -INFINITY;
          for (int64_t j = begin; j < end; ++j) maxScore = std::max(maxScore, row[j]);
          const float sum = expMasked(row, n, begin, end, maxScore);
          const float inverse = 1.0f / sum;
#pragma omp simd
          for (int64_t j = begin; j < end; ++j) row[j] *= inverse;
          lse[h * T + i] = maxScore + std::log(sum);
        }
        // out_block = P · V_range
        gemm(rows, D, n, 1.0f, scores, n, 1, v + j0 * kvStride + kvHead * D, kvStride, 1, out + i0 * qStride + h * D,
             qStride, false, space.gemm);
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, const int32_t* seqStart,
                        const int32_t* seqEnd, int64_t T, int64_t nHead, int64_t nHeadKv, int64_t D,
                        float scale, float* workspace) {
  const int64_t group = nHead / nHeadKv;
  const int64_t blocks = (T + kBlock - 1) / kBlock;
  const ptrdiff_t qStride = nHead * D, kvStride = nHeadKv * D;
  float* rowDots = workspace;  // (nHead, T): D_i = dout_i · out_i
#pragma omp parallel if (T * T * nHead * D / 2 >= kParallelMinWork)
  {
    const ThreadSpace space = threadSpace(workspace, nHead, T);
#pragma omp for collapse(2) schedule(static)
    for (int64_t h = 0; h < nHead; ++h)
      for (int64_t i = 0; i < T; ++i) rowDots[h * T + i] = dot(dout + i * qStride + h * D, out + i * qStride + h * D, D);

    // dq_i = scale · Σ_j P_ij (dP_ij − D_i) k_j with dP_ij = dout_i · v_j, a block of queries at a time
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t h = 0; h < nHead; ++h) {
        const int64_t kvHead = h / group;
        const int64_t i0 = block * kBlock, rows = std::min(kBlock, T - i0);
        const int64_t j0 = seqStart[i0], n = i0 + rows - j0;
        float* probabilities = space.scores;  // (rows, n)
        float* dScores = space.grads;         // (rows, n)
        gemm(rows, n, D, scale, q + i0 * qStride + h * D, qStride, 1, k + j0 * kvStride + kvHead * D, 1, kvStride,
             probabilities, n, false, space.gemm);
        gemm(rows, n, D, 1.0f, dout + i0 * qStride + h * D, qStride, 1, v + j0 * kvStride + kvHead * D, 1, kvStride,
             dScores, n, false, space.gemm);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          float* p = probabilities + r * n;
          float* ds = dScores + r * n;
          expMasked(p, n, seqStart[i] - j0, i - j0 + 1, lse[h * T + i]);
          const float rowDot = rowDots[h * T + i];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - rowDot);
        }
        gemm(rows, D, n, scale, dScores, n, 1, k + j0 * kvStride + kvHead * D, kvStride, 1, dq + i0 * qStride + h * D,
             qStride, false, space.gemm);
      }
    }

    // dk_j = scale · Σ_{h in group, i ≥ j} dS_ij q_i and dv_j = Σ P_ij dout_i, a block of keys at a time
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      for (int64_t kvHead = 0; kvHead < nHeadKv; ++kvHead) {
        const int64_t j0 = block * kBlock, cols = std::min(kBlock, T - j0);
        const int64_t i0 = j0, m = seqEnd[j0 + cols - 1] - i0;  // queries that may see a key of the block
        float* probabilities = space.scores;  // (cols, m)
        float* dScores = space.grads;         // (cols, m)
        for (int64_t h = kvHead * group; h < (kvHead + 1) * group; ++h) {
          const bool accumulate = h > kvHead * group;
          gemm(cols, m, D, scale, k + j0 * kvStride + kvHead * D, kvStride, 1, q + i0 * qStride + h * D, 1, qStride,
               probabilities, m, false, space.gemm);
          gemm(cols, m, D, 1.0f, v + j0 * kvStride + kvHead * D, kvStride, 1, dout + i0 * qStride + h * D, 1, qStride,
               dScores, m, false, space.gemm);
          for (int64_t c = 0; c < cols; ++c) {
            const int64_t j = j0 + c;
            float* p = probabilities + c * m;
            float* ds = dScores + c * m;
            const float* logSumExp = lse + h * T + i0;
            const float* dots = rowDots + h * T + i0;
            const int64_t begin = j - i0, end = seqEnd[j] - i0;
            for (int64_t x = 0; x < begin; ++x) p[x] = ds[x] = 0.0f;
#pragma omp simd
            for (int64_t x = begin; x < end; ++x) {
              p[x] = expNonPositive(p[x] - logSumExp[x]);
              ds[x] = p[x] * (ds[x] - dots[x]);
            }
            for (int64_t x = end; x < m; ++x) p[x] = ds[x] = 0.0f;
          }
          // dv_block (+)= P · dout_range ; dk_block (+)= scale · dS · q_range
          gemm(cols, D, m, 1.0f, probabilities, m, 1, dout + i0 * qStride + h * D, qStride, 1,
               dv + j0 * kvStride + kvHead * D, kvStride, accumulate, space.gemm);
          gemm(cols, D, m, scale, dScores, m, 1, q + i0 * qStride + h * D, qStride, 1, dk + j0 * kvStride + kvHead * D,
               kvStride, accumulate, space.gemm);
        }
      }
    }
  }
}

}  // namespace thinktune::kernels
