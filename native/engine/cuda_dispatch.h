// The engine of EngineOptions::device: thinktune::Engine for "cpu", thinktune::CudaEngine for "cuda"
// (in builds with the CUDA engine). The addon holds this, so both devices share one wrapper.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace thinktune {

class CudaEngine;

class DeviceEngine {
 public:
  // Throws thinktune::Error for an unknown device, or "cuda" in a build without the CUDA engine.
  explicit DeviceEngine(EngineOptions options);
  ~DeviceEngine();

  StepResult step(const std::vector<Row>& rows, float lr);
  LossResult evaluate(const std::vector<Row>& rows);
  std::vector<float> logits(const Row& row);
  LossResult gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors);
  std::vector<NamedTensorData> getLora();
  void setLora(const std::vector<NamedTensorData>& tensors);
  std::pair<int64_t, std::vector<NamedTensorData>> getOptimizerState();
  void setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors);
  std::vector<std::pair<std::string, double>> memoryPlan() const;
  void requestAbort();
  void clearAbort();

 private:
  std::unique_ptr<Engine> cpu_;
  std::unique_ptr<CudaEngine> cuda_;
};

}  // namespace thinktune
