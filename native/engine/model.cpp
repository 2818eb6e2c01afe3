#include "engine/model.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#include "common/error.h"
#include "quant/quant.h"
#include "kernels/cpu/threading.h"

namespace thinktune {

namespace {
const char* const kStems[kProjectionCount] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                              "ffn_gate", "ffn_up", "ffn_down"};
const char* const kTargets[kProjectionCount] = {"q", "k", "v", "o", "gate", "up", "down"};

std::string layerTensorName(int64_t layer, const char* stem, const char* kind) {
  return "blk." + std::to_string(layer) + "." + stem + "." + kind;
}

// Index of the first non-finite value among n f32 values, or -1.
int64_t firstNonFinite(const float* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(values[i])) return i;
  return -1;
}

std::string damagedWeightsMessage(const MappedTensor& tensor, int64_t element) {
  return "tensor " + tensor.name + " holds a NaN or infinite value (element " + std::to_string(element) +
         "); the model file is damaged: re-download or re-convert it";
}
}  // namespace

const char* projectionTensorStem(Projection projection) { return kStems[static_cast<int>(projection)]; }
const char* projectionTargetName(Projection projection) { return kTargets[static_cast<int>(projection)]; }

void dequantizeMatrixRows(const MappedTensor& tensor, int64_t row0, int64_t nRows, float* out) {
  const int64_t rowLength = tensor.rowLength;
  std::atomic<int64_t> badRow{-1};
#pragma omp parallel for schedule(static) if (nRows * rowLength >= kernels::kParallelMinWork)
  for (int64_t r = 0; r < nRows; ++r) {
    float* dst = out + r * rowLength;  // (rowLength)
    quant::dequantizeRow(tensor.type, tensor.data + static_cast<size_t>(row0 + r) * tensor.rowBytes, dst, rowLength);
    if (firstNonFinite(dst, rowLength) >= 0) badRow.store(row0 + r);
  }
  if (badRow.load() >= 0) {
    const int64_t row = badRow.load();
    std::vector<float> values(static_cast<size_t>(rowLength));
    quant::dequantizeRow(tensor.type, tensor.data + static_cast<size_t>(row) * tensor.rowBytes, values.data(), rowLength);
    throw Error(damagedWeightsMessage(tensor, row * rowLength + firstNonFinite(values.data(), rowLength)));
  }
}

Model::Model(const std::string& path, std::vector<TensorEntry> tensors, size_t alignment, const ModelConfig& config)
    : config_(config) {
  const ModelConfig& c = config_;
  if (c.arch != "qwen2" && c.arch != "llama") {
    throw Error("architecture \"" + c.arch + "\" is not supported; thinktune trains qwen2 and llama models");
  }
  if (c.nLayer <= 0 || c.nEmbd <= 0 || c.nHead <= 0 || c.nHeadKv <= 0 || c.headDim <= 0 || c.nFf <= 0 ||
      c.nVocab <= 0 || c.contextLength <= 0 || c.nHead % c.nHeadKv != 0 || c.headDim % 2 != 0) {
    throw Error(path + ": model config is inconsistent (nLayer " + std::to_string(c.nLayer) + ", nEmbd " +
                std::to_string(c.nEmbd) + ", nHead " + std::to_string(c.nHead) + ", nHeadKv " +
                std::to_string(c.nHeadKv) + ", headDim " + std::to_string(c.headDim) + ", nFf " +
                std::to_string(c.nFf) + ", nVocab " + std::to_string(c.nVocab) + ")");
  }
  gguf_ = MappedGguf::open(path, std::move(tensors), alignment);

  // Every f32 value the engine reads straight from the file is checked once here; other types are
  // checked as they are dequantized.
  for (const MappedTensor& tensor : gguf_->tensors()) {
    if (tensor.type != quant::GgmlType::F32) continue;
    const int64_t bad = firstNonFinite(reinterpret_cast<const float*>(tensor.data), tensor.nElements);
    if (bad >= 0) throw Error(damagedWeightsMessage(tensor, bad));
  }

  const size_t smallFloats = static_cast<size_t>((2 * c.nLayer + 1) * c.nEmbd + c.headDim / 2 +
                                                 (c.hasQkvBias ? c.nLayer * (c.qDim() + 2 * c.kvDim()) : 0));
  small_.reserve(smallFloats);  // pointers into small_ stay valid: it never grows past this

  tokenEmbedding_ = &matrix("token_embd.weight", c.nEmbd, c.nVocab);
  output_ = c.tiedOutput ? tokenEmbedding_ : &matrix("output.weight", c.nEmbd, c.nVocab);
  outputNorm_ = smallTensor("output_norm.weight", c.nEmbd);
  ropeFreqs_ = c.hasRopeFreqs ? smallTensor("rope_freqs.weight", c.headDim / 2) : nullptr;
  layers_.resize(static_cast<size_t>(c.nLayer));
  for (int64_t l = 0; l < c.nLayer; ++l) {
    LayerWeights& layer = layers_[static_cast<size_t>(l)];
    layer.attnNorm = smallTensor(layerTensorName(l, "attn_norm", "weight"), c.nEmbd);
    layer.ffnNorm = smallTensor(layerTensorName(l, "ffn_norm", "weight"), c.nEmbd);
    const int64_t in[kProjectionCount] = {c.nEmbd, c.nEmbd, c.nEmbd, c.qDim(), c.nEmbd, c.nEmbd, c.nFf};
    const int64_t out[kProjectionCount] = {c.qDim(), c.kvDim(), c.kvDim(), c.nEmbd, c.nFf, c.nFf, c.nEmbd};
    for (int p = 0; p < kProjectionCount; ++p)
      layer.matrix[p] = &matrix(layerTensorName(l, kStems[p], "weight"), in[p], out[p]);
    if (c.hasQkvBias) {
      for (int p = 0; p < 3; ++p) layer.bias[p] = smallTensor(layerTensorName(l, kStems[p], "bias"), out[p]);
    }
  }
}

const float* Model::smallTensor(const std::string& name, int64_t expectedLength) {
  const MappedTensor* tensor = gguf_->find(name);
  if (!tensor) {
    throw Error("tensor " + name + " is missing from " + gguf_->path() + "; the file is not a complete " +
                config_.arch + " model");
  }
  if (tensor->nElements != expectedLength) {
    throw Error("tensor " + name + " in " + gguf_->path() + " has " + std::to_string(tensor->nElements) +
                " values; the model config needs " + std::to_string(expectedLength));
  }
  const size_t start = small_.size();
  if (start + static_cast<size_t>(expectedLength) > small_.capacity()) {
    throw Error("tensor " + name + " does not fit the planned buffer of small tensors");
  }
  small_.resize(start + static_cast<size_t>(expectedLength));
  quant::dequantizeRow(tensor->type, tensor->data, small_.data() + start, expectedLength);
  const int64_t bad = firstNonFinite(small_.data() + start, expectedLength);
  if (bad >= 0) throw Error(damagedWeightsMessage(*tensor, bad));
  return small_.data() + start;
}

const MappedTensor& Model::matrix(const std::string& name, int64_t rowLength, int64_t rows) {
  const MappedTensor& tensor = gguf_->get(name);
  if (tensor.dims.size() != 2 || tensor.dims[0] != rowLength || tensor.dims[1] != rows) {
    std::string dims;
    for (size_t i = 0; i < tensor.dims.size(); ++i) dims += (i ? ", " : "") + std::to_string(tensor.dims[i]);
    throw Error("tensor " + name + " in " + gguf_->path() + " has dims [" + dims + "]; the model config needs [" +
                std::to_string(rowLength) + ", " + std::to_string(rows) + "]");
  }
  return tensor;
}

int64_t Model::maxRowLength() const { return std::max(config_.nEmbd, std::max(config_.nFf, config_.qDim())); }

int64_t Model::maxRows() const {
  return std::max(std::max(config_.nVocab, config_.nFf), std::max(config_.nEmbd, config_.qDim()));
}

}  // namespace thinktune
