// The ggml type table and the dispatch from a type to its row converters, single- and
// multi-threaded.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include "common/error.h"
#include "common/parallel.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace thinktune::quant {

namespace {

constexpr TypeInfo kSupportedTypes[] = {
    {GgmlType::F32, "F32", 1, 4},
    {GgmlType::F16, "F16", 1, 2},
    {GgmlType::BF16, "BF16", 1, 2},
    {GgmlType::Q8_0, "Q8_0", kLegacyBlock, sizeof(BlockQ8_0)},
    {GgmlType::Q4_0, "Q4_0", kLegacyBlock, sizeof(BlockQ4_0)},
    {GgmlType::Q4_K, "Q4_K", kSuperBlock, sizeof(BlockQ4K)},
    {GgmlType::Q5_K, "Q5_K", kSuperBlock, sizeof(BlockQ5K)},
    {GgmlType::Q6_K, "Q6_K", kSuperBlock, sizeof(BlockQ6K)},
};

// ggml.h's enum ggml_type by id; empty where ggml has removed or never assigned the id.
constexpr const char* kGgmlTypeNames[] = {
    "F32",  "F16",   "Q4_0",    "Q4_1",   "",        "",      "Q5_0",  "Q5_1",   "Q8_0",   "Q8_1",  "Q2_K",
    "Q3_K", "Q4_K",  "Q5_K",    "Q6_K",   "Q8_K",    "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
    "IQ2_S", "IQ4_XS", "I8",    "I16",    "I32",     "I64",   "F64",   "IQ1_M",  "BF16",   "",      "",
    "",     "TQ1_0", "TQ2_0",   "",       "",        "",      "MXFP4", "NVFP4",  "Q1_0",   "Q2_0",
};

// Values per parallel work item (rounded to whole blocks): big enough to amortize scheduling, small
// enough to balance the threads.
constexpr int64_t kChunkValues = 16384;
// Below this many values one thread is faster than waking a team.
constexpr int64_t kParallelThresholdValues = 65536;

int64_t chunkValues(const TypeInfo& info) {
  return std::max<int64_t>(info.blockSize, kChunkValues / info.blockSize * info.blockSize);
}

using DequantizeFn = void (*)(const uint8_t*, float*, int64_t);
using QuantizeFn = void (*)(const float*, uint8_t*, int64_t);

DequantizeFn dequantizer(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return dequantizeF32;
    case GgmlType::F16: return dequantizeF16;
    case GgmlType::BF16: return dequantizeBF16;
    case GgmlType::Q8_0: return dequantizeQ8_0;
    case GgmlType::Q4_0: return dequantizeQ4_0;
    case GgmlType::Q4_K: return dequantizeQ4K;
    case GgmlType::Q5_K: return dequantizeQ5K;
    case GgmlType::Q6_K: return dequantizeQ6K;
  }
  throw Error("unsupported ggml type id " + std::to_string(static_cast<uint32_t>(type)));
}

QuantizeFn quantizer(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return quantizeF32;
    case GgmlType::F16: return quantizeF16;
    case GgmlType::BF16: return quantizeBF16;
    case GgmlType::Q8_0: return quantizeQ8_0;
    case GgmlType::Q4_0: return quantizeQ4_0;
    case GgmlType::Q4_K: return quantizeQ4K;
    case GgmlType::Q5_K: return quantizeQ5K;
    case GgmlType::Q6_K: return quantizeQ6K;
  }
  throw Error("unsupported ggml type id " + std::to_string(static_cast<uint32_t>(type)));
}

bool isBlockFormat(GgmlType type) {
  return type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::BF16;
}

}  // namespace

const TypeInfo* findTypeInfo(uint32_t typeId) {
  for (const TypeInfo& info : kSupportedTypes) {
    if (static_cast<uint32_t>(info.type) == typeId) return &info;
  }
  return nullptr;
}

std::string ggmlTypeName(uint32_t typeId) {
  if (typeId < std::size(kGgmlTypeNames) && kGgmlTypeNames[typeId][0] != '\0') return kGgmlTypeNames[typeId];
  return "unknown type";
}

std::string supportedTypeNames() {
  std::string names;
  for (const TypeInfo& info : kSupportedTypes) {
    if (!names.empty()) names += ", ";
    names += info.name;
  }
  return names;
}

const TypeInfo& typeInfo(uint32_t typeId, const std::string& tensorName) {
  if (const TypeInfo* info = findTypeInfo(typeId)) return *info;
  const std::string type = ggmlTypeName(typeId) + " (" + std::to_string(typeId) + ")";
  const std::string problem = tensorName.empty() ? "ggml type " + type + " is not one thinktune can read"
                                                 : "tensor " + tensorName + " has type " + type +
                                                       ", which thinktune cannot read";
  throw Error(problem + "; supported: " + supportedTypeNames() +
              ". Convert the model to one of these (e.g. with llama-quantize to Q4_K_M).");
}

size_t byteSize(GgmlType type, int64_t nElements, const std::string& what) {
  const TypeInfo& info = typeInfo(type);
  const std::string subject = what.empty() ? "" : what + ": ";
  if (nElements < 0) throw Error(subject + "element count " + std::to_string(nElements) + " is negative");
  if (nElements % info.blockSize != 0) {
    throw Error(subject + std::to_string(nElements) + " values are not a multiple of the " + info.name +
                " block size " + std::to_string(info.blockSize));
  }
  return static_cast<size_t>(nElements / info.blockSize) * static_cast<size_t>(info.typeSize);
}

void dequantizeRow(GgmlType type, const uint8_t* src, float* dst, int64_t nElements) {
  dequantizer(type)(src, dst, nElements);
}

void quantizeRow(GgmlType type, const float* src, uint8_t* dst, int64_t nElements) {
  quantizer(type)(src, dst, nElements);
}

void dequantizeRows(GgmlType type, const uint8_t* src, float* dst, int64_t nElements) {
  byteSize(type, nElements);  // validates the length
  const TypeInfo& info = typeInfo(type);
  const DequantizeFn convert = dequantizer(type);
  const int64_t chunkElements = chunkValues(info);
  const int64_t nChunks = (nElements + chunkElements - 1) / chunkElements;
#pragma omp parallel for schedule(static) num_threads(threadCount()) if (nElements >= kParallelThresholdValues)
  for (int64_t chunk = 0; chunk < nChunks; ++chunk) {
    const int64_t begin = chunk * chunkElements;
    const int64_t count = std::min(chunkElements, nElements - begin);
    convert(src + begin / info.blockSize * info.typeSize, dst + begin, count);
  }
}

void quantizeRows(GgmlType type, const float* src, uint8_t* dst, int64_t nElements) {
  byteSize(type, nElements);  // validates the length
  const TypeInfo& info = typeInfo(type);
  // A NaN or infinity would silently poison a whole block's scale; F32/F16/BF16 can store them.
  if (isBlockFormat(type)) {
    int64_t firstBad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : firstBad) num_threads(threadCount()) \
    if (nElements >= kParallelThresholdValues)
    for (int64_t i = 0; i < nElements; ++i) {
      if (!std::isfinite(src[i]) && i < firstBad) firstBad = i;
    }
    if (firstBad != std::numeric_limits<int64_t>::max()) {
      throw Error("cannot quantize to " + std::string(info.name) + ": value " + std::to_string(firstBad) + " is " +
                  (std::isnan(src[firstBad]) ? "NaN" : "infinite") + "; the input must be finite");
    }
  }
  const QuantizeFn convert = quantizer(type);
  const int64_t chunkElements = chunkValues(info);
  const int64_t nChunks = (nElements + chunkElements - 1) / chunkElements;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threadCount()) if (nElements >= kParallelThresholdValues)
  for (int64_t chunk = 0; chunk < nChunks; ++chunk) {
    const int64_t begin = chunk * chunkElements;
    const int64_t count = std::min(chunkElements, nElements - begin);
    convert(src + begin, dst + begin / info.blockSize * info.typeSize, count);
  }
}

}  // namespace thinktune::quant
