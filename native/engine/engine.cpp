// The engine's public calls, written once over a Backend: lifetime, input validation, the row and
// layer loop, the optimizer step around the backend's AdamW, LoRA / optimizer state exchange.
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "common/error.h"

namespace thinktune {

namespace {
std::string rowWhere(size_t row) { return "row " + std::to_string(row); }
}  // namespace

Engine::Engine(EngineOptions options) : options_(std::move(options)) {
  if (options_.device != "cpu" && options_.device != "cuda") {
    throw Error("options.device must be \"cpu\" or \"cuda\", got \"" + options_.device + "\"");
  }
  if (options_.maxTokens <= 0) {
    throw Error("maxTokens must be a positive integer, got " + std::to_string(options_.maxTokens));
  }
  if (options_.maxTokens > options_.config.contextLength) {
    throw Error("maxTokens " + std::to_string(options_.maxTokens) + " exceeds the model's context length " +
                std::to_string(options_.config.contextLength));
  }
  if (options_.gpuMemoryBytes < 0) {
    throw Error("gpuMemoryBytes must be >= 0, got " + std::to_string(options_.gpuMemoryBytes));
  }
  model_ = std::make_unique<Model>(options_.path, std::move(options_.tensors), options_.alignment, options_.config);
  options_.tensors.clear();
  lora_ = std::make_unique<Lora>(model_->config(), options_.lora);
  backend_ = options_.device == "cpu" ? createCpuBackend(options_, *model_, *lora_)
                                      : createCudaBackend(options_, *model_, *lora_);
  backend_->beginCall();
  std::vector<float> initial = hostBlock("the initial LoRA parameters");
  lora_->initialize(initial.data());
  backend_->writeBlock(LoraBlock::Params, initial.data());
}

Engine::~Engine() = default;

template <class Body>
auto Engine::guarded(const char* what, const AbortFlag* abort, Body&& body) -> decltype(body()) {
  if (busy_.exchange(true)) {
    throw Error(std::string("engine busy: ") + runningCall_.load() + " is still running; await it before calling " +
                what);
  }
  runningCall_.store(what);
  callAbort_ = abort;
  struct Release {
    Engine& engine;
    ~Release() {
      engine.callAbort_ = nullptr;
      engine.runningCall_.store("");
      engine.busy_.store(false);
    }
  } release{*this};
  if (!broken_.empty()) {
    throw Error("the CUDA engine is unusable after an earlier GPU failure (" + broken_ +
                    "); dispose it and create a new engine",
                ErrorKind::DeviceFailure);
  }
  try {
    backend_->beginCall();
    return body();
  } catch (const Error& error) {
    // the device may be unusable after a failed CUDA call: refuse later calls instead of guessing
    if (error.kind == ErrorKind::DeviceFailure) broken_ = error.what();
    throw;
  }
}

void Engine::checkAbort() const {
  if (callAbort_ && callAbort_->load()) throw AbortedError();
}

void validateRows(const ModelConfig& c, int64_t maxTokens, const std::vector<Row>& rows, bool needTargets) {
  if (rows.empty()) throw Error("the batch is empty; pass at least one row");
  for (size_t r = 0; r < rows.size(); ++r) {
    const Row& row = rows[r];
    const int64_t T = static_cast<int64_t>(row.tokens.size());
    if (T == 0) throw Error(rowWhere(r) + " has no tokens");
    if (needTargets && row.targets.size() != row.tokens.size()) {
      throw Error(rowWhere(r) + ": targets has " + std::to_string(row.targets.size()) + " entries but tokens has " +
                  std::to_string(T) + "; they must be the same length");
    }
    if (T > c.contextLength) {
      throw Error(rowWhere(r) + " has " + std::to_string(T) + " tokens, more than the model's context length " +
                  std::to_string(c.contextLength));
    }
    if (T > maxTokens) {
      throw Error(rowWhere(r) + " has " + std::to_string(T) + " tokens, more than maxTokens " +
                  std::to_string(maxTokens) + " the engine was created with");
    }
    for (int64_t t = 0; t < T; ++t) {
      const int32_t token = row.tokens[static_cast<size_t>(t)];
      if (token < 0 || token >= c.nVocab) {
        throw Error(rowWhere(r) + " position " + std::to_string(t) + ": token id " + std::to_string(token) +
                    " is outside the vocabulary [0, " + std::to_string(c.nVocab) + ")");
      }
      if (needTargets) {
        const int32_t target = row.targets[static_cast<size_t>(t)];
        if (target < -1 || target >= c.nVocab) {
          throw Error(rowWhere(r) + " position " + std::to_string(t) + ": target " + std::to_string(target) +
                      " is outside the vocabulary [0, " + std::to_string(c.nVocab) + ") and is not -1 (no loss)");
        }
      }
    }
    if (row.seqStarts.empty() || row.seqStarts[0] != 0) {
      throw Error(rowWhere(r) + ": seqStarts must start with 0 (the first sequence begins at the row's start)");
    }
    for (size_t s = 1; s < row.seqStarts.size(); ++s) {
      if (row.seqStarts[s] <= row.seqStarts[s - 1] || row.seqStarts[s] >= T) {
        throw Error(rowWhere(r) + ": seqStarts[" + std::to_string(s) + "] = " + std::to_string(row.seqStarts[s]) +
                    "; sequence starts must increase strictly and lie inside the row (0.." + std::to_string(T - 1) +
                    ")");
      }
    }
  }
}

void validateStepInputs(const ModelConfig& c, int64_t maxTokens, const std::vector<Row>& rows, float lr) {
  validateRows(c, maxTokens, rows, true);
  if (!(std::isfinite(lr) && lr >= 0.0f)) throw Error("learning rate must be a finite number >= 0, got " + std::to_string(lr));
  int64_t targetCount = 0;
  for (const Row& row : rows)
    for (int32_t target : row.targets) targetCount += target >= 0;
  if (targetCount == 0) {
    throw Error("the batch has no target tokens (every target is -1); a step needs at least one position with loss");
  }
}

void Engine::validateRows(const std::vector<Row>& rows, bool needTargets) const {
  thinktune::validateRows(model_->config(), options_.maxTokens, rows, needTargets);
}

void Engine::forwardLayers(int64_t T, const Pass& pass) {
  for (int64_t l = 0; l < model_->config().nLayer; ++l) {
    checkAbort();
    backend_->layerForward(l, T, pass);
  }
}

LossResult Engine::runRows(const std::vector<Row>& rows, bool withGradient, const Pass& rowsPass) {
  const int64_t L = model_->config().nLayer;
  Pass pass = rowsPass;
  pass.backward = withGradient;
  LossResult total;
  backend_->resetLoss();
  for (const Row& row : rows) {
    checkAbort();
    const int64_t T = static_cast<int64_t>(row.tokens.size());
    backend_->beginRow(row);
    forwardLayers(T, pass);
    const int64_t targets = backend_->lossHead(row, withGradient);
    if (withGradient && targets > 0) {
      for (int64_t l = L - 1; l >= 0; --l) {
        checkAbort();
        // The last layer's activations are still in place from the forward pass (the loss head has
        // buffers of its own); below layer 0 lies the frozen embedding, which needs no gradient.
        backend_->layerBackward(l, T, pass, l != L - 1, l > 0);
      }
    }
    total.tokens += targets;
  }
  total.lossSum = backend_->lossSum();
  return total;
}

void Engine::diverged(const std::string& what) {
  std::string message = what + "; lower the learning rate or check the data";
  if (updateUndoable_) {
    // the weights of the last update produced this: back to the state before it
    backend_->restoreState();
    message += " (the update of step " + std::to_string(optimizerStep_) + ", which led here, was undone)";
    --optimizerStep_;
    updateUndoable_ = false;
  }
  throw Error(message, ErrorKind::Diverged);
}

StepResult Engine::step(const std::vector<Row>& rows, float lr, const AbortFlag* abort) {
  return guarded("step", abort, [&]() -> StepResult {
    validateStepInputs(model_->config(), options_.maxTokens, rows, lr);
    backend_->zeroGradients();
    const LossResult loss = runRows(rows, true, {true, static_cast<uint64_t>(optimizerStep_ + 1)});
    if (!std::isfinite(loss.lossSum)) diverged("loss became NaN or infinite");

    const double meanScale = 1.0 / static_cast<double>(loss.tokens);
    const double gradNorm = std::sqrt(backend_->sumSquares(LoraBlock::Grads)) * meanScale;
    if (!std::isfinite(gradNorm)) diverged("gradient became NaN or infinite");
    double gradScale = meanScale;
    const OptimizerOptions& opt = options_.optimizer;
    if (opt.clipNorm > 0.0f && gradNorm > opt.clipNorm) gradScale *= opt.clipNorm / (gradNorm + 1e-6);

    backend_->saveState();
    backend_->adamwUpdate(adamwStep(lr, opt.beta1, opt.beta2, opt.eps, opt.weightDecay, optimizerStep_ + 1,
                                    static_cast<float>(gradScale)));
    const double updated = backend_->sumSquares(LoraBlock::Params) + backend_->sumSquares(LoraBlock::M) +
                           backend_->sumSquares(LoraBlock::V);
    if (!std::isfinite(updated)) {
      backend_->restoreState();
      updateUndoable_ = false;  // the saved copy now holds this step's starting state
      throw Error("the AdamW update at learning rate " + std::to_string(lr) +
                      " became NaN or infinite and was not applied; lower the learning rate",
                  ErrorKind::Diverged);
    }
    ++optimizerStep_;
    updateUndoable_ = true;
    return {loss.lossSum, loss.tokens, gradNorm};
  });
}

LossResult Engine::evaluate(const std::vector<Row>& rows, const AbortFlag* abort) {
  return guarded("evaluate", abort, [&]() -> LossResult {
    validateRows(rows, true);
    const LossResult loss = runRows(rows, false, {false, 0});
    if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite during evaluate", ErrorKind::Diverged);
    return loss;
  });
}

LossResult Engine::gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors,
                             const AbortFlag* abort) {
  return guarded("gradients", abort, [&]() -> LossResult {
    validateRows(rows, true);
    backend_->zeroGradients();
    const LossResult loss = runRows(rows, true, {false, 0});
    if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite", ErrorKind::Diverged);
    tensors = namedTensors(LoraBlock::Grads, "");
    return loss;
  });
}

std::vector<float> Engine::logits(const Row& row, const AbortFlag* abort) {
  return guarded("logits", abort, [&]() -> std::vector<float> {
    validateRows({row}, false);
    const int64_t T = static_cast<int64_t>(row.tokens.size());
    const int64_t V = model_->config().nVocab;
    std::vector<float> result;  // (T, V)
    resizeOrThrow(result, static_cast<size_t>(T * V),
                  "the logits of " + std::to_string(T) + " positions × " + std::to_string(V) +
                      " vocabulary entries; ask for fewer positions");
    backend_->beginRow(row);
    forwardLayers(T, {false, 0});
    backend_->logitsHead(T, result.data());
    for (float value : result)
      if (!std::isfinite(value)) throw Error("logits became NaN or infinite", ErrorKind::Diverged);
    return result;
  });
}

std::vector<float> Engine::hostBlock(const char* what) const {
  std::vector<float> block;
  resizeOrThrow(block, lora_->parameterCount(), what);
  return block;
}

std::vector<NamedTensorData> Engine::namedTensors(LoraBlock which, const char* suffix) {
  std::vector<float> block = hostBlock("a copy of the LoRA tensors");
  backend_->readBlock(which, block.data());
  std::vector<NamedTensorData> tensors;
  const int64_t R = lora_->options().rank;
  for (const LoraAdapter& adapter : lora_->adapters()) {
    const float* a = block.data() + adapter.offsetA;
    const float* b = block.data() + adapter.offsetB;
    tensors.push_back({adapter.name + ".lora_a" + suffix, {R, adapter.in}, std::vector<float>(a, a + R * adapter.in)});
    tensors.push_back({adapter.name + ".lora_b" + suffix, {adapter.out, R}, std::vector<float>(b, b + adapter.out * R)});
  }
  return tensors;
}

void loadLoraTensors(const Lora& lora, float* block, const std::vector<NamedTensorData>& tensors, const char* suffix,
                     const char* what) {
  struct Slot {
    size_t offset;
    int64_t rows, cols;
    bool seen;
  };
  std::unordered_map<std::string, Slot> slots;
  const int64_t R = lora.options().rank;
  for (const LoraAdapter& adapter : lora.adapters()) {
    slots[adapter.name + ".lora_a" + suffix] = {adapter.offsetA, R, adapter.in, false};
    slots[adapter.name + ".lora_b" + suffix] = {adapter.offsetB, adapter.out, R, false};
  }
  for (const NamedTensorData& tensor : tensors) {
    auto found = slots.find(tensor.name);
    if (found == slots.end()) {
      throw Error(std::string(what) + ": tensor \"" + tensor.name +
                  "\" is not part of this engine's LoRA (check the targets and layer count it was trained with)");
    }
    Slot& slot = found->second;
    if (slot.seen) throw Error(std::string(what) + ": tensor \"" + tensor.name + "\" is given twice");
    if (tensor.shape.size() != 2 || tensor.shape[0] != slot.rows || tensor.shape[1] != slot.cols ||
        static_cast<int64_t>(tensor.data.size()) != slot.rows * slot.cols) {
      throw Error(std::string(what) + ": tensor \"" + tensor.name + "\" must have shape [" + std::to_string(slot.rows) +
                  ", " + std::to_string(slot.cols) + "] with " + std::to_string(slot.rows * slot.cols) +
                  " values (a different rank?), got " + std::to_string(tensor.data.size()) + " values");
    }
    for (size_t i = 0; i < tensor.data.size(); ++i) {
      if (!std::isfinite(tensor.data[i])) {
        throw Error(std::string(what) + ": tensor \"" + tensor.name + "\" holds a NaN or infinite value at element " +
                    std::to_string(i));
      }
    }
    slot.seen = true;
  }
  for (const auto& [name, slot] : slots) {
    if (!slot.seen) throw Error(std::string(what) + ": tensor \"" + name + "\" is missing; every LoRA tensor must be given");
  }
  for (const NamedTensorData& tensor : tensors) {
    std::memcpy(block + slots[tensor.name].offset, tensor.data.data(), tensor.data.size() * sizeof(float));
  }
}

std::vector<NamedTensorData> Engine::getLora() {
  return guarded("getLora", nullptr, [&] { return namedTensors(LoraBlock::Params, ""); });
}

void Engine::setLora(const std::vector<NamedTensorData>& tensors) {
  guarded("setLora", nullptr, [&] {
    std::vector<float> block = hostBlock("a copy of the LoRA tensors");
    loadLoraTensors(*lora_, block.data(), tensors, "", "setLora");
    backend_->writeBlock(LoraBlock::Params, block.data());
    updateUndoable_ = false;
  });
}

std::pair<int64_t, std::vector<NamedTensorData>> Engine::getOptimizerState() {
  return guarded("getOptimizerState", nullptr, [&] {
    std::vector<NamedTensorData> tensors = namedTensors(LoraBlock::M, ".m");
    for (NamedTensorData& tensor : namedTensors(LoraBlock::V, ".v")) tensors.push_back(std::move(tensor));
    return std::make_pair(optimizerStep_, std::move(tensors));
  });
}

void Engine::setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors) {
  guarded("setOptimizerState", nullptr, [&] {
    if (step < 0) throw Error("setOptimizerState: step must be >= 0, got " + std::to_string(step));
    std::vector<NamedTensorData> first, second;
    for (const NamedTensorData& tensor : tensors) {
      const bool isM = tensor.name.size() > 2 && tensor.name.compare(tensor.name.size() - 2, 2, ".m") == 0;
      (isM ? first : second).push_back(tensor);
    }
    // validate both halves before writing either
    std::vector<float> m = hostBlock("a copy of the optimizer state");
    std::vector<float> v = hostBlock("a copy of the optimizer state");
    loadLoraTensors(*lora_, m.data(), first, ".m", "setOptimizerState");
    loadLoraTensors(*lora_, v.data(), second, ".v", "setOptimizerState");
    for (float value : v) {
      if (value < 0.0f) throw Error("setOptimizerState: a second-moment (.v) value is negative; the state is corrupt");
    }
    backend_->writeBlock(LoraBlock::M, m.data());
    backend_->writeBlock(LoraBlock::V, v.data());
    optimizerStep_ = step;
    updateUndoable_ = false;
  });
}

}  // namespace thinktune
