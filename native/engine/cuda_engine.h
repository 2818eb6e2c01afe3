// The CUDA training engine: the CPU engine's model, LoRA layout, loss and optimizer on one GPU.
// Frozen base weights stay in their GGUF type in GPU memory and are dequantized to bf16 right before
// each matrix product (cuBLAS, fp32 accumulation); activations, LoRA A/B and AdamW state are fp32.
// Everything lives in one planned device allocation, compared with the free GPU memory (or
// EngineOptions::gpuMemoryBytes) before it is made. Plain C++ header (no CUDA types) so the CPU
// build and the dispatch code include it; the implementation is cuda_engine.cu.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace thinktune {

// Usable CUDA devices: 0 without a driver or a GPU (never throws).
int cudaDeviceCount();

class CudaEngine {
 public:
  explicit CudaEngine(EngineOptions options);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // The same calls, with the same meaning and error messages, as thinktune::Engine.
  StepResult step(const std::vector<Row>& rows, float lr);
  LossResult evaluate(const std::vector<Row>& rows);
  std::vector<float> logits(const Row& row);
  LossResult gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors);
  std::vector<NamedTensorData> getLora();
  void setLora(const std::vector<NamedTensorData>& tensors);
  std::pair<int64_t, std::vector<NamedTensorData>> getOptimizerState();
  void setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors);
  // bytes per lifetime of the device allocation: weights, lora, activations, scratch, total
  std::vector<std::pair<std::string, double>> memoryPlan() const;
  void requestAbort();
  void clearAbort();
  const ModelConfig& config() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace thinktune
