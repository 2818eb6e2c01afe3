// GGUF block formats decoded on the GPU (eight elements a thread into bf16), with the layouts and the
// arithmetic of native/quant (dequantizeQ4K & co.): (d·scale)·q − (dmin·min), no fused multiply-add,
// so an f32 output equals the CPU's bit for bit. Blocks sit at any byte offset (34-, 18-, 144-,
// 176-, 210-byte blocks), so every multi-byte field is read byte by byte.
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

// ggml type ids (quant::GgmlType)
enum : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30 };

__device__ inline float halfAt(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(p[0] | (p[1] << 8))));
}

// scale and min of sub-block j of a Q4_K / Q5_K block (quant::unpackScaleMin)
__device__ inline void scaleMin(int j, const uint8_t* packed, int& scale, int& min) {
  if (j < 4) {
    scale = packed[j] & 63;
    min = packed[j + 4] & 63;
  } else {
    scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// 32 consecutive elements [e0, e0 + 32) of a row, e0 a multiple of 32, for one ggml type known at
// compile time: the block and sub-block fields are read once, at(l) decodes element e0 + l.
template <uint32_t kType>
struct Run32;

template <>
struct Run32<kF32> {
  const uint8_t* p;
  __device__ Run32(const uint8_t* row, int64_t e0) : p(row + 4 * e0) {}
  __device__ float at(int l) const {
    const uint8_t* b = p + 4 * l;
    return __uint_as_float(b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24));
  }
};

template <>
struct Run32<kF16> {
  const uint8_t* p;
  __device__ Run32(const uint8_t* row, int64_t e0) : p(row + 2 * e0) {}
  __device__ float at(int l) const { return halfAt(p + 2 * l); }
};

template <>
struct Run32<kBF16> {
  const uint8_t* p;
  __device__ Run32(const uint8_t* row, int64_t e0) : p(row + 2 * e0) {}
  __device__ float at(int l) const {
    return __uint_as_float(static_cast<uint32_t>(p[2 * l] | (p[2 * l + 1] << 8)) << 16);
  }
};

template <>
struct Run32<kQ8_0> {
  const uint8_t* block;
  float d;
  __device__ Run32(const uint8_t* row, int64_t e0) : block(row + 34 * (e0 / 32)), d(halfAt(block)) {}
  __device__ float at(int l) const { return __fmul_rn(static_cast<float>(static_cast<int8_t>(block[2 + l])), d); }
};

template <>
struct Run32<kQ4_0> {
  const uint8_t* block;
  float d;
  __device__ Run32(const uint8_t* row, int64_t e0) : block(row + 18 * (e0 / 32)), d(halfAt(block)) {}
  __device__ float at(int l) const {
    const int q = l < 16 ? (block[2 + l] & 0xF) : (block[2 + l - 16] >> 4);
    return __fmul_rn(static_cast<float>(q - 8), d);
  }
};

// Q4_K and Q5_K: sub-block j = 2·group + high of a 256-element block, its scale and min unpacked once.
// The 144- and 176-byte blocks keep their 32-byte quant runs 16-byte aligned when the row is (GGUF
// aligns tensor data to 32), so those are read as two 16-byte loads where the address allows.
template <bool kFive>
struct Run32K {
  uint8_t qs[32];  // the group's bytes of nibbles (one group: two sub-blocks)
  uint8_t qh[kFive ? 32 : 1];  // Q5_K's fifth bits
  int high, shift;
  float d, m;
  __device__ static void load32(uint8_t (&to)[32], const uint8_t* from) {
    if (reinterpret_cast<uintptr_t>(from) % 16 == 0) {
      reinterpret_cast<uint4*>(to)[0] = reinterpret_cast<const uint4*>(from)[0];
      reinterpret_cast<uint4*>(to)[1] = reinterpret_cast<const uint4*>(from)[1];
    } else {
#pragma unroll
      for (int i = 0; i < 32; ++i) to[i] = from[i];
    }
  }
  __device__ Run32K(const uint8_t* row, int64_t e0) {
    const uint8_t* block = row + (kFive ? 176 : 144) * (e0 / 256);
    const int within = static_cast<int>(e0 % 256);
    const int group = within / 64;
    high = (within % 64) / 32;
    load32(qs, block + (kFive ? 48 : 16) + 32 * group);
    if constexpr (kFive) load32(qh, block + 16);
    shift = 2 * group + high;
    int scale, min;
    scaleMin(shift, block + 4, scale, min);
    d = __fmul_rn(halfAt(block), static_cast<float>(scale));
    m = __fmul_rn(halfAt(block + 2), static_cast<float>(min));
  }
  __device__ float at(int l) const {
    const int packed = qs[l];
    int q = high ? packed >> 4 : packed & 0xF;
    if constexpr (kFive) q |= ((qh[l] >> shift) & 1) << 4;
    return __fsub_rn(__fmul_rn(d, static_cast<float>(q)), m);
  }
};
template <>
struct Run32<kQ4_K> : Run32K<false> {
  using Run32K<false>::Run32K;
};
template <>
struct Run32<kQ5_K> : Run32K<true> {
  using Run32K<true>::Run32K;
};

template <>
struct Run32<kQ6_K> {
  const uint8_t* ql;
  const uint8_t* qh;
  const int8_t* scales;
  int run;
  float d;
  __device__ Run32(const uint8_t* row, int64_t e0) {
    const uint8_t* block = row + 210 * (e0 / 256);
    const int within = static_cast<int>(e0 % 256);
    const int half = within / 128;
    run = (within % 128) / 32;
    ql = block + 64 * half + 32 * (run & 1);
    qh = block + 128 + 32 * half;
    scales = reinterpret_cast<const int8_t*>(block + 192) + 8 * half + 2 * run;
    d = halfAt(block + 208);
  }
  __device__ float at(int l) const {
    const int low = (ql[l] >> (run < 2 ? 0 : 4)) & 0xF;
    const int q = (low | (((qh[l] >> (2 * run)) & 3) << 4)) - 32;
    return __fmul_rn(__fmul_rn(d, static_cast<float>(scales[l >= 16])), static_cast<float>(q));
  }
};

// element e of a row, for one ggml type known at compile time
template <uint32_t kType>
__device__ inline float decodeAt(const uint8_t* row, int64_t e) {
  return Run32<kType>(row, e & ~int64_t{31}).at(static_cast<int>(e & 31));
}

// the same with the type chosen at run time (the gather and the NaN scan, which run rarely)
__device__ float decode(uint32_t type, const uint8_t* row, int64_t e) {
  switch (type) {
    case kF32: return decodeAt<kF32>(row, e);
    case kF16: return decodeAt<kF16>(row, e);
    case kBF16: return decodeAt<kBF16>(row, e);
    case kQ8_0: return decodeAt<kQ8_0>(row, e);
    case kQ4_0: return decodeAt<kQ4_0>(row, e);
    case kQ4_K: return decodeAt<kQ4_K>(row, e);
    case kQ5_K: return decodeAt<kQ5_K>(row, e);
    case kQ6_K: return decodeAt<kQ6_K>(row, e);
    default: return __int_as_float(0x7fc00000);  // unreachable: launchers check the type
  }
}

// Each thread converts 8 consecutive elements of one row (float types: rows of any multiple of 8) and
// writes them as one 16-byte store; the type is a template argument, so nothing branches per element.
template <uint32_t kType>
__global__ void dequantize_rows_bf16_kernel(__nv_bfloat16* out, const uint8_t* src, int64_t rowBytes,
                                            int64_t rowLength, int64_t row0, int64_t total) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i >= total) return;
  const int64_t r = i / rowLength, e = i % rowLength;
  const uint8_t* row = src + (row0 + r) * rowBytes;
  __align__(16) __nv_bfloat16 values[8];
#pragma unroll
  for (int x = 0; x < 8; ++x) values[x] = __float2bfloat16(decodeAt<kType>(row, e + x));
  *reinterpret_cast<uint4*>(out + i) = *reinterpret_cast<const uint4*>(values);
}

// Block formats: each thread decodes one 32-element run (one sub-block's fields read once) and writes
// it as four 16-byte stores.
template <uint32_t kType>
__global__ void dequantize_runs_bf16_kernel(__nv_bfloat16* out, const uint8_t* src, int64_t rowBytes,
                                            int64_t runsPerRow, int64_t row0, int64_t runs) {
  const int64_t run = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (run >= runs) return;
  const int64_t r = run / runsPerRow, e0 = (run % runsPerRow) * 32;
  const Run32<kType> decoder(src + (row0 + r) * rowBytes, e0);
  uint4* target = reinterpret_cast<uint4*>(out + run * 32);
#pragma unroll
  for (int chunk = 0; chunk < 4; ++chunk) {
    __align__(16) __nv_bfloat16 values[8];
#pragma unroll
    for (int x = 0; x < 8; ++x) values[x] = __float2bfloat16(decoder.at(chunk * 8 + x));
    target[chunk] = *reinterpret_cast<const uint4*>(values);
  }
}

// rows of a length that is not a multiple of 8 (float types only): one element per thread
__global__ void dequantize_rows_bf16_scalar_kernel(__nv_bfloat16* out, const uint8_t* src, uint32_t type,
                                                   int64_t rowBytes, int64_t rowLength, int64_t row0, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t r = i / rowLength, e = i % rowLength;
  out[i] = __float2bfloat16(decode(type, src + (row0 + r) * rowBytes, e));
}

__global__ void dequantize_gather_f32_kernel(float* out, const uint8_t* src, uint32_t type, int64_t rowBytes,
                                             int64_t rowLength, const int32_t* rows, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t r = i / rowLength, e = i % rowLength;
  out[i] = decode(type, src + static_cast<int64_t>(rows[r]) * rowBytes, e);
}

__global__ void find_nonfinite_row_kernel(unsigned long long* firstRow, const uint8_t* src, uint32_t type,
                                          int64_t rowBytes, int64_t rowLength, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t r = i / rowLength, e = i % rowLength;
  if (!isfinite(decode(type, src + r * rowBytes, e))) atomicMin(firstRow, static_cast<unsigned long long>(r));
}

// the same a 32-element run per thread (rows of a multiple of 32: every block format)
template <uint32_t kType>
__global__ void find_nonfinite_runs_kernel(unsigned long long* firstRow, const uint8_t* src, int64_t rowBytes,
                                           int64_t runsPerRow, int64_t runs) {
  const int64_t run = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (run >= runs) return;
  const int64_t r = run / runsPerRow;
  const Run32<kType> decoder(src + r * rowBytes, (run % runsPerRow) * 32);
  bool finite = true;
#pragma unroll
  for (int l = 0; l < 32; ++l) finite &= isfinite(decoder.at(l));
  if (!finite) atomicMin(firstRow, static_cast<unsigned long long>(r));
}

constexpr int kThreads = 256;

// launch(std::integral_constant<uint32_t, type>) for a type dequantize_supports lists
template <class Launch>
void withType(uint32_t type, Launch&& launch) {
  switch (type) {
    case kF32: launch(std::integral_constant<uint32_t, kF32>{}); break;
    case kF16: launch(std::integral_constant<uint32_t, kF16>{}); break;
    case kBF16: launch(std::integral_constant<uint32_t, kBF16>{}); break;
    case kQ8_0: launch(std::integral_constant<uint32_t, kQ8_0>{}); break;
    case kQ4_0: launch(std::integral_constant<uint32_t, kQ4_0>{}); break;
    case kQ4_K: launch(std::integral_constant<uint32_t, kQ4_K>{}); break;
    case kQ5_K: launch(std::integral_constant<uint32_t, kQ5_K>{}); break;
    case kQ6_K: launch(std::integral_constant<uint32_t, kQ6_K>{}); break;
  }
}

constexpr bool isFloatType(uint32_t type) { return type == kF32 || type == kF16 || type == kBF16; }

void checkType(uint32_t type) {
  if (!dequantize_supports(type)) {
    throw Error("the CUDA engine cannot decode ggml type " + std::to_string(type) +
                "; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K");
  }
}

}  // namespace

bool dequantize_supports(uint32_t type) {
  switch (type) {
    case kF32: case kF16: case kBF16: case kQ8_0: case kQ4_0: case kQ4_K: case kQ5_K: case kQ6_K:
      return true;
    default:
      return false;
  }
}

void dequantize_rows_bf16(__nv_bfloat16* out, const uint8_t* src, uint32_t type, int64_t rowBytes,
                          int64_t rowLength, int64_t row0, int64_t nRows, cudaStream_t stream) {
  checkType(type);
  const int64_t total = nRows * rowLength;
  if (total == 0) return;
  if (rowLength % 8 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0) {  // float types of odd widths
    dequantize_rows_bf16_scalar_kernel<<<blocksFor(total, kThreads), kThreads, 0, stream>>>(out, src, type, rowBytes,
                                                                                           rowLength, row0, total);
    checkLaunch("dequantize_rows_bf16");
    return;
  }
  withType(type, [&](auto kind) {
    constexpr uint32_t kType = decltype(kind)::value;
    if constexpr (isFloatType(kType)) {  // rows of any multiple of 8
      dequantize_rows_bf16_kernel<kType>
          <<<blocksFor(total / 8, kThreads), kThreads, 0, stream>>>(out, src, rowBytes, rowLength, row0, total);
    } else {
      const int64_t runsPerRow = rowLength / 32, runs = nRows * runsPerRow;
      dequantize_runs_bf16_kernel<kType>
          <<<blocksFor(runs, kThreads), kThreads, 0, stream>>>(out, src, rowBytes, runsPerRow, row0, runs);
    }
  });
  checkLaunch("dequantize_rows_bf16");
}

void dequantize_gather_f32(float* out, const uint8_t* src, uint32_t type, int64_t rowBytes, int64_t rowLength,
                           const int32_t* rows, int64_t n, cudaStream_t stream) {
  checkType(type);
  const int64_t total = n * rowLength;
  if (total == 0) return;
  dequantize_gather_f32_kernel<<<blocksFor(total, kThreads), kThreads, 0, stream>>>(out, src, type, rowBytes,
                                                                                     rowLength, rows, total);
  checkLaunch("dequantize_gather_f32");
}

void find_nonfinite_row(unsigned long long* firstRow, const uint8_t* src, uint32_t type, int64_t rowBytes,
                        int64_t rowLength, int64_t nRows, cudaStream_t stream) {
  checkType(type);
  const int64_t total = nRows * rowLength;
  if (total == 0) return;
  if (rowLength % 32 == 0) {
    const int64_t runsPerRow = rowLength / 32, runs = nRows * runsPerRow;
    withType(type, [&](auto kind) {
      find_nonfinite_runs_kernel<decltype(kind)::value>
          <<<blocksFor(runs, kThreads), kThreads, 0, stream>>>(firstRow, src, rowBytes, runsPerRow, runs);
    });
  } else {
    find_nonfinite_row_kernel<<<blocksFor(total, kThreads), kThreads, 0, stream>>>(firstRow, src, type, rowBytes,
                                                                                    rowLength, total);
  }
  checkLaunch("find_nonfinite_row");
}

}  // namespace thinktune::cuda
