// LoRA adapters on a subset of the seven projections of every layer. Parameters live in one flat
// f32 block (A then B for each adapter, layer-major, q k v o gate up down), so the optimizer, the
// gradient norm and the checkpoint code see one array.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/model.h"

namespace thinktune {

struct LoraOptions {
  int64_t rank = 8;
  float alpha = 16.0f;
  std::vector<Projection> targets;
  float dropout = 0.0f;
  uint64_t seed = 0;
};

struct LoraAdapter {
  int64_t layer = 0;
  Projection projection = Projection::Q;
  int64_t in = 0;    // columns of the base matrix
  int64_t out = 0;   // rows of the base matrix
  size_t offsetA = 0;  // into the parameter block: A (rank, in)
  size_t offsetB = 0;  // B (out, rank)
  std::string name;    // llama.cpp adapter stem: "blk.3.attn_q.weight"
};

class Lora {
 public:
  Lora(const ModelConfig& config, const LoraOptions& options);

  const LoraOptions& options() const { return options_; }
  float scale() const { return options_.alpha / static_cast<float>(options_.rank); }
  size_t parameterCount() const { return parameterCount_; }
  const std::vector<LoraAdapter>& adapters() const { return adapters_; }
  // The adapter on (layer, projection), or nullptr when that projection is not a target.
  const LoraAdapter* find(int64_t layer, Projection projection) const {
    const int index = index_[static_cast<size_t>(layer * kProjectionCount + static_cast<int>(projection))];
    return index < 0 ? nullptr : &adapters_[static_cast<size_t>(index)];
  }
  // A uniform in ±1/sqrt(in), B zero; deterministic from options.seed.
  void initialize(float* parameters) const;
  // Whether element `index` of the LoRA input of (layer, projection) survives dropout at `step`;
  // a counter-based hash, so the backward recomputation sees the same mask.
  bool keeps(uint64_t step, int64_t layer, Projection projection, uint64_t index) const;

 private:
  LoraOptions options_;
  std::vector<LoraAdapter> adapters_;
  std::vector<int> index_;
  size_t parameterCount_ = 0;
};

}  // namespace thinktune
