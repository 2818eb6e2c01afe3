// exports.Engine.create(options) → Promise<NativeEngine>: the Node-API face of thinktune::Engine.
// Options, batches and tensors are copied into plain C++ structs on the JS thread; every call but
// memoryPlan is one AsyncWorker that Ref()s its owner and holds the engine (shared), so dispose()
// during a call only aborts it and the memory goes when the call settles. Each call has its own
// abort flag: abort(callId) stops that call only. Concurrent calls on one engine reject with
// "engine busy" (thinktune::Engine refuses them), never race. Rejections carry error.code.
#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "addon/errors.h"
#include "addon/registry.h"
#include "common/error.h"
#include "engine/engine.h"

namespace thinktune::addon {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

// ---- reading JS values (throw thinktune::Error naming the field) ----

Napi::Value field(const Napi::Object& object, const char* key, const std::string& where) {
  Napi::Value value = object.Get(key);
  if (value.IsUndefined()) throw Error(where + "." + key + " is missing");
  return value;
}

double numberField(const Napi::Object& object, const char* key, const std::string& where) {
  Napi::Value value = field(object, key, where);
  if (!value.IsNumber()) throw Error(where + "." + key + " must be a number");
  const double number = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(number)) throw Error(where + "." + key + " must be finite");
  return number;
}

int64_t integerField(const Napi::Object& object, const char* key, const std::string& where) {
  const double number = numberField(object, key, where);
  if (std::floor(number) != number || std::fabs(number) > kMaxSafeInteger) {
    throw Error(where + "." + key + " must be an integer, got " + std::to_string(number));
  }
  return static_cast<int64_t>(number);
}

bool booleanField(const Napi::Object& object, const char* key, const std::string& where) {
  Napi::Value value = field(object, key, where);
  if (!value.IsBoolean()) throw Error(where + "." + key + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

std::string stringField(const Napi::Object& object, const char* key, const std::string& where) {
  Napi::Value value = field(object, key, where);
  if (!value.IsString()) throw Error(where + "." + key + " must be a string");
  return value.As<Napi::String>().Utf8Value();
}

Napi::Object objectField(const Napi::Object& object, const char* key, const std::string& where) {
  Napi::Value value = field(object, key, where);
  if (!value.IsObject() || value.IsArray()) throw Error(where + "." + key + " must be an object");
  return value.As<Napi::Object>();
}

Napi::Array arrayValue(const Napi::Value& value, const std::string& where) {
  if (!value.IsArray()) throw Error(where + " must be an array");
  return value.As<Napi::Array>();
}

template <typename TypedArray>
TypedArray typedArray(const Napi::Value& value, napi_typedarray_type type, const char* typeName,
                      const std::string& where) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Error(where + " must be " + typeName);
  }
  return value.As<TypedArray>();
}

std::vector<int32_t> int32Field(const Napi::Object& object, const char* key, const std::string& where) {
  const auto array = typedArray<Napi::Int32Array>(field(object, key, where), napi_int32_array, "an Int32Array",
                                                  where + "." + key);
  return std::vector<int32_t>(array.Data(), array.Data() + array.ElementLength());
}

Projection projectionFromName(const std::string& name, const std::string& where) {
  for (int p = 0; p < kProjectionCount; ++p)
    if (name == projectionTargetName(static_cast<Projection>(p))) return static_cast<Projection>(p);
  throw Error(where + ": unknown LoRA target \"" + name + "\"; use q, k, v, o, gate, up or down");
}

EngineOptions engineOptions(const Napi::Object& options) {
  const std::string where = "options";
  EngineOptions result;
  result.path = stringField(options, "path", where);
  if (options.Has("alignment") && !options.Get("alignment").IsUndefined()) {
    const int64_t alignment = integerField(options, "alignment", where);
    if (alignment <= 0) throw Error("options.alignment must be positive");
    result.alignment = static_cast<size_t>(alignment);
  }
  if (options.Has("precision") && !options.Get("precision").IsUndefined()) {
    const std::string precision = stringField(options, "precision", where);
    if (precision != "fp32" && precision != "bf16") {
      throw Error("options.precision must be \"fp32\" or \"bf16\", got \"" + precision + "\"");
    }
    result.precision = precision == "bf16" ? Precision::BF16 : Precision::FP32;
  }
  result.device = stringField(options, "device", where);  // thinktune::Engine checks it
  if (options.Has("maxKeptLayers") && !options.Get("maxKeptLayers").IsUndefined()) {
    result.maxKeptLayers = integerField(options, "maxKeptLayers", where);
    if (result.maxKeptLayers < 0) {
      throw Error(where + ".maxKeptLayers must be >= 0, got " + std::to_string(result.maxKeptLayers));
    }
  }
  if (options.Has("feedForwardTokens") && !options.Get("feedForwardTokens").IsUndefined()) {
    result.feedForwardTokens = integerField(options, "feedForwardTokens", where);
    if (result.feedForwardTokens < 1) {
      throw Error(where + ".feedForwardTokens must be >= 1, got " + std::to_string(result.feedForwardTokens));
    }
  }
  if (options.Has("gpuMemoryBytes") && !options.Get("gpuMemoryBytes").IsUndefined()) {
    result.gpuMemoryBytes = integerField(options, "gpuMemoryBytes", where);
  }
  if (options.Has("checkpoints") && !options.Get("checkpoints").IsUndefined()) {
    result.checkpoints = stringField(options, "checkpoints", where);
    if (result.checkpoints != "auto" && result.checkpoints != "gpu" && result.checkpoints != "host") {
      throw Error(where + ".checkpoints must be \"auto\", \"gpu\" or \"host\", got \"" + result.checkpoints + "\"");
    }
  }
  const Napi::Object config = objectField(options, "config", where);
  ModelConfig& c = result.config;
  const std::string cw = "options.config";
  c.arch = stringField(config, "arch", cw);
  c.nLayer = integerField(config, "nLayer", cw);
  c.nEmbd = integerField(config, "nEmbd", cw);
  c.nHead = integerField(config, "nHead", cw);
  c.nHeadKv = integerField(config, "nHeadKv", cw);
  c.headDim = integerField(config, "headDim", cw);
  c.nFf = integerField(config, "nFf", cw);
  c.nVocab = integerField(config, "nVocab", cw);
  c.contextLength = integerField(config, "contextLength", cw);
  c.ropeBase = static_cast<float>(numberField(config, "ropeBase", cw));
  c.rmsEps = static_cast<float>(numberField(config, "rmsEps", cw));
  c.tiedOutput = booleanField(config, "tiedOutput", cw);
  c.hasQkvBias = booleanField(config, "hasQkvBias", cw);
  c.hasRopeFreqs = booleanField(config, "hasRopeFreqs", cw);

  const Napi::Array tensors = arrayValue(field(options, "tensors", where), "options.tensors");
  for (uint32_t i = 0; i < tensors.Length(); ++i) {
    const std::string tw = "options.tensors[" + std::to_string(i) + "]";
    const Napi::Value entryValue = tensors.Get(i);
    if (!entryValue.IsObject()) throw Error(tw + " must be an object");
    const Napi::Object entry = entryValue.As<Napi::Object>();
    TensorEntry tensor;
    tensor.name = stringField(entry, "name", tw);
    const int64_t type = integerField(entry, "type", tw);
    if (type < 0) throw Error(tw + ".type must be a ggml type id");
    tensor.type = static_cast<uint32_t>(type);
    const Napi::Array dims = arrayValue(field(entry, "dims", tw), tw + ".dims");
    for (uint32_t d = 0; d < dims.Length(); ++d) {
      const Napi::Value dim = dims.Get(d);
      if (!dim.IsNumber()) throw Error(tw + ".dims must hold numbers");
      tensor.dims.push_back(static_cast<int64_t>(dim.As<Napi::Number>().DoubleValue()));
    }
    const int64_t offset = integerField(entry, "offset", tw);
    if (offset < 0) throw Error(tw + ".offset must be >= 0");
    tensor.offset = static_cast<uint64_t>(offset);
    result.tensors.push_back(std::move(tensor));
  }
  result.threads = static_cast<int>(integerField(options, "threads", where));
  result.maxTokens = integerField(options, "maxTokens", where);

  const Napi::Object lora = objectField(options, "lora", where);
  const std::string lw = "options.lora";
  result.lora.rank = integerField(lora, "rank", lw);
  result.lora.alpha = static_cast<float>(numberField(lora, "alpha", lw));
  result.lora.dropout = static_cast<float>(numberField(lora, "dropout", lw));
  const int64_t seed = integerField(lora, "seed", lw);
  result.lora.seed = static_cast<uint64_t>(seed);
  const Napi::Array targets = arrayValue(field(lora, "targets", lw), lw + ".targets");
  for (uint32_t i = 0; i < targets.Length(); ++i) {
    const Napi::Value target = targets.Get(i);
    if (!target.IsString()) throw Error(lw + ".targets must hold strings");
    result.lora.targets.push_back(projectionFromName(target.As<Napi::String>().Utf8Value(), lw + ".targets"));
  }

  const Napi::Object optimizer = objectField(options, "optimizer", where);
  const std::string ow = "options.optimizer";
  result.optimizer.beta1 = static_cast<float>(numberField(optimizer, "beta1", ow));
  result.optimizer.beta2 = static_cast<float>(numberField(optimizer, "beta2", ow));
  result.optimizer.eps = static_cast<float>(numberField(optimizer, "eps", ow));
  result.optimizer.weightDecay = static_cast<float>(numberField(optimizer, "weightDecay", ow));
  result.optimizer.clipNorm = static_cast<float>(numberField(optimizer, "clipNorm", ow));
  return result;
}

Row rowValue(const Napi::Value& value, const std::string& where, bool needTargets) {
  if (!value.IsObject()) throw Error(where + " must be an object with tokens, targets and seqStarts");
  const Napi::Object object = value.As<Napi::Object>();
  Row row;
  row.tokens = int32Field(object, "tokens", where);
  if (needTargets) row.targets = int32Field(object, "targets", where);
  row.seqStarts = int32Field(object, "seqStarts", where);
  return row;
}

std::vector<Row> rowsValue(const Napi::Value& value) {
  const Napi::Array array = arrayValue(value, "rows");
  std::vector<Row> rows;
  rows.reserve(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) rows.push_back(rowValue(array.Get(i), "rows[" + std::to_string(i) + "]", true));
  return rows;
}

std::vector<NamedTensorData> namedTensorsValue(const Napi::Value& value, const std::string& where) {
  const Napi::Array array = arrayValue(value, where);
  std::vector<NamedTensorData> tensors;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const std::string tw = where + "[" + std::to_string(i) + "]";
    const Napi::Value entryValue = array.Get(i);
    if (!entryValue.IsObject()) throw Error(tw + " must be an object {name, shape, data}");
    const Napi::Object entry = entryValue.As<Napi::Object>();
    NamedTensorData tensor;
    tensor.name = stringField(entry, "name", tw);
    const Napi::Array shape = arrayValue(field(entry, "shape", tw), tw + ".shape");
    for (uint32_t d = 0; d < shape.Length(); ++d) {
      const Napi::Value dim = shape.Get(d);
      if (!dim.IsNumber()) throw Error(tw + ".shape must hold numbers");
      tensor.shape.push_back(static_cast<int64_t>(dim.As<Napi::Number>().DoubleValue()));
    }
    const auto data = typedArray<Napi::Float32Array>(field(entry, "data", tw), napi_float32_array, "a Float32Array",
                                                     tw + ".data");
    tensor.data.assign(data.Data(), data.Data() + data.ElementLength());
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

Napi::Array namedTensorsToJs(Napi::Env env, const std::vector<NamedTensorData>& tensors) {
  Napi::Array array = Napi::Array::New(env, tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensorData& tensor = tensors[i];
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("name", tensor.name);
    Napi::Array shape = Napi::Array::New(env, tensor.shape.size());
    for (size_t d = 0; d < tensor.shape.size(); ++d) shape.Set(static_cast<uint32_t>(d), static_cast<double>(tensor.shape[d]));
    entry.Set("shape", shape);
    Napi::Float32Array data = Napi::Float32Array::New(env, tensor.data.size());
    std::copy(tensor.data.begin(), tensor.data.end(), data.Data());
    entry.Set("data", data);
    array.Set(static_cast<uint32_t>(i), entry);
  }
  return array;
}

constexpr const char* kDisposedMessage = "engine was disposed; create a new one with Engine.load";

Failure disposed() { return {kDisposedMessage, errorCode(ErrorKind::BadInput)}; }

// The optional trailing call id of a long call (undefined: the call can be stopped by abort() only).
double callIdArgument(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return -1;
  if (!info[index].IsNumber()) throw Error("the call id must be a number");
  return info[index].As<Napi::Number>().DoubleValue();
}

// ---- the wrapper class ----

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function DefineClass(Napi::Env env) {
    return Napi::ObjectWrap<EngineWrap>::DefineClass(
        env, "NativeEngine",
        {InstanceMethod<&EngineWrap::Step>("step"), InstanceMethod<&EngineWrap::Evaluate>("evaluate"),
         InstanceMethod<&EngineWrap::Logits>("logits"), InstanceMethod<&EngineWrap::Gradients>("gradients"),
         InstanceMethod<&EngineWrap::GetLora>("getLora"), InstanceMethod<&EngineWrap::SetLora>("setLora"),
         InstanceMethod<&EngineWrap::GetOptimizerState>("getOptimizerState"),
         InstanceMethod<&EngineWrap::SetOptimizerState>("setOptimizerState"),
         InstanceMethod<&EngineWrap::MemoryPlan>("memoryPlan"), InstanceMethod<&EngineWrap::Abort>("abort"),
         InstanceMethod<&EngineWrap::Dispose>("dispose")});
  }

  // Constructed only by Engine.create, with the loaded engine in an External.
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "NativeEngine cannot be constructed directly; use Engine.create(options)");
    }
    auto* loaded = info[0].As<Napi::External<std::shared_ptr<Engine>>>().Data();
    engine_ = std::move(*loaded);
  }

  // The calls in flight and their abort flags (JS thread only).
  void callStarted(double callId, std::shared_ptr<AbortFlag> flag) { pending_.push_back({callId, std::move(flag)}); }
  void callSettled(const AbortFlag* flag) {
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->flag.get() == flag) {
        pending_.erase(it);
        return;
      }
    }
  }
  std::shared_ptr<Engine> engine() const { return engine_; }

 private:
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Evaluate(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  Napi::Value Gradients(const Napi::CallbackInfo& info);
  Napi::Value GetLora(const Napi::CallbackInfo& info);
  Napi::Value SetLora(const Napi::CallbackInfo& info);
  Napi::Value GetOptimizerState(const Napi::CallbackInfo& info);
  Napi::Value SetOptimizerState(const Napi::CallbackInfo& info);

  Napi::Value MemoryPlan(const Napi::CallbackInfo& info) {
    if (!engine_) throw jsError(info.Env(), disposed());
    Napi::Object plan = Napi::Object::New(info.Env());
    for (const auto& [name, bytes] : engine_->memoryPlan()) plan.Set(name, bytes);
    return plan;
  }

  // abort(callId) stops that call; abort() every call in flight.
  Napi::Value Abort(const Napi::CallbackInfo& info) {
    const bool all = info.Length() == 0 || info[0].IsUndefined();
    const double callId = !all && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    for (const PendingCall& call : pending_)
      if (all || call.callId == callId) call.flag->store(true);
    return info.Env().Undefined();
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    for (const PendingCall& call : pending_) call.flag->store(true);  // running calls stop and release their share
    engine_.reset();
    return info.Env().Undefined();
  }

  struct PendingCall {
    double callId;
    std::shared_ptr<AbortFlag> flag;
  };
  std::shared_ptr<Engine> engine_;
  std::vector<PendingCall> pending_;
};

// One engine call: runs `run` off the JS thread, settles the promise with `result`.
class EngineCallWorker : public Napi::AsyncWorker {
 public:
  EngineCallWorker(Napi::Env env, const char* name, EngineWrap* owner, double callId)
      : Napi::AsyncWorker(env, name), name_(name), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner),
        engine_(owner->engine()), abort_(std::make_shared<AbortFlag>(false)) {
    owner_->Ref();
    owner_->callStarted(callId, abort_);
  }
  ~EngineCallWorker() override = default;

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  virtual void run(Engine& engine, const AbortFlag& abort) = 0;
  virtual Napi::Value result(Napi::Env env) = 0;

  void Execute() override {
    try {
      run(*engine_, *abort_);
    } catch (const std::exception& e) {
      failure_ = failureOf(e, name_);
      SetError(failure_.message);
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    settle();
    deferred_.Resolve(result(Env()));
  }
  void OnError(const Napi::Error&) override {
    Napi::HandleScope scope(Env());
    settle();
    deferred_.Reject(jsError(Env(), failure_).Value());
  }

 private:
  void settle() {
    owner_->callSettled(abort_.get());
    owner_->Unref();
  }
  const char* name_;
  Napi::Promise::Deferred deferred_;
  EngineWrap* owner_;
  std::shared_ptr<Engine> engine_;  // keeps the engine alive through a dispose() mid-call
  std::shared_ptr<AbortFlag> abort_;
  Failure failure_;
};

class StepWorker : public EngineCallWorker {
 public:
  StepWorker(Napi::Env env, EngineWrap* owner, double callId, std::vector<Row> rows, float lr)
      : EngineCallWorker(env, "thinktune.step", owner, callId), rows_(std::move(rows)), lr_(lr) {}

 protected:
  void run(Engine& engine, const AbortFlag& abort) override { result_ = engine.step(rows_, lr_, &abort); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object object = Napi::Object::New(env);
    object.Set("lossSum", result_.lossSum);
    object.Set("tokens", static_cast<double>(result_.tokens));
    object.Set("gradNorm", result_.gradNorm);
    return object;
  }

 private:
  std::vector<Row> rows_;
  float lr_;
  StepResult result_;
};

class EvaluateWorker : public EngineCallWorker {
 public:
  EvaluateWorker(Napi::Env env, EngineWrap* owner, double callId, std::vector<Row> rows)
      : EngineCallWorker(env, "thinktune.evaluate", owner, callId), rows_(std::move(rows)) {}

 protected:
  void run(Engine& engine, const AbortFlag& abort) override { result_ = engine.evaluate(rows_, &abort); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object object = Napi::Object::New(env);
    object.Set("lossSum", result_.lossSum);
    object.Set("tokens", static_cast<double>(result_.tokens));
    return object;
  }

 private:
  std::vector<Row> rows_;
  LossResult result_;
};

class GradientsWorker : public EngineCallWorker {
 public:
  GradientsWorker(Napi::Env env, EngineWrap* owner, double callId, std::vector<Row> rows)
      : EngineCallWorker(env, "thinktune.gradients", owner, callId), rows_(std::move(rows)) {}

 protected:
  void run(Engine& engine, const AbortFlag& abort) override { result_ = engine.gradients(rows_, tensors_, &abort); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object object = Napi::Object::New(env);
    object.Set("lossSum", result_.lossSum);
    object.Set("tokens", static_cast<double>(result_.tokens));
    object.Set("tensors", namedTensorsToJs(env, tensors_));
    return object;
  }

 private:
  std::vector<Row> rows_;
  LossResult result_;
  std::vector<NamedTensorData> tensors_;
};

class LogitsWorker : public EngineCallWorker {
 public:
  LogitsWorker(Napi::Env env, EngineWrap* owner, double callId, Row row)
      : EngineCallWorker(env, "thinktune.logits", owner, callId), row_(std::move(row)) {}

 protected:
  void run(Engine& engine, const AbortFlag& abort) override { logits_ = engine.logits(row_, &abort); }
  Napi::Value result(Napi::Env env) override {
    Napi::Float32Array array = Napi::Float32Array::New(env, logits_.size());
    std::copy(logits_.begin(), logits_.end(), array.Data());
    return array;
  }

 private:
  Row row_;
  std::vector<float> logits_;
};

// getLora / getOptimizerState: the tensors are copied (from the device, for CUDA) off the JS thread.
class GetLoraWorker : public EngineCallWorker {
 public:
  GetLoraWorker(Napi::Env env, EngineWrap* owner) : EngineCallWorker(env, "thinktune.getLora", owner, -1) {}

 protected:
  void run(Engine& engine, const AbortFlag&) override { tensors_ = engine.getLora(); }
  Napi::Value result(Napi::Env env) override { return namedTensorsToJs(env, tensors_); }

 private:
  std::vector<NamedTensorData> tensors_;
};

class SetLoraWorker : public EngineCallWorker {
 public:
  SetLoraWorker(Napi::Env env, EngineWrap* owner, std::vector<NamedTensorData> tensors)
      : EngineCallWorker(env, "thinktune.setLora", owner, -1), tensors_(std::move(tensors)) {}

 protected:
  void run(Engine& engine, const AbortFlag&) override { engine.setLora(tensors_); }
  Napi::Value result(Napi::Env env) override { return env.Undefined(); }

 private:
  std::vector<NamedTensorData> tensors_;
};

class GetOptimizerStateWorker : public EngineCallWorker {
 public:
  GetOptimizerStateWorker(Napi::Env env, EngineWrap* owner)
      : EngineCallWorker(env, "thinktune.getOptimizerState", owner, -1) {}

 protected:
  void run(Engine& engine, const AbortFlag&) override { state_ = engine.getOptimizerState(); }
  Napi::Value result(Napi::Env env) override {
    Napi::Object state = Napi::Object::New(env);
    state.Set("step", static_cast<double>(state_.first));
    state.Set("tensors", namedTensorsToJs(env, state_.second));
    return state;
  }

 private:
  std::pair<int64_t, std::vector<NamedTensorData>> state_;
};

class SetOptimizerStateWorker : public EngineCallWorker {
 public:
  SetOptimizerStateWorker(Napi::Env env, EngineWrap* owner, int64_t step, std::vector<NamedTensorData> tensors)
      : EngineCallWorker(env, "thinktune.setOptimizerState", owner, -1), step_(step), tensors_(std::move(tensors)) {}

 protected:
  void run(Engine& engine, const AbortFlag&) override { engine.setOptimizerState(step_, tensors_); }
  Napi::Value result(Napi::Env env) override { return env.Undefined(); }

 private:
  int64_t step_;
  std::vector<NamedTensorData> tensors_;
};

// Reads the call's arguments on the JS thread and queues its worker; any failure (a disposed engine,
// a malformed argument) becomes the rejected promise.
template <typename Worker, typename Arguments>
Napi::Value queue(const Napi::CallbackInfo& info, const std::shared_ptr<Engine>& engine, const char* during,
                  Arguments&& arguments) {
  if (!engine) return rejected(info.Env(), disposed());
  try {
    Worker* worker = arguments();
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  } catch (const std::exception& e) {
    return rejected(info.Env(), failureOf(e, during));
  }
}

Napi::Value EngineWrap::Step(const Napi::CallbackInfo& info) {
  return queue<StepWorker>(info, engine_, "step", [&] {
    std::vector<Row> rows = rowsValue(info[0]);
    if (!info[1].IsNumber()) throw Error("step(rows, lr): lr must be a number");
    const float lr = info[1].As<Napi::Number>().FloatValue();
    return new StepWorker(info.Env(), this, callIdArgument(info, 2), std::move(rows), lr);
  });
}

Napi::Value EngineWrap::Evaluate(const Napi::CallbackInfo& info) {
  return queue<EvaluateWorker>(info, engine_, "evaluate", [&] {
    return new EvaluateWorker(info.Env(), this, callIdArgument(info, 1), rowsValue(info[0]));
  });
}

Napi::Value EngineWrap::Gradients(const Napi::CallbackInfo& info) {
  return queue<GradientsWorker>(info, engine_, "gradients", [&] {
    return new GradientsWorker(info.Env(), this, callIdArgument(info, 1), rowsValue(info[0]));
  });
}

Napi::Value EngineWrap::Logits(const Napi::CallbackInfo& info) {
  return queue<LogitsWorker>(info, engine_, "logits", [&] {
    return new LogitsWorker(info.Env(), this, callIdArgument(info, 1), rowValue(info[0], "row", false));
  });
}

Napi::Value EngineWrap::GetLora(const Napi::CallbackInfo& info) {
  return queue<GetLoraWorker>(info, engine_, "getLora", [&] { return new GetLoraWorker(info.Env(), this); });
}

Napi::Value EngineWrap::SetLora(const Napi::CallbackInfo& info) {
  return queue<SetLoraWorker>(info, engine_, "setLora", [&] {
    return new SetLoraWorker(info.Env(), this, namedTensorsValue(info[0], "setLora(tensors)"));
  });
}

Napi::Value EngineWrap::GetOptimizerState(const Napi::CallbackInfo& info) {
  return queue<GetOptimizerStateWorker>(info, engine_, "getOptimizerState",
                                        [&] { return new GetOptimizerStateWorker(info.Env(), this); });
}

Napi::Value EngineWrap::SetOptimizerState(const Napi::CallbackInfo& info) {
  return queue<SetOptimizerStateWorker>(info, engine_, "setOptimizerState", [&] {
    if (!info[0].IsObject()) throw Error("setOptimizerState(state): state must be an object {step, tensors}");
    const Napi::Object state = info[0].As<Napi::Object>();
    const int64_t step = integerField(state, "step", "state");
    return new SetOptimizerStateWorker(info.Env(), this, step,
                                       namedTensorsValue(field(state, "tensors", "state"), "state.tensors"));
  });
}

// Loads the model off the JS thread; resolves with a new NativeEngine object.
class CreateWorker : public Napi::AsyncWorker {
 public:
  CreateWorker(Napi::Env env, EngineOptions options, Napi::FunctionReference* constructor)
      : Napi::AsyncWorker(env, "thinktune.Engine.create"), deferred_(Napi::Promise::Deferred::New(env)),
        options_(std::move(options)), constructor_(constructor) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      engine_ = std::make_shared<Engine>(std::move(options_));
    } catch (const std::exception& e) {
      failure_ = failureOf(e, "Engine.create");
      SetError(failure_.message);
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    auto external = Napi::External<std::shared_ptr<Engine>>::New(Env(), &engine_);
    deferred_.Resolve(constructor_->New({external}));
  }
  void OnError(const Napi::Error&) override {
    Napi::HandleScope scope(Env());
    deferred_.Reject(jsError(Env(), failure_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Failure failure_;
  EngineOptions options_;
  Napi::FunctionReference* constructor_;
  std::shared_ptr<Engine> engine_;
};

Napi::Value CreateEngine(const Napi::CallbackInfo& info) {
  auto* constructor = static_cast<Napi::FunctionReference*>(info.Data());
  try {
    if (!info[0].IsObject()) throw Error("Engine.create(options): options must be an object");
    auto* worker = new CreateWorker(info.Env(), engineOptions(info[0].As<Napi::Object>()), constructor);
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  } catch (const std::exception& e) {
    return rejected(info.Env(), failureOf(e, "Engine.create"));
  }
}

void initEngine(Napi::Env env, Napi::Object exports) {
  auto* constructor = new Napi::FunctionReference(Napi::Persistent(EngineWrap::DefineClass(env)));
  env.AddCleanupHook([constructor]() { delete constructor; });
  Napi::Object engine = Napi::Object::New(env);
  engine.Set("create", Napi::Function::New(env, CreateEngine, "create", constructor));
  exports.Set("Engine", engine);
}

}  // namespace

}  // namespace thinktune::addon

THINKTUNE_ADDON_MODULE(engine, thinktune::addon::initEngine);
