// checkTensors(path, tensors, alignment) → Promise<void>: memory-maps a GGUF file and checks every
// tensor of the table against it (engine/gguf_mapping.h), off the JS thread.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "addon/registry.h"
#include "common/error.h"
#include "engine/gguf_mapping.h"

namespace thinktune::addon {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

// A JS number that must be a whole number in [min, 2^53); throws naming `what`.
int64_t integerField(const Napi::Value& value, const std::string& what, double min) {
  if (!value.IsNumber()) throw Error(what + " must be a number");
  const double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= min && number <= kMaxSafeInteger) || std::floor(number) != number) {
    throw Error(what + " is " + value.ToString().Utf8Value() + ", not an integer in [" +
                std::to_string(static_cast<int64_t>(min)) + ", 2^53)");
  }
  return static_cast<int64_t>(number);
}

// Copies the JS tensor table into plain structs on the JS thread; the worker never touches JS values.
std::vector<TensorEntry> tensorTable(const Napi::Value& value) {
  if (!value.IsArray()) throw Error("checkTensors: tensors must be an array of {name, type, dims, offset}");
  const auto array = value.As<Napi::Array>();
  std::vector<TensorEntry> entries(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const Napi::Value item = array.Get(i);
    const std::string where = "checkTensors: tensors[" + std::to_string(i) + "]";
    if (!item.IsObject()) throw Error(where + " must be an object {name, type, dims, offset}");
    const auto object = item.As<Napi::Object>();
    if (!object.Get("name").IsString()) throw Error(where + ".name must be a string");
    TensorEntry& entry = entries[i];
    entry.name = object.Get("name").As<Napi::String>().Utf8Value();
    const std::string named = "checkTensors: tensor " + entry.name;
    const int64_t typeId = integerField(object.Get("type"), named + " type", 0);
    if (typeId > 0xFFFFFFFF) throw Error(named + " type " + std::to_string(typeId) + " is not a ggml type id");
    entry.type = static_cast<uint32_t>(typeId);
    const Napi::Value dims = object.Get("dims");
    if (!dims.IsArray()) throw Error(named + " dims must be an array of numbers");
    const auto dimsArray = dims.As<Napi::Array>();
    for (uint32_t d = 0; d < dimsArray.Length(); ++d) {
      // Negative and zero pass through: the mapping reports them with the whole shape.
      entry.dims.push_back(integerField(dimsArray.Get(d), named + " dims[" + std::to_string(d) + "]", -kMaxSafeInteger));
    }
    entry.offset = static_cast<uint64_t>(integerField(object.Get("offset"), named + " offset", 0));
  }
  return entries;
}

class CheckTensorsWorker : public Napi::AsyncWorker {
 public:
  CheckTensorsWorker(Napi::Env env, std::string path, std::vector<TensorEntry> entries, size_t alignment)
      : Napi::AsyncWorker(env, "thinktune.checkTensors"),
        deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)),
        entries_(std::move(entries)),
        alignment_(alignment) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      MappedGguf::open(path_, std::move(entries_), alignment_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  std::vector<TensorEntry> entries_;
  size_t alignment_;
};

Napi::Value CheckTensors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    if (!info[0].IsString()) throw Error("checkTensors: path must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    std::vector<TensorEntry> entries = tensorTable(info[1]);
    const int64_t alignment = integerField(info[2], "checkTensors: alignment", 1);
    auto* worker = new CheckTensorsWorker(env, std::move(path), std::move(entries), static_cast<size_t>(alignment));
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  } catch (const std::exception& e) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Reject(Napi::Error::New(env, e.what()).Value());
    return deferred.Promise();
  }
}

void initGguf(Napi::Env env, Napi::Object exports) {
  exports.Set("checkTensors", Napi::Function::New(env, CheckTensors, "checkTensors"));
}

}  // namespace

THINKTUNE_ADDON_MODULE(gguf, initGguf);

}  // namespace thinktune::addon
