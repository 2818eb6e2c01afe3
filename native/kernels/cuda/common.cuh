// Shared by the CUDA kernel files: error checks that throw thinktune::Error (never exit or print),
// and the block/warp reductions the row kernels use.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "common/error.h"

namespace thinktune::cuda {

// Throws a device-failure thinktune::Error naming the call and CUDA's description of the failure.
inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + call + ": " + cudaGetErrorName(status) + " (" +
                    cudaGetErrorString(status) + ")",
                ErrorKind::DeviceFailure);
  }
}

// After a kernel launch: a bad configuration surfaces here, a fault at the next synchronization.
inline void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline unsigned blocksFor(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__device__ inline float warpSum(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ inline float warpMax(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the result.
__device__ inline float blockSum(float value) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  value = warpSum(value);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / 32;
  value = lane < warps ? partial[lane] : 0.0f;
  return warpSum(value);
}

__device__ inline float blockMax(float value) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  value = warpMax(value);
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / 32;
  value = lane < warps ? partial[lane] : -INFINITY;
  return warpMax(value);
}

}  // namespace thinktune::cuda
