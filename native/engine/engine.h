// The training engine: LoRA forward/backward over a memory-mapped qwen2/llama GGUF, the fused
// chunked lm_head + cross-entropy, AdamW, on the CPU or one CUDA device. Every public call is written
// here once (validation, the busy guard, the row and layer loop, clipping, AdamW settings, state
// exchange, abort); the passes themselves are a Backend's (backend.h). Plain C++ (no Node): every
// failure throws thinktune::Error with its kind, an abort request surfaces as AbortedError between
// layers.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.h"
#include "engine/lora.h"
#include "engine/model.h"

namespace thinktune {

struct OptimizerOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weightDecay = 0.0f;
  float clipNorm = 1.0f;  // 0 = no clipping
};

// Arithmetic of the CPU backend's base-weight matmuls (LoRA and everything else stay fp32).
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
  std::string device = "cpu";  // "cpu" or "cuda": which Backend runs the passes
  int64_t gpuMemoryBytes = 0;  // cuda: plan against a card of this size instead of the free memory (0)
  int64_t maxKeptLayers = -1;  // keep at most this many layers' activations (-1: as many as the budget fits:
                               // the free GPU memory, or a quarter of the host's memory on the CPU)
  int64_t feedForwardTokens = 0;  // positions per feed-forward chunk (0: each (positions, F) buffer ≤ 128 MiB on the
                                  // CPU, 384 MiB on CUDA)
  // cuda: where the layers' residual checkpoints live: "auto" (the GPU, unless the budget then cannot keep every
  // layer: pinned host memory, copied on a second stream), "gpu" or "host"
  std::string checkpoints = "auto";
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

// Set from any thread to make the call it was given to stop between layers with AbortedError.
using AbortFlag = std::atomic<bool>;

// Input checks of every call, throwing Error: every row non-empty, within the context length and
// maxTokens, token ids (and, with needTargets, targets of the same length, -1 or in the vocabulary)
// valid, seqStarts 0 then strictly increasing.
void validateRows(const ModelConfig& config, int64_t maxTokens, const std::vector<Row>& rows, bool needTargets);
// validateRows with targets, then a finite lr >= 0 and at least one target token in the batch.
void validateStepInputs(const ModelConfig& config, int64_t maxTokens, const std::vector<Row>& rows, float lr);

// Checks that `tensors` are exactly the LoRA tensors of `lora` (names "<adapter>.lora_a<suffix>" /
// ".lora_b<suffix>", right shapes, finite values, none missing or repeated), then copies them into
// `block` (laid out as lora.parameterCount() floats). Throws Error prefixed with `what`; on error
// `block` is left untouched.
void loadLoraTensors(const Lora& lora, float* block, const std::vector<NamedTensorData>& tensors, const char* suffix,
                     const char* what);

class Engine {
 public:
  // Checks the options, maps and checks the model, plans every buffer on options.device.
  explicit Engine(EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // One optimizer step over every row (each row a micro-batch): gradients of the loss summed over
  // all rows, divided by the target-token count, clipped by global norm, AdamW at learning rate lr.
  // A non-finite loss, gradient or update is not applied (Error of kind Diverged): when it follows
  // an update of this engine, that update (whose weights produced it) is undone too.
  StepResult step(const std::vector<Row>& rows, float lr, const AbortFlag* abort = nullptr);
  LossResult evaluate(const std::vector<Row>& rows, const AbortFlag* abort = nullptr);
  // (T, nVocab) row-major; the row's targets are ignored
  std::vector<float> logits(const Row& row, const AbortFlag* abort = nullptr);
  // Gradients of the summed loss (not divided), without an update; one tensor per LoRA A and B.
  LossResult gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors,
                       const AbortFlag* abort = nullptr);

  std::vector<NamedTensorData> getLora();
  void setLora(const std::vector<NamedTensorData>& tensors);
  std::pair<int64_t, std::vector<NamedTensorData>> getOptimizerState();
  void setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors);
  std::vector<std::pair<std::string, double>> memoryPlan() const { return backend_->memoryPlan(); }

  const ModelConfig& config() const { return model_->config(); }
  const Lora& lora() const { return *lora_; }

 private:
  // Runs `body` as call `what`: refuses a concurrent call ("engine busy") and an engine whose device
  // failed earlier, prepares the backend on this thread, remembers a device failure.
  template <class Body>
  auto guarded(const char* what, const AbortFlag* abort, Body&& body) -> decltype(body());
  void checkAbort() const;
  void validateRows(const std::vector<Row>& rows, bool needTargets) const;
  void forwardLayers(int64_t T, const Pass& pass);
  LossResult runRows(const std::vector<Row>& rows, bool withGradient, const Pass& pass);
  // Throws the Diverged Error for `what`, first undoing the last update when there is one to undo.
  [[noreturn]] void diverged(const std::string& what);
  std::vector<NamedTensorData> namedTensors(LoraBlock block, const char* suffix);
  std::vector<float> hostBlock(const char* what) const;

  EngineOptions options_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Lora> lora_;
  std::unique_ptr<Backend> backend_;  // after model_ and lora_: it refers to them
  int64_t optimizerStep_ = 0;
  // The state before the last update is saved in the backend (saveState) until it is replaced.
  bool updateUndoable_ = false;
  std::atomic<bool> busy_{false};
  std::atomic<const char*> runningCall_{""};
  const AbortFlag* callAbort_ = nullptr;  // the running call's flag, or nullptr
  std::string broken_;  // why the device became unusable, or empty
};

}  // namespace thinktune
