#include "engine/lora.h"

#include <cmath>

#include "common/error.h"
#include "common/splitmix.h"

namespace thinktune {

Lora::Lora(const ModelConfig& config, const LoraOptions& options) : options_(options) {
  if (options.rank <= 0) throw Error("lora.rank must be a positive integer, got " + std::to_string(options.rank));
  if (!(options.dropout >= 0.0f && options.dropout < 1.0f)) {
    throw Error("lora.dropout must be in [0, 1), got " + std::to_string(options.dropout));
  }
  if (options.targets.empty()) throw Error("lora.targets is empty; name at least one of q k v o gate up down");
  bool wanted[kProjectionCount] = {};
  for (Projection p : options.targets) wanted[static_cast<int>(p)] = true;
  const int64_t in[kProjectionCount] = {config.nEmbd, config.nEmbd, config.nEmbd, config.qDim(),
                                        config.nEmbd, config.nEmbd, config.nFf};
  const int64_t out[kProjectionCount] = {config.qDim(), config.kvDim(), config.kvDim(), config.nEmbd,
                                         config.nFf,    config.nFf,     config.nEmbd};
  index_.assign(static_cast<size_t>(config.nLayer * kProjectionCount), -1);
  for (int64_t l = 0; l < config.nLayer; ++l) {
    for (int p = 0; p < kProjectionCount; ++p) {
      if (!wanted[p]) continue;
      LoraAdapter adapter;
      adapter.layer = l;
      adapter.projection = static_cast<Projection>(p);
      adapter.in = in[p];
      adapter.out = out[p];
      adapter.offsetA = parameterCount_;
      parameterCount_ += static_cast<size_t>(options.rank * in[p]);
      adapter.offsetB = parameterCount_;
      parameterCount_ += static_cast<size_t>(out[p] * options.rank);
      adapter.name = "blk." + std::to_string(l) + "." + projectionTensorStem(adapter.projection) + ".weight";
      index_[static_cast<size_t>(l * kProjectionCount + p)] = static_cast<int>(adapters_.size());
      adapters_.push_back(std::move(adapter));
    }
  }
}

void Lora::initialize(float* parameters) const {
  for (size_t a = 0; a < adapters_.size(); ++a) {
    const LoraAdapter& adapter = adapters_[a];
    const float bound = 1.0f / std::sqrt(static_cast<float>(adapter.in));
    const uint64_t stream = splitmix64(options_.seed ^ splitmix64(a + 1));
    float* A = parameters + adapter.offsetA;  // (rank, in)
    for (int64_t i = 0; i < options_.rank * adapter.in; ++i) {
      A[i] = (2.0f * unitFloat(splitmix64(stream + static_cast<uint64_t>(i))) - 1.0f) * bound;
    }
    float* B = parameters + adapter.offsetB;  // (out, rank)
    for (int64_t i = 0; i < adapter.out * options_.rank; ++i) B[i] = 0.0f;
  }
}

bool Lora::keeps(uint64_t step, int64_t layer, Projection projection, uint64_t index) const {
  const uint64_t site = static_cast<uint64_t>(layer * kProjectionCount + static_cast<int>(projection));
  return dropoutKeeps(dropoutStepKey(options_.seed, step), site, index, options_.dropout);
}

}  // namespace thinktune
