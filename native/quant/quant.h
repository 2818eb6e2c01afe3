// GGUF block formats: the ggml type table and bit-exact (with ggml's reference, ggml-quants.c)
// conversion between float and F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K bytes.
// Knows nothing of Node or of the engine; errors are thinktune::Error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "quant/half.h"  // floatToHalf, halfToFloat, floatToBf16, bf16ToFloat

namespace thinktune::quant {

// ggml type ids as stored in GGUF files (ggml.h), for the types thinktune reads and writes.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

struct TypeInfo {
  GgmlType type;
  const char* name;
  int64_t blockSize;  // elements per block
  int64_t typeSize;   // bytes per block
};

// The table entry of a supported type, or nullptr.
const TypeInfo* findTypeInfo(uint32_t typeId);
// The table entry of a supported type; otherwise throws thinktune::Error naming the type (by its ggml
// name where it has one) and, when `tensorName` is not empty, the tensor.
const TypeInfo& typeInfo(uint32_t typeId, const std::string& tensorName = "");
inline const TypeInfo& typeInfo(GgmlType type) { return typeInfo(static_cast<uint32_t>(type)); }
// ggml's name of any type id ("IQ2_XXS"), or "unknown type" for ids ggml does not define.
std::string ggmlTypeName(uint32_t typeId);
// "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K"
std::string supportedTypeNames();

// Bytes that `nElements` values take in `type`; throws when nElements is negative or not a multiple
// of the block size (the message names both numbers and `what`, e.g. the tensor).
size_t byteSize(GgmlType type, int64_t nElements, const std::string& what = "");

// Single-threaded conversion of one run of whole blocks (nElements a multiple of the block size; not
// checked here, this is the inner loop of the engine). dst/src hold byteSize(type, nElements) bytes.
void dequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t nElements);
void quantizeRow(GgmlType type, const float* src, uint8_t* dst, int64_t nElements);

// Multi-threaded (OpenMP over blocks) versions for large arrays; nElements is checked and a bad
// length throws thinktune::Error.
void dequantizeRows(GgmlType type, const uint8_t* src, float* dst, int64_t nElements);
void quantizeRows(GgmlType type, const float* src, uint8_t* dst, int64_t nElements);

}  // namespace thinktune::quant
