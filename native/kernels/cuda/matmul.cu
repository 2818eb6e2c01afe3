// Row-major matrix products on cuBLAS. A row-major (M, N) matrix is cuBLAS's column-major (N, M), so
// C = op(A)·op(B) is computed as Cᵀ = op(B)ᵀ·op(A)ᵀ with the operands swapped.
#include <cublas_v2.h>

#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune::cuda {

namespace {

const char* cublasStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "a cuBLAS error";
  }
}

void gemm(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
          const void* A, int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc,
          cudaDataType_t inputType, cudaDataType_t outputType, cublasComputeType_t compute, const char* name) {
  if (M == 0 || N == 0) return;
  const cublasStatus_t status = cublasGemmEx(
      handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
      static_cast<int>(M), static_cast<int>(K), &alpha, B, inputType, static_cast<int>(ldb), A, inputType,
      static_cast<int>(lda), &beta, C, outputType, static_cast<int>(ldc), compute, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("cuBLAS ") + name + " (" + std::to_string(M) + "×" + std::to_string(N) + "×" +
                std::to_string(K) + ") failed: " + cublasStatusName(status),
                ErrorKind::DeviceFailure);
  }
}

}  // namespace

void gemm_bf16(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const __nv_bfloat16* A, int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  gemm(handle, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_16BF, CUDA_R_32F,
       CUBLAS_COMPUTE_32F, "gemm_bf16");
}

void gemm_bf16_out(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const __nv_bfloat16* A, int64_t lda, const __nv_bfloat16* B, int64_t ldb, float beta,
                   __nv_bfloat16* C, int64_t ldc) {
  gemm(handle, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_16BF, CUDA_R_16BF,
       CUBLAS_COMPUTE_32F, "gemm_bf16_out");
}

void gemm_bf16_batched(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                       const __nv_bfloat16* A, int64_t lda, int64_t strideA, const __nv_bfloat16* B, int64_t ldb,
                       int64_t strideB, float beta, float* C, int64_t ldc, int64_t strideC, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  const cublasStatus_t status = cublasGemmStridedBatchedEx(
      handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N),
      static_cast<int>(M), static_cast<int>(K), &alpha, B, CUDA_R_16BF, static_cast<int>(ldb), strideB, A,
      CUDA_R_16BF, static_cast<int>(lda), strideA, &beta, C, CUDA_R_32F, static_cast<int>(ldc), strideC,
      static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("cuBLAS gemm_bf16_batched (") + std::to_string(batch) + "×" + std::to_string(M) + "×" +
                std::to_string(N) + "×" + std::to_string(K) + ") failed: " + cublasStatusName(status),
                ErrorKind::DeviceFailure);
  }
}

void gemm_f32(cublasHandle_t handle, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  // TF32 tensor cores (fp32 storage, 10-bit mantissa products, fp32 sums): the rank-16 LoRA products
  // ran off the tensor cores at 12% of a 7B step in plain fp32
  gemm(handle, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, CUDA_R_32F, CUDA_R_32F,
       CUBLAS_COMPUTE_32F_FAST_TF32, "gemm_f32");
}

}  // namespace thinktune::cuda
