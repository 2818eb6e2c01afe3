// Engine lifetime, input validation, the public calls and LoRA / optimizer state exchange.
// The forward and backward passes are in train_step.cpp.
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "engine/error.h"
#include "engine/parallel.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/matmul_bf16.h"
#include "kernels/cpu/threading.h"

namespace thinktune {

namespace {
constexpr int64_t kWeightChunkFloats = int64_t{4} << 20;  // 16 MiB of dequantized rows
constexpr int64_t kLogitsChunkFloats = int64_t{8} << 20;  // 32 MiB of (tokens, vocab chunk) logits

std::string rowWhere(size_t row) { return "row " + std::to_string(row); }
}  // namespace

Engine::Call::Call(Engine& engine, const char* what) : engine_(engine) {
  if (engine.busy_.exchange(true)) {
    throw Error(std::string("engine busy: ") + engine.runningCall_.load() + " is still running; await it before calling " +
                what);
  }
  engine.runningCall_.store(what);
  setThreadCount(engine.threads_);
}

Engine::Call::~Call() {
  engine_.runningCall_.store("");
  engine_.busy_.store(false);
}

Engine::Engine(EngineOptions options) : options_(std::move(options)) {
  if (options_.maxTokens <= 0) {
    throw Error("maxTokens must be a positive integer, got " + std::to_string(options_.maxTokens));
  }
  if (options_.maxTokens > options_.config.contextLength) {
    throw Error("maxTokens " + std::to_string(options_.maxTokens) + " exceeds the model's context length " +
                std::to_string(options_.config.contextLength));
  }
  if (options_.precision == Precision::BF16 && !kernels::bf16MatmulAvailable()) {
    throw Error("precision \"bf16\" needs a CPU with AVX512-BF16 (and a build for it); use precision \"fp32\"");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  threads_ = options_.threads > 0 ? options_.threads : static_cast<int>(cores == 0 ? 1 : cores);
  setThreadCount(threads_);
  model_ = std::make_unique<Model>(options_.path, std::move(options_.tensors), options_.alignment, options_.config);
  options_.tensors.clear();
  lora_ = std::make_unique<Lora>(model_->config(), options_.lora);

  const ModelConfig& c = model_->config();
  PlanSizes sizes;
  sizes.maxTokens = options_.maxTokens;
  sizes.threads = threads_;
  sizes.vocabChunk = std::min<int64_t>(c.nVocab, std::max<int64_t>(256, kLogitsChunkFloats / sizes.maxTokens));
  const int64_t largestMatrix = model_->maxRows() * model_->maxRowLength();
  sizes.weightChunkFloats = std::max(std::min(kWeightChunkFloats, largestMatrix),
                                     std::max(model_->maxRowLength() * 32, sizes.vocabChunk * c.nEmbd));
  plan_ = std::make_unique<MemoryPlan>(*model_, *lora_, sizes);
  lora_->initialize(plan_->lora().params);
}

void Engine::checkAbort() const {
  if (abortRequested_.load()) throw AbortedError();
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

StepResult Engine::step(const std::vector<Row>& rows, float lr) {
  Call call(*this, "step");
  validateStepInputs(model_->config(), options_.maxTokens, rows, lr);
  const size_t P = lora_->parameterCount();
  const LoraBuffers& buffers = plan_->lora();
  std::fill(buffers.grads, buffers.grads + P, 0.0f);
  const LossResult loss = runRows(rows, true, true);
  if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite; lower the learning rate or check the data");

  double sumSquares = 0.0;
#pragma omp parallel for reduction(+ : sumSquares) schedule(static) if (P >= kernels::kParallelMinWork)
  for (size_t i = 0; i < P; ++i) sumSquares += static_cast<double>(buffers.grads[i]) * buffers.grads[i];
  const double meanScale = 1.0 / static_cast<double>(loss.tokens);
  const double gradNorm = std::sqrt(sumSquares) * meanScale;
  if (!std::isfinite(gradNorm)) throw Error("gradient became NaN or infinite; lower the learning rate or check the data");
  double gradScale = meanScale;
  const OptimizerOptions& opt = options_.optimizer;
  if (opt.clipNorm > 0.0f && gradNorm > opt.clipNorm) gradScale *= opt.clipNorm / (gradNorm + 1e-6);

  ++optimizerStep_;
  kernels::AdamWHyper hyper{lr, opt.beta1, opt.beta2, opt.eps, opt.weightDecay, optimizerStep_};
  kernels::adamw_update(buffers.params, buffers.m, buffers.v, buffers.grads, static_cast<int64_t>(P),
                        static_cast<float>(gradScale), hyper);
  return {loss.lossSum, loss.tokens, gradNorm};
}

LossResult Engine::evaluate(const std::vector<Row>& rows) {
  Call call(*this, "evaluate");
  validateRows(rows, true);
  const LossResult loss = runRows(rows, false, false);
  if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite during evaluate");
  return loss;
}

LossResult Engine::gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors) {
  Call call(*this, "gradients");
  validateRows(rows, true);
  const size_t P = lora_->parameterCount();
  std::fill(plan_->lora().grads, plan_->lora().grads + P, 0.0f);
  const LossResult loss = runRows(rows, true, false);
  if (!std::isfinite(loss.lossSum)) throw Error("loss became NaN or infinite");
  tensors = namedTensors(plan_->lora().grads, "");
  return loss;
}

std::vector<NamedTensorData> Engine::namedTensors(const float* block, const char* suffix) const {
  std::vector<NamedTensorData> tensors;
  const int64_t R = lora_->options().rank;
  for (const LoraAdapter& adapter : lora_->adapters()) {
    NamedTensorData a{adapter.name + ".lora_a" + suffix, {R, adapter.in}, {}};
    a.data.assign(block + adapter.offsetA, block + adapter.offsetA + R * adapter.in);
    NamedTensorData b{adapter.name + ".lora_b" + suffix, {adapter.out, R}, {}};
    b.data.assign(block + adapter.offsetB, block + adapter.offsetB + adapter.out * R);
    tensors.push_back(std::move(a));
    tensors.push_back(std::move(b));
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
  Call call(*this, "getLora");
  return namedTensors(plan_->lora().params, "");
}

void Engine::setLora(const std::vector<NamedTensorData>& tensors) {
  Call call(*this, "setLora");
  loadLoraTensors(*lora_, plan_->lora().params, tensors, "", "setLora");
}

std::pair<int64_t, std::vector<NamedTensorData>> Engine::getOptimizerState() {
  Call call(*this, "getOptimizerState");
  std::vector<NamedTensorData> tensors = namedTensors(plan_->lora().m, ".m");
  std::vector<NamedTensorData> second = namedTensors(plan_->lora().v, ".v");
  for (NamedTensorData& tensor : second) tensors.push_back(std::move(tensor));
  return {optimizerStep_, std::move(tensors)};
}

void Engine::setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors) {
  Call call(*this, "setOptimizerState");
  if (step < 0) throw Error("setOptimizerState: step must be >= 0, got " + std::to_string(step));
  std::vector<NamedTensorData> first, second;
  for (const NamedTensorData& tensor : tensors) {
    const bool isM = tensor.name.size() > 2 && tensor.name.compare(tensor.name.size() - 2, 2, ".m") == 0;
    (isM ? first : second).push_back(tensor);
  }
  // validate both halves before writing either
  std::vector<float> m(lora_->parameterCount()), v(lora_->parameterCount());
  loadLoraTensors(*lora_, m.data(), first, ".m", "setOptimizerState");
  loadLoraTensors(*lora_, v.data(), second, ".v", "setOptimizerState");
  for (float value : v) {
    if (value < 0.0f) throw Error("setOptimizerState: a second-moment (.v) value is negative; the state is corrupt");
  }
  std::copy(m.begin(), m.end(), plan_->lora().m);
  std::copy(v.begin(), v.end(), plan_->lora().v);
  optimizerStep_ = step;
}

}  // namespace thinktune
