// Fused causal grouped-query attention inside packed sequences, FlashAttention-2 style on the
// tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate; sm_80 and later): scores and
// probabilities live in registers and shared memory only, never in device memory.
//
// Forward: a block owns BM = 16·warps query rows of one query head and walks the key tiles they
// can see (BN = 64 keys, double-buffered with cp.async), keeping the running max and sum of the
// online softmax per row; it writes O (bf16) and the row's log-sum-exp.
// Backward: a block owns BN = 16·warps keys of one query head (so every query head's work is its
// own block: the causal triangle balances across the grid) and walks the query tiles that can see
// them, recomputing P from the saved log-sum-exp: dV += Pᵀ·dO, dS = P∘(dP − D), dK += dSᵀ·Q in
// registers, dQ += dS·K added to device memory with atomics; at the end the block adds its dK, dV
// to its kv head's (the group's query heads share one kv head).
// On Hopper with an sm_90a build, head dimension 128 runs the wgmma kernels further down instead.
// Key j is visible to query i when seqStart[i] <= j <= i, as in kernels/cpu/attention.cpp.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/flash_attention.h"

namespace thinktune::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kQueryTile = 64;  // backward: queries per step

// ---- tensor-core and copy primitives ----

__device__ inline uint32_t smemAddress(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// A (rows × D) bf16 tile in shared memory, 16-byte chunks of each row XOR-swizzled by the row
// (chunk c of row r at c ^ (r & 7)) so that ldmatrix's eight row reads hit eight distinct banks.
template <int D, class Element>
__device__ inline Element* tileAt(Element* tile, int row, int col) {
  return tile + row * D + (((col >> 3) ^ (row & 7)) << 3);
}

// tile (rows, D) = rows [row0, row0 + rows) of a (T, ·) matrix with `stride` elements per row, rows
// past T zero-filled, element (r, c) at at(r, c) in shared memory. Asynchronous: completes at the next
// cp.async wait.
template <int D, class At>
__device__ inline void loadRows(const bf16* source, int64_t stride, int row0, int rows, int T, At at) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, chunk = c % kChunks, row = row0 + r;
    const bf16* from = source + static_cast<int64_t>(row < T ? row : T - 1) * stride + chunk * 8;
    const uint32_t to = smemAddress(at(r, chunk * 8));
    const int bytes = row < T ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(from), "r"(bytes));
  }
}
template <int D>
__device__ inline void loadTile(bf16* tile, const bf16* source, int64_t stride, int row0, int rows, int T) {
  loadRows<D>(source, stride, row0, rows, T, [tile](int r, int c) { return tileAt<D>(tile, r, c); });
}

// *to = *from (4 bytes) when bytes is 4, 0 when it is 0; asynchronous, as loadTile
template <class Word>
__device__ inline void copyWordAsync(Word* to, const Word* from, int bytes) {
  static_assert(sizeof(Word) == 4, "4-byte words");
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smemAddress(to)), "l"(from), "r"(bytes));
}

// the end of the sequence holding `position` in a packed row: the first i > position whose sequence
// starts after it (seqStart is non-decreasing), or T
__device__ inline int sequenceEnd(const int32_t* seqStart, int T, int position) {
  int low = position + 1, high = T;
  while (low < high) {
    const int middle = (low + high) / 2;
    if (seqStart[middle] > position) high = middle;
    else low = middle + 1;
  }
  return low;
}

__device__ inline void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ inline void ldmatrix4(uint32_t (&r)[4], const void* pointer) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddress(pointer)));
}
__device__ inline void ldmatrix4Trans(uint32_t (&r)[4], const void* pointer) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddress(pointer)));
}

// c (16×8) += a (16×16) · b (16×8)
__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// target[0..1] += (a, b): one vector reduction on sm_90 (half the atomic traffic of the dQ sums)
__device__ inline void atomicAddPair(float* target, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(target), make_float2(a, b));
#else
  atomicAdd(target, a);
  atomicAdd(target + 1, b);
#endif
}

__device__ inline uint32_t packBf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// acc[m] (16 × N) += A_m (16 × D: rows aRow0 + 16·m.. of tile `a`, k along its columns) · Bᵀ, B's
// rows being the N rows bRow0.. of tile `b` (k along its columns too): the score product Q·Kᵀ and its
// relatives. Each B fragment serves all M row tiles, so more rows per warp read less shared memory.
template <int D, int N, int M>
__device__ inline void productABtRows(float (&acc)[M][N / 8][4], const bf16* a, int aRow0, const bf16* b, int bRow0,
                                      int lane) {
#pragma unroll
  for (int k0 = 0; k0 < D; k0 += 16) {
    uint32_t fa[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) ldmatrix4(fa[m], tileAt<D>(a, aRow0 + m * 16 + (lane & 15), k0 + ((lane >> 4) << 3)));
#pragma unroll
    for (int n = 0; n < N / 16; ++n) {
      uint32_t fb[4];  // two n8 tiles: rows n·16.. and n·16 + 8.., k0.. and k0 + 8..
      ldmatrix4(fb, tileAt<D>(b, bRow0 + n * 16 + (lane & 7) + ((lane >> 4) << 3), k0 + (((lane >> 3) & 1) << 3)));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma(acc[m][2 * n], fa[m], fb[0], fb[1]);
        mma(acc[m][2 * n + 1], fa[m], fb[2], fb[3]);
      }
    }
  }
}
template <int D, int N>
__device__ inline void productABt(float (&acc)[N / 8][4], const bf16* a, int aRow0, const bf16* b, int bRow0,
                                  int lane) {
  productABtRows<D, N, 1>(reinterpret_cast<float(&)[1][N / 8][4]>(acc), a, aRow0, b, bRow0, lane);
}

// acc[m] (16 × D) += P_m (16 × K, register fragments of a (16 × K) accumulator converted to bf16) · V
// where V is rows vRow0.. of tile `v` (K rows, D columns): the value product P·V and its relatives.
template <int D, int K, int M>
__device__ inline void productPVRows(float (&acc)[M][D / 8][4], const uint32_t (&p)[M][K / 16][4], const bf16* v,
                                     int vRow0, int lane) {
#pragma unroll
  for (int kc = 0; kc < K / 16; ++kc) {
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      uint32_t fb[4];  // rows k (keys) kc·16.., columns n·16.. and n·16 + 8.., transposed
      ldmatrix4Trans(fb, tileAt<D>(v, vRow0 + kc * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), n * 16 + ((lane >> 4) << 3)));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma(acc[m][2 * n], p[m][kc], fb[0], fb[1]);
        mma(acc[m][2 * n + 1], p[m][kc], fb[2], fb[3]);
      }
    }
  }
}
template <int D, int K>
__device__ inline void productPV(float (&acc)[D / 8][4], const uint32_t (&p)[K / 16][4], const bf16* v, int vRow0,
                                 int lane) {
  productPVRows<D, K, 1>(reinterpret_cast<float(&)[1][D / 8][4]>(acc),
                         reinterpret_cast<const uint32_t(&)[1][K / 16][4]>(p), v, vRow0, lane);
}

// The A fragments of a (16 × K) accumulator, as bf16: n8 tiles 2k and 2k + 1 make k16 slice k.
template <int K>
__device__ inline void accumulatorToA(uint32_t (&p)[K / 16][4], const float (&s)[K / 8][4]) {
#pragma unroll
  for (int k = 0; k < K / 16; ++k) {
    p[k][0] = packBf16(s[2 * k][0], s[2 * k][1]);
    p[k][1] = packBf16(s[2 * k][2], s[2 * k][3]);
    p[k][2] = packBf16(s[2 * k + 1][0], s[2 * k + 1][1]);
    p[k][3] = packBf16(s[2 * k + 1][2], s[2 * k + 1][3]);
  }
}

template <int N>
__device__ inline void zeroAccumulator(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
}

// The forward's end for one 16-row tile of a warp (this thread's rows g and g + 8): O = o / Σ in bf16
// and the rows' log-sum-exp (natural log) from the log2-domain max and the partial sums of the quad.
template <int D>
__device__ inline void storeRows(bf16* out, float* lse, const float (&o)[D / 8][4], const float (&rowMax)[2],
                                 const float (&rowSum)[2], const int (&rows)[2], int h, int nHead, int T, int lane) {
  const int64_t qStride = static_cast<int64_t>(nHead) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = rowSum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = rows[r];
    if (row >= T) continue;
    const float inverse = 1.0f / sum;
    bf16* target = out + row * qStride + static_cast<int64_t>(h) * D + (lane % 4) * 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<__nv_bfloat162*>(target + n * 8) =
          __floats2bfloat162_rn(o[n][2 * r] * inverse, o[n][2 * r + 1] * inverse);
    }
    if (lane % 4 == 0) lse[static_cast<int64_t>(h) * T + row] = (rowMax[r] + log2f(sum)) * kLn2;
  }
}

// A warp's 16 × 64 block of dQ (rows row0.., columns col0.. of query head h; this thread's rows g and
// g + 8), scaled, added to device memory with atomics (other key blocks add to the same rows).
template <int D>
__device__ inline void addQueryGradients(float* dq, const float (&acc)[8][4], int row0, int col0, int h, int nHead,
                                         int T, float scale, int lane) {
  const int64_t qStride = static_cast<int64_t>(nHead) * D;
  const int rowA = row0 + lane / 4, rowB = rowA + 8;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int col = col0 + n * 8 + (lane % 4) * 2;
    if (rowA < T) atomicAddPair(dq + rowA * qStride + static_cast<int64_t>(h) * D + col, acc[n][0] * scale, acc[n][1] * scale);
    if (rowB < T) atomicAddPair(dq + rowB * qStride + static_cast<int64_t>(h) * D + col, acc[n][2] * scale, acc[n][3] * scale);
  }
}

// The backward's end: this thread's keys' (key0, key1 = its rows g and g + 8) share of its kv head's dK
// (scaled) and dV, added with atomics (the group's query heads add to one kv head).
template <int D>
__device__ inline void addKeyGradients(float* dk, float* dv, const float (&dkAcc)[D / 8][4],
                                       const float (&dvAcc)[D / 8][4], int key0, int key1, int hk, int nHeadKv,
                                       int T, float scale, int lane) {
  const int64_t kStride = static_cast<int64_t>(nHeadKv) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = r == 0 ? key0 : key1;
    if (key >= T) continue;
    float* targetK = dk + key * kStride + static_cast<int64_t>(hk) * D + (lane % 4) * 2;
    float* targetV = dv + key * kStride + static_cast<int64_t>(hk) * D + (lane % 4) * 2;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      atomicAddPair(targetK + n * 8, dkAcc[n][2 * r] * scale, dkAcc[n][2 * r + 1] * scale);
      atomicAddPair(targetV + n * 8, dvAcc[n][2 * r], dvAcc[n][2 * r + 1]);
    }
  }
}

// ---- forward ----

// kRowTiles 16-row tiles per warp: BM = 16·kRowTiles·warps query rows a block; with two row tiles a
// warp the key step is 32 (the accumulators of 32 rows × 64 keys would not fit the registers).
template <int D, int kWarps, int kRowTiles>
struct ForwardTiles {
  static constexpr int BM = 16 * kRowTiles * kWarps;
  static constexpr int BN = kRowTiles == 1 ? 64 : 32;
  static constexpr int kSharedBytes = (BM + 4 * BN) * D * 2;  // Q, then K and V double-buffered
};

// grid (nHead, query tiles), heaviest tiles (the last queries see the most keys) first.
template <int D, int kWarps, int kRowTiles>
__global__ void __launch_bounds__(kWarps * 32)
    flash_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                         const bf16* __restrict__ k, const bf16* __restrict__ v, const int32_t* __restrict__ seqStart,
                         int T, int nHead, int nHeadKv, float scaleLog2) {
  using Tiles = ForwardTiles<D, kWarps, kRowTiles>;
  constexpr int BM = Tiles::BM, BN = Tiles::BN, M = kRowTiles;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* sQ = reinterpret_cast<bf16*>(shared);  // (BM, D)
  bf16* sK = sQ + BM * D;                      // (2, BN, D)
  bf16* sV = sK + 2 * BN * D;                  // (2, BN, D)

  const int h = blockIdx.x, hk = h / (nHead / nHeadKv);
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qStride = static_cast<int64_t>(nHead) * D, kStride = static_cast<int64_t>(nHeadKv) * D;
  const bf16* qHead = q + static_cast<int64_t>(h) * D;
  const bf16* kHead = k + static_cast<int64_t>(hk) * D;
  const bf16* vHead = v + static_cast<int64_t>(hk) * D;

  const int lastQuery = min(m0 + BM, T) - 1;
  const int keyBegin = (seqStart[m0] / BN) * BN, keyEnd = lastQuery + 1;  // keys [keyBegin, keyEnd)
  const int tileSeqMax = seqStart[lastQuery];

  // this thread's two rows (g and g + 8) of each of the warp's row tiles
  const int warpRow0 = warp * 16 * M;
  int rows[M][2], starts[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      rows[m][r] = m0 + warpRow0 + m * 16 + lane / 4 + 8 * r;
      starts[m][r] = rows[m][r] < T ? seqStart[rows[m][r]] : 0x7fffffff;
    }
  }

  loadTile<D>(sQ, qHead, qStride, m0, BM, T);
  loadTile<D>(sK, kHead, kStride, keyBegin, BN, T);
  loadTile<D>(sV, vHead, kStride, keyBegin, BN, T);
  cpAsyncCommit();

  float o[M][D / 8][4];
  float rowMax[M][2], rowSum[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    zeroAccumulator(o[m]);
    rowMax[m][0] = rowMax[m][1] = -INFINITY;
    rowSum[m][0] = rowSum[m][1] = 0.0f;
  }

  int buffer = 0;
  for (int n0 = keyBegin; n0 < keyEnd; n0 += BN, buffer ^= 1) {
    if (n0 + BN < keyEnd) {  // prefetch the next key tile into the other buffer
      loadTile<D>(sK + (buffer ^ 1) * BN * D, kHead, kStride, n0 + BN, BN, T);
      loadTile<D>(sV + (buffer ^ 1) * BN * D, vHead, kStride, n0 + BN, BN, T);
    }
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    const bf16* tileK = sK + buffer * BN * D;
    const bf16* tileV = sV + buffer * BN * D;

    float s[M][BN / 8][4];
#pragma unroll
    for (int m = 0; m < M; ++m) zeroAccumulator(s[m]);
    productABtRows<D, BN, M>(s, sQ, warpRow0, tileK, 0, lane);

    // mask only where the tile crosses the diagonal, a sequence start or the end of the row
    const bool masked = n0 + BN - 1 > m0 || n0 < tileSeqMax || n0 + BN > T || m0 + BM > T;
    uint32_t p[M][BN / 16][4];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + n * 8 + (lane % 4) * 2 + (e & 1);
          const int row = rows[m][e / 2], start = starts[m][e / 2];
          float value = s[m][n][e] * scaleLog2;
          if (masked && (key > row || key < start || row >= T)) value = -INFINITY;
          s[m][n][e] = value;
          tileMax[e / 2] = fmaxf(tileMax[e / 2], value);
        }
      }
      float reference[2], rescale[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffffu, tileMax[r], 1));
        tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffffu, tileMax[r], 2));
        const float newMax = fmaxf(rowMax[m][r], tileMax[r]);
        reference[r] = newMax == -INFINITY ? 0.0f : newMax;  // a row that has seen no key yet stays 0
        rescale[r] = exp2f(rowMax[m][r] - reference[r]);
        rowMax[m][r] = newMax;
        rowSum[m][r] *= rescale[r];
      }
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[m][n][e] = exp2f(s[m][n][e] - reference[e / 2]);
          rowSum[m][e / 2] += s[m][n][e];
        }
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[m][n][0] *= rescale[0];
        o[m][n][1] *= rescale[0];
        o[m][n][2] *= rescale[1];
        o[m][n][3] *= rescale[1];
      }
      accumulatorToA<BN>(p[m], s[m]);
    }
    productPVRows<D, BN, M>(o, p, tileV, 0, lane);
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }

#pragma unroll
  for (int m = 0; m < M; ++m) storeRows<D>(out, lse, o[m], rowMax[m], rowSum[m], rows[m], h, nHead, T, lane);
}

// ---- backward ----

// rowDots (nHead, T) = Σ_d dO·O per query and head: the D of dS = P∘(dP − D). One warp per (i, h).
template <int D>
__global__ void row_dots_kernel(float* rowDots, const bf16* dout, const bf16* out, int T, int nHead) {
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (item >= static_cast<int64_t>(T) * nHead) return;
  const int i = static_cast<int>(item / nHead), h = static_cast<int>(item % nHead);
  const bf16* a = dout + item * D;  // (T, nHead, D): item = i·nHead + h
  const bf16* b = out + item * D;
  float sum = 0.0f;
  for (int d = lane * 2; d < D; d += 64) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a + d));
    const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(b + d));
    sum += x.x * y.x + x.y * y.y;
  }
  sum = warpSum(sum);
  if (lane == 0) rowDots[static_cast<int64_t>(h) * T + i] = sum;
}

template <int D, int kWarps>
struct BackwardTiles {
  static constexpr int BN = 16 * kWarps, BM = kQueryTile;
  // K, V (BN, D); Q, dO (2, BM, D); dSᵀ (BN, BM); per query: log2-sum-exp, rowDots, seqStart (2, BM)
  static constexpr int kSharedBytes = 2 * BN * D * 2 + 4 * BM * D * 2 + BN * BM * 2 + 2 * 3 * BM * 4;
};

// grid (nHead, key tiles): a block's keys j ∈ [n0, n0 + BN) of query head h; the first key tiles
// (seen by the most queries) first.
template <int D, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    flash_backward_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                          const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
                          const bf16* __restrict__ v, const float* __restrict__ lse,
                          const float* __restrict__ rowDots, const int32_t* __restrict__ seqStart, int T, int nHead,
                          int nHeadKv, float scale) {
  using Tiles = BackwardTiles<D, kWarps>;
  constexpr int BN = Tiles::BN, BM = Tiles::BM;
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* sK = reinterpret_cast<bf16*>(shared);  // (BN, D)
  bf16* sV = sK + BN * D;                      // (BN, D)
  bf16* sQ = sV + BN * D;                      // (2, BM, D)
  bf16* sDo = sQ + 2 * BM * D;                 // (2, BM, D)
  bf16* sDs = sDo + 2 * BM * D;                // (BN, BM) dSᵀ, rows padded by 8 against bank conflicts
  float* sLse = reinterpret_cast<float*>(sDs + BN * BM);  // (2, BM) log2-domain
  float* sDot = sLse + 2 * BM;                            // (2, BM)
  int32_t* sStart = reinterpret_cast<int32_t*>(sDot + 2 * BM);  // (2, BM)

  const int h = blockIdx.x, hk = h / (nHead / nHeadKv);
  const int n0 = blockIdx.y * BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qStride = static_cast<int64_t>(nHead) * D, kStride = static_cast<int64_t>(nHeadKv) * D;
  const bf16* qHead = q + static_cast<int64_t>(h) * D;
  const bf16* doHead = dout + static_cast<int64_t>(h) * D;
  const float scaleLog2 = scale * kLog2e;
  const int lastKey = min(n0 + BN, T) - 1;

  // queries that can see a key of this tile: from the tile's first key to the end of its last key's
  // sequence, found once (a per-step read of seqStart in device memory would stall every warp)
  const int queryBegin = (n0 / BM) * BM, queryEnd = sequenceEnd(seqStart, T, lastKey);
  auto loadQueries = [&](int m0, int slot) {
    loadTile<D>(sQ + slot * BM * D, qHead, qStride, m0, BM, T);
    loadTile<D>(sDo + slot * BM * D, doHead, qStride, m0, BM, T);
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
      const int row = m0 + i;
      const bool valid = row < T;
      sLse[slot * BM + i] = valid ? lse[static_cast<int64_t>(h) * T + row] * kLog2e : INFINITY;
      sDot[slot * BM + i] = valid ? rowDots[static_cast<int64_t>(h) * T + row] : 0.0f;
      sStart[slot * BM + i] = valid ? seqStart[row] : 0x7fffffff;
    }
  };

  loadTile<D>(sK, k + static_cast<int64_t>(hk) * D, kStride, n0, BN, T);
  loadTile<D>(sV, v + static_cast<int64_t>(hk) * D, kStride, n0, BN, T);
  if (queryBegin < queryEnd) loadQueries(queryBegin, 0);
  cpAsyncCommit();

  float dkAcc[D / 8][4], dvAcc[D / 8][4];
  zeroAccumulator(dkAcc);
  zeroAccumulator(dvAcc);
  // this thread's keys of the warp's 16: g and g + 8
  const int key0 = n0 + warp * 16 + lane / 4, key1 = key0 + 8;

  int slot = 0;
  for (int m0 = queryBegin; m0 < queryEnd; m0 += BM, slot ^= 1) {
    if (m0 + BM < queryEnd) loadQueries(m0 + BM, slot ^ 1);
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    const bf16* tileQ = sQ + slot * BM * D;
    const bf16* tileDo = sDo + slot * BM * D;
    const float* tileLse = sLse + slot * BM;
    const float* tileDot = sDot + slot * BM;
    const int32_t* tileStart = sStart + slot * BM;

    // Pᵀ (16 keys × BM queries) = exp2(scale·log2e · K·Qᵀ − lse2), masked to 0
    float p[BM / 8][4];
    zeroAccumulator(p);
    productABt<D, BM>(p, sK, warp * 16, tileQ, 0, lane);
    const int lastQuery = min(m0 + BM, T) - 1;
    const bool masked = lastKey > m0 || tileStart[lastQuery - m0] > n0 || m0 + BM > T || n0 + BN > T;
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = n * 8 + (lane % 4) * 2 + (e & 1);
        const int query = m0 + column, key = e < 2 ? key0 : key1;
        const bool visible = !masked || (key <= query && key >= tileStart[column] && key < T && query < T);
        p[n][e] = visible ? exp2f(p[n][e] * scaleLog2 - tileLse[column]) : 0.0f;
      }
    }
    // dPᵀ (16 keys × BM) = V·dOᵀ
    float dp[BM / 8][4];
    zeroAccumulator(dp);
    productABt<D, BM>(dp, sV, warp * 16, tileDo, 0, lane);

    // dV += Pᵀ·dO
    uint32_t fragment[BM / 16][4];
    accumulatorToA<BM>(fragment, p);
    productPV<D, BM>(dvAcc, fragment, tileDo, 0, lane);

    // dSᵀ = Pᵀ∘(dPᵀ − D); dK += dSᵀ·Q; dSᵀ to shared memory for dQ
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = n * 8 + (lane % 4) * 2 + (e & 1);
        dp[n][e] = p[n][e] * (dp[n][e] - tileDot[column]);
      }
    }
    accumulatorToA<BM>(fragment, dp);
    productPV<D, BM>(dkAcc, fragment, tileQ, 0, lane);
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
      const int column = n * 8 + (lane % 4) * 2;
      const int r0 = warp * 16 + lane / 4, r1 = r0 + 8;
      *reinterpret_cast<uint32_t*>(tileAt<BM>(sDs, r0, column) + (column & 7)) = fragment[n / 2][(n & 1) * 2];
      *reinterpret_cast<uint32_t*>(tileAt<BM>(sDs, r1, column) + (column & 7)) = fragment[n / 2][(n & 1) * 2 + 1];
    }
    __syncthreads();  // dSᵀ written, every read of this step's Q/dO slot done

    // dQ (BM × D) += scale · dS (BM × BN) · K (BN × D), in units of 16 queries × 64 columns
    constexpr int kUnits = (BM / 16) * (D / 64);
    for (int unit = warp; unit < kUnits; unit += kWarps) {
      const int qRow0 = (unit % (BM / 16)) * 16, col0 = (unit / (BM / 16)) * 64;
      float acc[8][4];
      zeroAccumulator(acc);
#pragma unroll
      for (int kc = 0; kc < BN / 16; ++kc) {
        uint32_t fa[4];  // A[m = query][k = key] = dSᵀ[key][query]: transposed load of rows kc·16..
        ldmatrix4Trans(fa, tileAt<BM>(sDs, kc * 16 + (lane & 7) + ((lane >> 4) << 3), qRow0 + (((lane >> 3) & 1) << 3)));
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          uint32_t fb[4];
          ldmatrix4Trans(fb, tileAt<D>(sK, kc * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), col0 + n * 16 + ((lane >> 4) << 3)));
          mma(acc[2 * n], fa, fb[0], fb[1]);
          mma(acc[2 * n + 1], fa, fb[2], fb[3]);
        }
      }
      addQueryGradients<D>(dq, acc, m0 + qRow0, col0, h, nHead, T, scale, lane);
    }
    // no barrier here: the next step rewrites this Q/dO slot only after every thread passed the one
    // above (all its reads done), and sDs after the next step's first barrier
  }

  addKeyGradients<D>(dk, dv, dkAcc, dvAcc, key0, key1, hk, nHeadKv, T, scale, lane);
}

// ---- Hopper (sm_90a): warpgroup MMA (wgmma) ----
//
// The same algorithms for head dimension 128, but each product is a chain of asynchronous warpgroup
// MMAs whose B operand (and A, where it is not a register fragment) the tensor cores read straight
// from 128-byte-swizzled shared memory: no ldmatrix re-reads of shared tiles per warp and no fragment
// registers, so larger tiles fit.
// Forward: a block is two warpgroups owning 64 query rows each (BM = 128) of one query head; per key
// tile of BN = 64 keys (double-buffered with cp.async) each warpgroup computes S = Q·Kᵀ (64 × 64),
// runs the online softmax on it in registers, and adds P·V (P as register fragments) to its 64 × 128
// output. Two blocks share an SM, so one's softmax overlaps the other's products.
// Backward: a block is two warpgroups owning BN = 128 keys (64 each) of one query head; per 64-query
// step each warpgroup computes Pᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (64 × 64), then dV += Pᵀ·dO and dK += dSᵀ·Q
// (Pᵀ and dSᵀ as register fragments), writes dSᵀ to shared memory, and each warpgroup computes
// dQ = dS·K for its half of the head dimension, added to device memory with atomics.

struct HopperForwardTiles {
  static constexpr int D = 128, BM = 128, BN = 64;
  // Q, then K and V double-buffered; 1024 bytes to align the tiles to the swizzle period
  static constexpr int kSharedBytes = (BM + 4 * BN) * D * 2 + 1024;
};

struct HopperBackwardTiles {
  static constexpr int D = 128, BN = 128, BM = 64;
  // K, V (BN, D); Q, dO (2, BM, D); dSᵀ (BN, BM); per query: log-sum-exp, rowDots, seqStart (2, BM);
  // 1024 bytes to align the tiles
  static constexpr int kSharedBytes = 2 * BN * D * 2 + 4 * BM * D * 2 + BN * BM * 2 + 2 * 3 * BM * 4 + 1024;
};

// The host pass and the sm_90a device pass see the kernels; other architectures' passes (which the
// host never launches them on, see hopperKernelsRun) empty ones.
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Element offset of (row, col) in a (Rows × D) bf16 tile laid out as wgmma reads it with 128-byte
// swizzling: D in 64-column panels of Rows × 128 bytes, the 16-byte chunk c of row r at c ^ (r & 7).
// Tiles start on 1024 bytes (the swizzle pattern's period).
template <int Rows>
__device__ inline int swizzled128(int row, int col) {
  return (col >> 6) * Rows * 64 + row * 64 + ((((col & 63) >> 3) ^ (row & 7)) << 3) + (col & 7);
}

// loadTile into the wgmma layout
template <int D, int Rows>
__device__ inline void loadTileSwizzled(bf16* tile, const bf16* source, int64_t stride, int row0, int T) {
  loadRows<D>(source, stride, row0, Rows, T, [tile](int r, int c) { return tile + swizzled128<Rows>(r, c); });
}

// wgmma's shared-memory matrix descriptor of a 128-byte-swizzled operand starting at `start`:
// K-major operands ignore the leading offset; MN-major ones step by it from one 64-column panel to
// the next. Eight rows (1024 bytes) apart is the stride of both.
__device__ inline uint64_t matrixDescriptor(const bf16* start, uint32_t leadingBytes) {
  const uint32_t address = smemAddress(start);
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leadingBytes >> 4) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

// the descriptor of the same operand `bytes` further on in shared memory (the offset stays within the
// start address field: shared addresses are below 2^18)
__device__ inline uint64_t advanced(uint64_t descriptor, int bytes) { return descriptor + (bytes >> 4); }

// 2^x; flushes denormal results to 0, as the softmax's smallest terms may be
__device__ inline float exp2Fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ inline void wgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ inline void wgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ inline void wgmmaWaitAll() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// makes this thread's shared-memory writes (stores, completed cp.async) visible to wgmma's reads
__device__ inline void fenceSharedForAsyncProxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// keeps the compiler from moving reads or writes of an accumulator across an asynchronous MMA
template <int N>
__device__ inline void pinAccumulator(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i][0]), "+f"(acc[i][1]), "+f"(acc[i][2]), "+f"(acc[i][3])::"memory");
}

#define THINKTUNE_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])

// d (64 × 64) += A (64 × 16) · B (16 × 64), both from shared memory; TransA/TransB: MN-major operands
template <int TransA, int TransB>
__device__ inline void wgmma64x64(float (&d)[8][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, %36;\n}\n"
      : THINKTUNE_ACC4(d, 0), THINKTUNE_ACC4(d, 1), THINKTUNE_ACC4(d, 2), THINKTUNE_ACC4(d, 3), THINKTUNE_ACC4(d, 4),
        THINKTUNE_ACC4(d, 5), THINKTUNE_ACC4(d, 6), THINKTUNE_ACC4(d, 7)
      : "l"(a), "l"(b), "r"(1), "n"(TransA), "n"(TransB));
}

// d (64 × 128) += A (64 × 16, register fragments as mma.sync's A) · B (16 × 128, MN-major in shared memory)
__device__ inline void wgmma64x128RegisterA(float (&d)[16][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "
      "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : THINKTUNE_ACC4(d, 0), THINKTUNE_ACC4(d, 1), THINKTUNE_ACC4(d, 2), THINKTUNE_ACC4(d, 3), THINKTUNE_ACC4(d, 4),
        THINKTUNE_ACC4(d, 5), THINKTUNE_ACC4(d, 6), THINKTUNE_ACC4(d, 7), THINKTUNE_ACC4(d, 8), THINKTUNE_ACC4(d, 9),
        THINKTUNE_ACC4(d, 10), THINKTUNE_ACC4(d, 11), THINKTUNE_ACC4(d, 12), THINKTUNE_ACC4(d, 13),
        THINKTUNE_ACC4(d, 14), THINKTUNE_ACC4(d, 15)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
#undef THINKTUNE_ACC4

// grid (nHead, key tiles), as flash_backward_kernel; head dimension 128
__global__ void __launch_bounds__(256, 1)
    flash_backward_hopper_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                                 const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                 const bf16* __restrict__ k, const bf16* __restrict__ v,
                                 const float* __restrict__ lse, const float* __restrict__ rowDots,
                                 const int32_t* __restrict__ seqStart, int T, int nHead, int nHeadKv, float scale) {
  constexpr int D = HopperBackwardTiles::D, BN = HopperBackwardTiles::BN, BM = HopperBackwardTiles::BM;
  extern __shared__ unsigned char sharedRaw[];
  unsigned char* shared = sharedRaw + ((1024 - (smemAddress(sharedRaw) & 1023)) & 1023);
  bf16* sK = reinterpret_cast<bf16*>(shared);  // (BN, D)
  bf16* sV = sK + BN * D;                      // (BN, D)
  bf16* sQ = sV + BN * D;                      // (2, BM, D)
  bf16* sDo = sQ + 2 * BM * D;                 // (2, BM, D)
  bf16* sDs = sDo + 2 * BM * D;                // (BN, BM) dSᵀ
  float* sLse = reinterpret_cast<float*>(sDs + BN * BM);        // (2, BM)
  float* sDot = sLse + 2 * BM;                                  // (2, BM)
  int32_t* sStart = reinterpret_cast<int32_t*>(sDot + 2 * BM);  // (2, BM)

  const int h = blockIdx.x, hk = h / (nHead / nHeadKv);
  const int n0 = blockIdx.y * BN;
  const int group = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const int64_t qStride = static_cast<int64_t>(nHead) * D, kStride = static_cast<int64_t>(nHeadKv) * D;
  const bf16* qHead = q + static_cast<int64_t>(h) * D;
  const bf16* doHead = dout + static_cast<int64_t>(h) * D;
  const float scaleLog2 = scale * kLog2e;
  const int lastKey = min(n0 + BN, T) - 1;

  // queries that can see a key of this tile: from the tile's first key to the end of its last key's
  // sequence, found once (a per-step read of seqStart in device memory would stall every warp)
  const int queryBegin = (n0 / BM) * BM, queryEnd = sequenceEnd(seqStart, T, lastKey);
  // the step's tiles and per-query values, all asynchronous; rows past T read as 0 (Q, dO, lse, rowDots,
  // seqStart), which the masked path sets apart (query >= T)
  auto loadQueries = [&](int m0, int slot) {
    loadTileSwizzled<D, BM>(sQ + slot * BM * D, qHead, qStride, m0, T);
    loadTileSwizzled<D, BM>(sDo + slot * BM * D, doHead, qStride, m0, T);
    for (int i = threadIdx.x; i < BM; i += blockDim.x) {
      const int row = min(m0 + i, T - 1), bytes = m0 + i < T ? 4 : 0;
      copyWordAsync(sLse + slot * BM + i, lse + static_cast<int64_t>(h) * T + row, bytes);
      copyWordAsync(sDot + slot * BM + i, rowDots + static_cast<int64_t>(h) * T + row, bytes);
      copyWordAsync(sStart + slot * BM + i, seqStart + row, bytes);
    }
  };

  loadTileSwizzled<D, BN>(sK, k + static_cast<int64_t>(hk) * D, kStride, n0, T);
  loadTileSwizzled<D, BN>(sV, v + static_cast<int64_t>(hk) * D, kStride, n0, T);
  if (queryBegin < queryEnd) loadQueries(queryBegin, 0);
  cpAsyncCommit();

  float dkAcc[D / 8][4], dvAcc[D / 8][4];
  zeroAccumulator(dkAcc);
  zeroAccumulator(dvAcc);
  // this thread's keys of its warpgroup's 64: the warp's 16 rows g and g + 8
  const int groupRow0 = group * 64;
  const int key0 = n0 + groupRow0 + warp * 16 + lane / 4, key1 = key0 + 8;
  constexpr uint32_t kKMajor = 16;  // the leading offset K-major operands ignore
  // this warpgroup's rows of K and V (K-major), dSᵀ (M-major) and K's columns of its dQ half (MN-major)
  const uint64_t kDescriptor = matrixDescriptor(sK + swizzled128<BN>(groupRow0, 0), kKMajor);
  const uint64_t vDescriptor = matrixDescriptor(sV + swizzled128<BN>(groupRow0, 0), kKMajor);
  const uint64_t dsDescriptor = matrixDescriptor(sDs, BN * 128);
  const uint64_t kColumnsDescriptor = matrixDescriptor(sK + swizzled128<BN>(0, group * 64), BN * 128);

  int slot = 0;
  for (int m0 = queryBegin; m0 < queryEnd; m0 += BM, slot ^= 1) {
    if (m0 + BM < queryEnd) loadQueries(m0 + BM, slot ^ 1);
    cpAsyncCommit();
    cpAsyncWait<1>();
    fenceSharedForAsyncProxy();
    __syncthreads();
    const bf16* tileQ = sQ + slot * BM * D;
    const bf16* tileDo = sDo + slot * BM * D;
    const float* tileLse = sLse + slot * BM;
    const float* tileDot = sDot + slot * BM;
    const int32_t* tileStart = sStart + slot * BM;

    // Sᵀ (64 keys × BM queries) = K·Qᵀ and dPᵀ = V·dOᵀ, the head dimension as k
    float p[BM / 8][4], dp[BM / 8][4];
    zeroAccumulator(p);
    zeroAccumulator(dp);
    pinAccumulator(p);
    pinAccumulator(dp);
    wgmmaFence();
    const uint64_t qDescriptor = matrixDescriptor(tileQ, kKMajor);
    const uint64_t doDescriptor = matrixDescriptor(tileDo, kKMajor);
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      wgmma64x64<0, 0>(p, advanced(kDescriptor, swizzled128<BN>(0, k0) * 2),
                       advanced(qDescriptor, swizzled128<BM>(0, k0) * 2));
    }
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      wgmma64x64<0, 0>(dp, advanced(vDescriptor, swizzled128<BN>(0, k0) * 2),
                       advanced(doDescriptor, swizzled128<BM>(0, k0) * 2));
    }
    wgmmaCommit();
    wgmmaWaitAll();
    pinAccumulator(p);
    pinAccumulator(dp);

    // Pᵀ = exp2(scale·log2e·Sᵀ − lse2), masked to 0; dSᵀ = Pᵀ∘(dPᵀ − D)
    const int lastQuery = min(m0 + BM, T) - 1;
    const bool masked = lastKey > m0 || tileStart[lastQuery - m0] > n0 || m0 + BM > T || n0 + BN > T;
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = n * 8 + (lane % 4) * 2 + (e & 1);
        p[n][e] = exp2Fast(p[n][e] * scaleLog2 - tileLse[column] * kLog2e);
      }
    }
    if (masked) {
#pragma unroll
      for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int column = n * 8 + (lane % 4) * 2 + (e & 1);
          const int query = m0 + column, key = e < 2 ? key0 : key1;
          if (key > query || key < tileStart[column] || key >= T || query >= T) p[n][e] = 0.0f;
        }
      }
    }
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[n][e] = p[n][e] * (dp[n][e] - tileDot[n * 8 + (lane % 4) * 2 + (e & 1)]);
    }
    uint32_t pFragment[BM / 16][4], dsFragment[BM / 16][4];
    accumulatorToA<BM>(pFragment, p);
    accumulatorToA<BM>(dsFragment, dp);

    // dV += Pᵀ·dO, dK += dSᵀ·Q: the queries as k, dO and Q MN-major (D their 128 columns)
    const uint64_t doRowsDescriptor = matrixDescriptor(tileDo, BM * 128);
    const uint64_t qRowsDescriptor = matrixDescriptor(tileQ, BM * 128);
    pinAccumulator(dvAcc);
    pinAccumulator(dkAcc);
    wgmmaFence();
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc)
      wgmma64x128RegisterA(dvAcc, pFragment[kc], advanced(doRowsDescriptor, swizzled128<BM>(kc * 16, 0) * 2));
#pragma unroll
    for (int kc = 0; kc < BM / 16; ++kc)
      wgmma64x128RegisterA(dkAcc, dsFragment[kc], advanced(qRowsDescriptor, swizzled128<BM>(kc * 16, 0) * 2));
    wgmmaCommit();
    // dSᵀ to shared memory for dQ while those run
#pragma unroll
    for (int n = 0; n < BM / 8; ++n) {
      const int column = n * 8 + (lane % 4) * 2;
      const int r0 = groupRow0 + warp * 16 + lane / 4, r1 = r0 + 8;
      *reinterpret_cast<uint32_t*>(sDs + swizzled128<BN>(r0, column)) = dsFragment[n / 2][(n & 1) * 2];
      *reinterpret_cast<uint32_t*>(sDs + swizzled128<BN>(r1, column)) = dsFragment[n / 2][(n & 1) * 2 + 1];
    }
    fenceSharedForAsyncProxy();
    wgmmaWaitAll();
    pinAccumulator(dvAcc);
    pinAccumulator(dkAcc);
    __syncthreads();  // both warpgroups' dSᵀ written, every read of this step's Q/dO slot done

    // dQ (BM × D) += scale · dS (BM × BN) · K (BN × D): this warpgroup's 64 columns of D, the keys as k;
    // dS read from dSᵀ (M-major), K MN-major
    float dqAcc[8][4];
    zeroAccumulator(dqAcc);
    pinAccumulator(dqAcc);
    wgmmaFence();
#pragma unroll
    for (int k0 = 0; k0 < BN; k0 += 16) {
      wgmma64x64<1, 1>(dqAcc, advanced(dsDescriptor, swizzled128<BN>(k0, 0) * 2),
                       advanced(kColumnsDescriptor, swizzled128<BN>(k0, 0) * 2));
    }
    wgmmaCommit();
    wgmmaWaitAll();
    pinAccumulator(dqAcc);
    addQueryGradients<D>(dq, dqAcc, m0 + warp * 16, group * 64, h, nHead, T, scale, lane);
    // no barrier here: the next step rewrites this Q/dO slot only after every thread passed the one
    // above (all its reads done), and sDs after the next step's first barrier
  }

  addKeyGradients<D>(dk, dv, dkAcc, dvAcc, key0, key1, hk, nHeadKv, T, scale, lane);
}

// grid (nHead, query tiles), heaviest tiles first, as flash_forward_kernel; head dimension 128
__global__ void __launch_bounds__(256, 2)
    flash_forward_hopper_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                                const bf16* __restrict__ k, const bf16* __restrict__ v,
                                const int32_t* __restrict__ seqStart, int T, int nHead, int nHeadKv,
                                float scaleLog2) {
  constexpr int D = HopperForwardTiles::D, BM = HopperForwardTiles::BM, BN = HopperForwardTiles::BN;
  extern __shared__ unsigned char sharedRaw[];
  unsigned char* shared = sharedRaw + ((1024 - (smemAddress(sharedRaw) & 1023)) & 1023);
  bf16* sQ = reinterpret_cast<bf16*>(shared);  // (BM, D)
  bf16* sK = sQ + BM * D;                      // (2, BN, D)
  bf16* sV = sK + 2 * BN * D;                  // (2, BN, D)

  const int h = blockIdx.x, hk = h / (nHead / nHeadKv);
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;
  const int group = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const int64_t qStride = static_cast<int64_t>(nHead) * D, kStride = static_cast<int64_t>(nHeadKv) * D;
  const bf16* kHead = k + static_cast<int64_t>(hk) * D;
  const bf16* vHead = v + static_cast<int64_t>(hk) * D;

  const int lastQuery = min(m0 + BM, T) - 1;
  const int keyBegin = (seqStart[m0] / BN) * BN, keyEnd = lastQuery + 1;
  const int tileSeqMax = seqStart[lastQuery];

  const int groupRow0 = group * 64;
  int rows[2], starts[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rows[r] = m0 + groupRow0 + warp * 16 + lane / 4 + 8 * r;
    starts[r] = rows[r] < T ? seqStart[rows[r]] : 0x7fffffff;
  }

  loadTileSwizzled<D, BM>(sQ, q + static_cast<int64_t>(h) * D, qStride, m0, T);
  loadTileSwizzled<D, BN>(sK, kHead, kStride, keyBegin, T);
  loadTileSwizzled<D, BN>(sV, vHead, kStride, keyBegin, T);
  cpAsyncCommit();

  float o[D / 8][4];
  zeroAccumulator(o);
  float rowMax[2] = {-INFINITY, -INFINITY}, rowSum[2] = {0.0f, 0.0f};
  constexpr uint32_t kKMajor = 16;

  int buffer = 0;
  for (int n0 = keyBegin; n0 < keyEnd; n0 += BN, buffer ^= 1) {
    if (n0 + BN < keyEnd) {
      loadTileSwizzled<D, BN>(sK + (buffer ^ 1) * BN * D, kHead, kStride, n0 + BN, T);
      loadTileSwizzled<D, BN>(sV + (buffer ^ 1) * BN * D, vHead, kStride, n0 + BN, T);
    }
    cpAsyncCommit();
    cpAsyncWait<1>();
    fenceSharedForAsyncProxy();
    __syncthreads();
    const bf16* tileK = sK + buffer * BN * D;
    const bf16* tileV = sV + buffer * BN * D;

    float s[BN / 8][4];
    zeroAccumulator(s);
    pinAccumulator(s);
    wgmmaFence();
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      wgmma64x64<0, 0>(s, matrixDescriptor(sQ + swizzled128<BM>(groupRow0, k0), kKMajor),
                       matrixDescriptor(tileK + swizzled128<BN>(0, k0), kKMajor));
    }
    wgmmaCommit();
    wgmmaWaitAll();
    pinAccumulator(s);

    // mask only where the tile crosses the diagonal, a sequence start or the end of the row
    const bool masked = n0 + BN - 1 > m0 || n0 < tileSeqMax || n0 + BN > T || m0 + BM > T;
    if (masked) {
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + n * 8 + (lane % 4) * 2 + (e & 1);
          const int row = rows[e / 2], start = starts[e / 2];
          if (key > row || key < start || row >= T) s[n][e] = -INFINITY;
        }
      }
    }
    // the max of the raw scores; the scale is folded into the exponent below
    float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
      tileMax[0] = fmaxf(tileMax[0], fmaxf(s[n][0], s[n][1]));
      tileMax[1] = fmaxf(tileMax[1], fmaxf(s[n][2], s[n][3]));
    }
    float reference[2], rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffffu, tileMax[r], 1));
      tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffffu, tileMax[r], 2));
      const float newMax = fmaxf(rowMax[r], tileMax[r] * scaleLog2);
      reference[r] = newMax == -INFINITY ? 0.0f : newMax;  // a row that has seen no key yet stays 0
      rescale[r] = exp2Fast(rowMax[r] - reference[r]);
      rowMax[r] = newMax;
      rowSum[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2Fast(fmaf(s[n][e], scaleLog2, -reference[e / 2]));
        rowSum[e / 2] += s[n][e];
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= rescale[0];
      o[n][1] *= rescale[0];
      o[n][2] *= rescale[1];
      o[n][3] *= rescale[1];
    }
    uint32_t p[BN / 16][4];
    accumulatorToA<BN>(p, s);

    // O += P·V: the keys as k, V MN-major (D its 128 columns)
    pinAccumulator(o);
    wgmmaFence();
#pragma unroll
    for (int kc = 0; kc < BN / 16; ++kc)
      wgmma64x128RegisterA(o, p[kc], matrixDescriptor(tileV + swizzled128<BN>(kc * 16, 0), BN * 128));
    wgmmaCommit();
    wgmmaWaitAll();
    pinAccumulator(o);
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }

  storeRows<D>(out, lse, o, rowMax, rowSum, rows, h, nHead, T, lane);
}
#else
__global__ void __launch_bounds__(256, 1)
    flash_backward_hopper_kernel(float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv,
                                 const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                 const bf16* __restrict__ k, const bf16* __restrict__ v,
                                 const float* __restrict__ lse, const float* __restrict__ rowDots,
                                 const int32_t* __restrict__ seqStart, int T, int nHead, int nHeadKv, float scale) {}
__global__ void __launch_bounds__(256, 2)
    flash_forward_hopper_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q,
                                const bf16* __restrict__ k, const bf16* __restrict__ v,
                                const int32_t* __restrict__ seqStart, int T, int nHead, int nHeadKv,
                                float scaleLog2) {}
#endif

template <int D, int kWarps, int kRowTiles>
void launchForward(const FlashAttentionArgs& a, cudaStream_t stream) {
  using Tiles = ForwardTiles<D, kWarps, kRowTiles>;
  auto kernel = flash_forward_kernel<D, kWarps, kRowTiles>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tiles::kSharedBytes),
        "cudaFuncSetAttribute (flash_forward_kernel)");
  const dim3 grid(static_cast<unsigned>(a.nHead), static_cast<unsigned>((a.T + Tiles::BM - 1) / Tiles::BM));
  kernel<<<grid, kWarps * 32, Tiles::kSharedBytes, stream>>>(a.out, a.lse, a.q, a.k, a.v, a.seqStart, a.T, a.nHead,
                                                             a.nHeadKv, a.scale * kLog2e);
  checkLaunch("flash_forward_kernel");
}

// rowDots and the zeroed fp32 gradients every backward kernel adds into
template <int D>
void prepareBackward(const FlashAttentionArgs& a, const FlashAttentionGradients& g, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(a.T) * a.nHead;
  row_dots_kernel<D><<<blocksFor(items * 32, 256), 256, 0, stream>>>(g.rowDots, g.dout, a.out, a.T, a.nHead);
  checkLaunch("row_dots_kernel");
  check(cudaMemsetAsync(g.dq, 0, sizeof(float) * a.T * a.nHead * D, stream), "cudaMemsetAsync (dq)");
  check(cudaMemsetAsync(g.dk, 0, sizeof(float) * a.T * a.nHeadKv * D, stream), "cudaMemsetAsync (dk)");
  check(cudaMemsetAsync(g.dv, 0, sizeof(float) * a.T * a.nHeadKv * D, stream), "cudaMemsetAsync (dv)");
}

template <int D, int kWarps>
void launchBackward(const FlashAttentionArgs& a, const FlashAttentionGradients& g, cudaStream_t stream) {
  using Tiles = BackwardTiles<D, kWarps>;
  prepareBackward<D>(a, g, stream);
  auto kernel = flash_backward_kernel<D, kWarps>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tiles::kSharedBytes),
        "cudaFuncSetAttribute (flash_backward_kernel)");
  const dim3 grid(static_cast<unsigned>(a.nHead), static_cast<unsigned>((a.T + Tiles::BN - 1) / Tiles::BN));
  kernel<<<grid, kWarps * 32, Tiles::kSharedBytes, stream>>>(g.dq, g.dk, g.dv, g.dout, a.q, a.k, a.v, a.lse,
                                                              g.rowDots, a.seqStart, a.T, a.nHead, a.nHeadKv, a.scale);
  checkLaunch("flash_backward_kernel");
}

void launchForwardHopper(const FlashAttentionArgs& a, cudaStream_t stream) {
  using Tiles = HopperForwardTiles;
  check(cudaFuncSetAttribute(flash_forward_hopper_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Tiles::kSharedBytes),
        "cudaFuncSetAttribute (flash_forward_hopper_kernel)");
  const dim3 grid(static_cast<unsigned>(a.nHead), static_cast<unsigned>((a.T + Tiles::BM - 1) / Tiles::BM));
  flash_forward_hopper_kernel<<<grid, 256, Tiles::kSharedBytes, stream>>>(a.out, a.lse, a.q, a.k, a.v, a.seqStart,
                                                                          a.T, a.nHead, a.nHeadKv, a.scale * kLog2e);
  checkLaunch("flash_forward_hopper_kernel");
}

void launchBackwardHopper(const FlashAttentionArgs& a, const FlashAttentionGradients& g, cudaStream_t stream) {
  using Tiles = HopperBackwardTiles;
  prepareBackward<Tiles::D>(a, g, stream);
  check(cudaFuncSetAttribute(flash_backward_hopper_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Tiles::kSharedBytes),
        "cudaFuncSetAttribute (flash_backward_hopper_kernel)");
  const dim3 grid(static_cast<unsigned>(a.nHead), static_cast<unsigned>((a.T + Tiles::BN - 1) / Tiles::BN));
  flash_backward_hopper_kernel<<<grid, 256, Tiles::kSharedBytes, stream>>>(
      g.dq, g.dk, g.dv, g.dout, a.q, a.k, a.v, a.lse, g.rowDots, a.seqStart, a.T, a.nHead, a.nHeadKv, a.scale);
  checkLaunch("flash_backward_hopper_kernel");
}

// The wgmma kernels exist only in an sm_90a build (THINKTUNE_SM90A: CMAKE_CUDA_ARCHITECTURES names 90a)
// and run only on a compute capability 9.0 device.
bool hopperKernelsRun() {
#ifdef THINKTUNE_SM90A
  int device = 0, major = 0, minor = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  return major == 9 && minor == 0;
#else
  return false;
#endif
}

std::string unsupported(const FlashAttentionArgs& a, const char* pass, int warps, int rowTiles) {
  return std::string("flash attention ") + pass + ": head dimension " + std::to_string(a.D) + " with " +
         std::to_string(warps) + " warps of " + std::to_string(rowTiles) +
         " row tiles is not built (head dimension 64 or 128; see flash_attention_forward/backward)";
}

}  // namespace

bool flashAttentionSupports(int64_t headDim, int64_t nHead, int64_t nHeadKv) {
  return (headDim == 64 || headDim == 128) && nHeadKv > 0 && nHead % nHeadKv == 0;
}

void flash_attention_forward(const FlashAttentionArgs& args, cudaStream_t stream) {
  const int warps = args.forwardWarps, tiles = args.forwardRowTiles;
  if (args.D == 128 && args.hopperKernels && hopperKernelsRun()) launchForwardHopper(args, stream);
  else if (args.D == 128 && warps == 8 && tiles == 1) launchForward<128, 8, 1>(args, stream);
  else if (args.D == 128 && warps == 4 && tiles == 2) launchForward<128, 4, 2>(args, stream);
  else if (args.D == 128 && warps == 8 && tiles == 2) launchForward<128, 8, 2>(args, stream);
  else if (args.D == 64 && warps == 8 && tiles == 1) launchForward<64, 8, 1>(args, stream);
  else if (args.D == 64 && warps == 4 && tiles == 2) launchForward<64, 4, 2>(args, stream);
  else if (args.D == 64 && warps == 8 && tiles == 2) launchForward<64, 8, 2>(args, stream);
  else throw Error(unsupported(args, "forward", warps, tiles));
}

void flash_attention_backward(const FlashAttentionArgs& args, const FlashAttentionGradients& gradients,
                              cudaStream_t stream) {
  const int warps = args.backwardWarps;
  if (args.D == 128 && args.hopperKernels && hopperKernelsRun()) launchBackwardHopper(args, gradients, stream);
  else if (args.D == 128 && warps == 8) launchBackward<128, 8>(args, gradients, stream);
  else if (args.D == 64 && warps == 8) launchBackward<64, 8>(args, gradients, stream);
  else throw Error(unsupported(args, "backward", warps, 1));
}

}  // namespace thinktune::cuda
