// The model as the engine sees it: hyper-parameters, and views of the base weights inside the
// memory-mapped GGUF (they stay in their file type; matrices are dequantized a chunk of rows at a
// time just before use). Small 1-D tensors (norms, biases, rope_freqs) are converted to f32 once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/gguf_mapping.h"

namespace thinktune {

struct ModelConfig {
  std::string arch;  // "qwen2" (NEOX RoPE) or "llama" (normal RoPE)
  int64_t nLayer = 0;
  int64_t nEmbd = 0;
  int64_t nHead = 0;
  int64_t nHeadKv = 0;
  int64_t headDim = 0;
  int64_t nFf = 0;
  int64_t nVocab = 0;
  int64_t contextLength = 0;
  float ropeBase = 10000.0f;
  float rmsEps = 1e-6f;
  bool tiedOutput = false;
  bool hasQkvBias = false;
  bool hasRopeFreqs = false;

  bool neoxRope() const { return arch == "qwen2"; }
  int64_t qDim() const { return nHead * headDim; }
  int64_t kvDim() const { return nHeadKv * headDim; }
};

// The seven linear layers LoRA can target, in the order adapters list them.
enum class Projection { Q = 0, K, V, O, Gate, Up, Down };
constexpr int kProjectionCount = 7;
// llama.cpp's tensor name stem of a projection ("attn_q", "ffn_down", ...)
const char* projectionTensorStem(Projection projection);
// "q", "k", "v", "o", "gate", "up", "down"
const char* projectionTargetName(Projection projection);

struct LayerWeights {
  const float* attnNorm = nullptr;  // (C)
  const float* ffnNorm = nullptr;   // (C)
  const float* bias[kProjectionCount] = {};  // q, k, v biases (qwen2) or nullptr
  const MappedTensor* matrix[kProjectionCount] = {};  // (out, in) rows in the file's type
};

class Model {
 public:
  // Maps the file, checks every tensor against `config` (names, shapes, finite f32 values) and
  // converts the small tensors. Throws thinktune::Error naming the tensor on any mismatch.
  Model(const std::string& path, std::vector<TensorEntry> tensors, size_t alignment, const ModelConfig& config);

  const ModelConfig& config() const { return config_; }
  const LayerWeights& layer(int64_t index) const { return layers_[index]; }
  const MappedTensor& tokenEmbedding() const { return *tokenEmbedding_; }
  const MappedTensor& output() const { return *output_; }  // token_embd.weight when tied
  const float* outputNorm() const { return outputNorm_; }  // (C)
  const float* ropeFreqs() const { return ropeFreqs_; }    // (headDim / 2) or nullptr
  size_t mappedBytes() const { return gguf_->fileSize(); }
  size_t ownedBytes() const { return small_.size() * sizeof(float); }
  // Longest row (elements) of any matrix, and the most rows of a matrix: size the dequant scratch.
  int64_t maxRowLength() const;
  int64_t maxRows() const;

 private:
  const float* smallTensor(const std::string& name, int64_t expectedLength);
  const MappedTensor& matrix(const std::string& name, int64_t rowLength, int64_t rows);

  ModelConfig config_;
  std::unique_ptr<MappedGguf> gguf_;
  std::vector<float> small_;
  std::vector<LayerWeights> layers_;
  const MappedTensor* tokenEmbedding_ = nullptr;
  const MappedTensor* output_ = nullptr;
  const float* outputNorm_ = nullptr;
  const float* ropeFreqs_ = nullptr;
};

// rows [row0, row0 + nRows) of `tensor` as f32 into out (nRows, rowLength), multi-threaded; throws
// thinktune::Error naming the tensor and row when a value is NaN or infinite.
void dequantizeMatrixRows(const MappedTensor& tensor, int64_t row0, int64_t nRows, float* out);

}  // namespace thinktune
