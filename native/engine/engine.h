// The CPU training engine: LoRA forward/backward over a memory-mapped qwen2/llama GGUF, the fused
// chunked lm_head + cross-entropy, AdamW. Plain C++ (no Node): every failure throws thinktune::Error,
// an abort request surfaces as thinktune::AbortedError between layers.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/lora.h"
#include "engine/memory_plan.h"
#include "engine/model.h"

namespace thinktune {

struct OptimizerOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weightDecay = 0.0f;
  float clipNorm = 1.0f;  // 0 = no clipping
};

// Arithmetic of the base-weight matmuls (LoRA and everything else stay fp32).
enum class Precision { FP32, BF16 };

struct EngineOptions {
  std::string path;
  Precision precision = Precision::FP32;
  size_t alignment = 32;
  ModelConfig config;
  std::vector<TensorEntry> tensors;
  int threads = 0;  // 0 = every core
  LoraOptions lora;
  OptimizerOptions optimizer;
  int64_t maxTokens = 0;
  std::string device = "cpu";  // "cpu" or "cuda": engine/cuda_dispatch.h picks the engine
  int64_t gpuMemoryBytes = 0;  // cuda: plan against a card of this size instead of the free memory (0)
  int64_t maxKeptLayers = -1;  // cuda: keep at most this many layers' activations (-1: as many as fit)
};

// One row of a batch: packed sequences; targets are -1 where a position has no loss.
struct Row {
  std::vector<int32_t> tokens;
  std::vector<int32_t> targets;
  std::vector<int32_t> seqStarts;
};

struct LossResult {
  double lossSum = 0.0;
  int64_t tokens = 0;
};

struct StepResult {
  double lossSum = 0.0;
  int64_t tokens = 0;
  double gradNorm = 0.0;
};

struct NamedTensorData {
  std::string name;
  std::vector<int64_t> shape;  // row-major
  std::vector<float> data;
};

// Checks that `tensors` are exactly the LoRA tensors of `lora` (names "<adapter>.lora_a<suffix>" /
// ".lora_b<suffix>", right shapes, finite values, none missing or repeated), then copies them into
// `block` (laid out as lora.parameterCount() floats). Throws Error prefixed with `what`; on error
// `block` is left untouched. Shared by the CPU and CUDA engines.
// Input checks shared by the CPU and CUDA engines (same rules, same messages), throwing Error:
// every row non-empty, within the context length and maxTokens, token ids (and, with needTargets,
// targets of the same length, -1 or in the vocabulary) valid, seqStarts 0 then strictly increasing.
void validateRows(const ModelConfig& config, int64_t maxTokens, const std::vector<Row>& rows, bool needTargets);
// validateRows with targets, then a finite lr >= 0 and at least one target token in the batch.
void validateStepInputs(const ModelConfig& config, int64_t maxTokens, const std::vector<Row>& rows, float lr);

void loadLoraTensors(const Lora& lora, float* block, const std::vector<NamedTensorData>& tensors, const char* suffix,
                     const char* what);

class Engine {
 public:
  explicit Engine(EngineOptions options);

  // One optimizer step over every row (each row a micro-batch): gradients of the loss summed over
  // all rows, divided by the target-token count, clipped by global norm, AdamW at learning rate lr.
  StepResult step(const std::vector<Row>& rows, float lr);
  LossResult evaluate(const std::vector<Row>& rows);
  // (T, nVocab) row-major; the row's targets are ignored
  std::vector<float> logits(const Row& row);
  // Gradients of the summed loss (not divided), without an update; one tensor per LoRA A and B.
  LossResult gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors);

  std::vector<NamedTensorData> getLora();
  void setLora(const std::vector<NamedTensorData>& tensors);
  std::pair<int64_t, std::vector<NamedTensorData>> getOptimizerState();
  void setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors);
  std::vector<std::pair<std::string, double>> memoryPlan() const { return plan_->report(*model_); }

  // Thread-safe: makes the running call stop between layers with AbortedError.
  void requestAbort() { abortRequested_.store(true); }
  void clearAbort() { abortRequested_.store(false); }

  const ModelConfig& config() const { return model_->config(); }
  const Lora& lora() const { return *lora_; }

 private:
  // Holds the engine for one call; a second concurrent call throws "engine busy".
  class Call {
   public:
    Call(Engine& engine, const char* what);
    ~Call();
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

   private:
    Engine& engine_;
  };

  void validateRows(const std::vector<Row>& rows, bool needTargets) const;
  void checkAbort() const;
  void prepareRow(const Row& row);
  void embed(const Row& row);
  void layerForward(int64_t layer, int64_t T, bool training);
  void layerBackward(int64_t layer, int64_t T, bool training);
  // Final norm, lm_head and cross-entropy over the row's target positions; with the gradient, leaves
  // dL/d(final residual) in activations.dResidual. Returns the summed loss and the target count.
  LossResult lossHead(const Row& row, bool withGradient);
  LossResult runRows(const std::vector<Row>& rows, bool withGradient, bool training);

  // out (T, N) = inp (T, K)·Wᵀ (+ bias) for a base matrix of any type
  void baseForward(const MappedTensor& weight, const float* bias, const float* inp, float* out, int64_t T);
  // out (T, N) [row stride ldOut] = inp (T, K)·rowsᵀ (+ bias) / dinp (T, K) (+)= dout·rows, in the
  // engine's precision
  void weightMatmulForward(float* out, ptrdiff_t ldOut, const float* inp, const float* rows, const float* bias,
                           int64_t T, int64_t K, int64_t N);
  void weightMatmulBackwardInput(float* dinp, const float* dout, ptrdiff_t ldDout, const float* rows, int64_t T,
                                 int64_t K, int64_t N, bool accumulate);
  // dinp (T, K) (+)= dout (T, N)·W
  void baseBackwardInput(const MappedTensor& weight, const float* dout, float* dinp, int64_t T, bool accumulate);
  // out (T, N) += scale·((dropout(inp)·Aᵀ)·Bᵀ), keeping x·Aᵀ in activations.loraHidden
  void loraForward(const LoraAdapter& adapter, const float* inp, float* out, int64_t T, bool training);
  // parameter grads += ; dinp (T, K) += the LoRA path's input gradient (skipped when dinp is null)
  void loraBackward(const LoraAdapter& adapter, const float* inp, const float* dout, float* dinp, int64_t T,
                    bool training);
  // input of the LoRA path: inp itself, or dropout(inp) in scratch.droppedInput
  const float* loraInput(const LoraAdapter& adapter, const float* inp, int64_t T, bool training);
  std::vector<NamedTensorData> namedTensors(const float* block, const char* suffix) const;

  EngineOptions options_;
  int threads_ = 1;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Lora> lora_;
  std::unique_ptr<MemoryPlan> plan_;
  int64_t optimizerStep_ = 0;
  std::atomic<bool> busy_{false};
  std::atomic<bool> abortRequested_{false};
  std::atomic<const char*> runningCall_{""};
};

}  // namespace thinktune
