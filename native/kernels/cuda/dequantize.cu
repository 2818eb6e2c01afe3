// GGUF block formats decoded on the GPU (eight elements a thread into bf16), with the layouts and the
// arithmetic of native/quant (dequantizeQ4K & co.): (d·scale)·q − (dmin·min), no fused multiply-add,
// so an f32 output equals the CPU's bit for bit. Blocks sit at any byte offset (34-, 18-, 144-,
// 176-, 210-byte blocks), so every multi-byte field is read byte by byte.
#include <cuda_fp16.h>

#include <cstdint>

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

// element e of a row starting at `row`, for one ggml type known at compile time
template <uint32_t kType>
__device__ inline float decodeAt(const uint8_t* row, int64_t e) {
  if constexpr (kType == kF32) {
    const uint8_t* p = row + 4 * e;
    return __uint_as_float(p[0] | (p[1] << 8) | (p[2] << 16) | (static_cast<uint32_t>(p[3]) << 24));
  } else if constexpr (kType == kF16) {
    return halfAt(row + 2 * e);
  } else if constexpr (kType == kBF16) {
    const uint8_t* p = row + 2 * e;
    return __uint_as_float(static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16);
  } else if constexpr (kType == kQ8_0) {
    const uint8_t* block = row + 34 * (e / 32);
    return __fmul_rn(static_cast<float>(static_cast<int8_t>(block[2 + e % 32])), halfAt(block));
  } else if constexpr (kType == kQ4_0) {
    const uint8_t* block = row + 18 * (e / 32);
    const int j = static_cast<int>(e % 32);
    const int q = j < 16 ? (block[2 + j] & 0xF) : (block[2 + j - 16] >> 4);
    return __fmul_rn(static_cast<float>(q - 8), halfAt(block));
  } else if constexpr (kType == kQ4_K || kType == kQ5_K) {
    constexpr bool five = kType == kQ5_K;
    const uint8_t* block = row + (five ? 176 : 144) * (e / 256);
    const int within = static_cast<int>(e % 256);
    const int group = within / 64, high = (within % 64) / 32, l = within % 32;
    const uint8_t* qs = block + (five ? 48 : 16);
    const int packed = qs[32 * group + l];
    int q = high ? packed >> 4 : packed & 0xF;
    if (five) q |= ((block[16 + l] >> (2 * group + high)) & 1) << 4;
    int scale, min;
    scaleMin(2 * group + high, block + 4, scale, min);
    const float d = __fmul_rn(halfAt(block), static_cast<float>(scale));
    const float m = __fmul_rn(halfAt(block + 2), static_cast<float>(min));
    return __fsub_rn(__fmul_rn(d, static_cast<float>(q)), m);
  } else {
    static_assert(kType == kQ6_K, "a type dequantize_supports lists");
    const uint8_t* block = row + 210 * (e / 256);
    const int within = static_cast<int>(e % 256);
    const int half = within / 128, run = (within % 128) / 32, l = within % 32;
    const uint8_t* ql = block + 64 * half;
    const uint8_t* qh = block + 128 + 32 * half;
    const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192) + 8 * half;
    const int low = (ql[l + 32 * (run & 1)] >> (run < 2 ? 0 : 4)) & 0xF;
    const int q = (low | (((qh[l] >> (2 * run)) & 3) << 4)) - 32;
    const float d = __fmul_rn(halfAt(block + 208), static_cast<float>(scales[2 * run + (l >= 16)]));
    return __fmul_rn(d, static_cast<float>(q));
  }
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

// Each thread converts 8 consecutive elements of one row (rowLength a multiple of 8) and writes them
// as one 16-byte store; the type is a template argument, so nothing branches per element.
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

constexpr int kThreads = 256;

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
  const unsigned blocks = blocksFor(total / 8, kThreads);
  switch (type) {
#define THINKTUNE_DEQUANTIZE_CASE(kType)                                                                        \
  case kType:                                                                                                  \
    dequantize_rows_bf16_kernel<kType><<<blocks, kThreads, 0, stream>>>(out, src, rowBytes, rowLength, row0, total); \
    break;
    THINKTUNE_DEQUANTIZE_CASE(kF32)
    THINKTUNE_DEQUANTIZE_CASE(kF16)
    THINKTUNE_DEQUANTIZE_CASE(kBF16)
    THINKTUNE_DEQUANTIZE_CASE(kQ8_0)
    THINKTUNE_DEQUANTIZE_CASE(kQ4_0)
    THINKTUNE_DEQUANTIZE_CASE(kQ4_K)
    THINKTUNE_DEQUANTIZE_CASE(kQ5_K)
    THINKTUNE_DEQUANTIZE_CASE(kQ6_K)
#undef THINKTUNE_DEQUANTIZE_CASE
  }
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
  find_nonfinite_row_kernel<<<blocksFor(total, kThreads), kThreads, 0, stream>>>(firstRow, src, type, rowBytes,
                                                                                  rowLength, total);
  checkLaunch("find_nonfinite_row");
}

}  // namespace thinktune::cuda
