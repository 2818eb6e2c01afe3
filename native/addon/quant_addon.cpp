// quantize(type, Float32Array) → Promise<Uint8Array> and dequantize(type, Uint8Array, count) →
// Promise<Float32Array>: block-format conversion off the JS thread. The input array stays referenced
// (so it is not collected) and the output buffer is allocated on the JS thread before the worker runs.
#include <cmath>
#include <string>

#include "addon/registry.h"
#include "common/error.h"
#include "quant/quant.h"

namespace thinktune::addon {

namespace {

using quant::GgmlType;

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

Napi::Promise rejected(Napi::Env env, const std::string& message) {
  auto deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(Napi::Error::New(env, message).Value());
  return deferred.Promise();
}

// The type argument as a supported ggml type; throws thinktune::Error naming what was passed.
GgmlType typeArgument(const Napi::Value& value, const char* function) {
  if (!value.IsNumber()) throw Error(std::string(function) + ": type must be a ggml type id (a number)");
  const double id = value.As<Napi::Number>().DoubleValue();
  if (!(id >= 0 && id <= 4294967295.0) || std::floor(id) != id) {
    throw Error(std::string(function) + ": type " + std::to_string(id) + " is not a ggml type id");
  }
  return quant::typeInfo(static_cast<uint32_t>(id)).type;
}

class ConvertWorker : public Napi::AsyncWorker {
 public:
  enum class Direction { Quantize, Dequantize };

  // `input` / `output` point at the elements of `inputArray` / `outputArray` (TypedArray::Data()).
  ConvertWorker(Napi::Env env, Direction direction, GgmlType type, int64_t count, Napi::TypedArray inputArray,
                const uint8_t* input, Napi::TypedArray outputArray, uint8_t* output)
      : Napi::AsyncWorker(env, direction == Direction::Quantize ? "thinktune.quantize" : "thinktune.dequantize"),
        deferred_(Napi::Promise::Deferred::New(env)),
        direction_(direction),
        type_(type),
        count_(count),
        input_(input),
        output_(output),
        inputRef_(Napi::Persistent(inputArray)),
        outputRef_(Napi::Persistent(outputArray)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      if (direction_ == Direction::Quantize) {
        quant::quantizeRows(type_, reinterpret_cast<const float*>(input_), output_, count_);
      } else {
        quant::dequantizeRows(type_, input_, reinterpret_cast<float*>(output_), count_);
      }
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override { deferred_.Resolve(outputRef_.Value()); }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Direction direction_;
  GgmlType type_;
  int64_t count_;
  const uint8_t* input_;
  uint8_t* output_;
  Napi::Reference<Napi::TypedArray> inputRef_;   // keeps the input alive while the worker reads it
  Napi::Reference<Napi::TypedArray> outputRef_;  // the result, filled by Execute
};

Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    const GgmlType type = typeArgument(info[0], "quantize");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throw Error("quantize: values must be a Float32Array");
    }
    auto values = info[1].As<Napi::Float32Array>();
    const int64_t count = static_cast<int64_t>(values.ElementLength());
    const size_t bytes = quant::byteSize(type, count, std::string("quantize to ") + quant::typeInfo(type).name);
    auto output = Napi::Uint8Array::New(env, bytes);
    auto* worker = new ConvertWorker(env, ConvertWorker::Direction::Quantize, type, count, values,
                                     reinterpret_cast<const uint8_t*>(values.Data()), output, output.Data());
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  } catch (const std::exception& e) {  // thinktune::Error and Napi::Error (allocation failures)
    return rejected(env, e.what());
  }
}

Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    const GgmlType type = typeArgument(info[0], "dequantize");
    const std::string typeName = quant::typeInfo(type).name;
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
      throw Error("dequantize: bytes must be a Uint8Array");
    }
    auto bytes = info[1].As<Napi::Uint8Array>();
    if (!info[2].IsNumber()) throw Error("dequantize: count must be a number of values");
    const double countValue = info[2].As<Napi::Number>().DoubleValue();
    if (!(countValue >= 0 && countValue <= kMaxSafeInteger) || std::floor(countValue) != countValue) {
      throw Error("dequantize: count " + std::to_string(countValue) + " is not a non-negative integer");
    }
    const int64_t count = static_cast<int64_t>(countValue);
    const size_t expected = quant::byteSize(type, count, "dequantize " + typeName);
    if (bytes.ByteLength() != expected) {
      throw Error("dequantize " + typeName + ": " + std::to_string(count) + " values take " + std::to_string(expected) +
                  " bytes, but " + std::to_string(bytes.ByteLength()) + " bytes were given");
    }
    auto output = Napi::Float32Array::New(env, static_cast<size_t>(count));
    auto* worker = new ConvertWorker(env, ConvertWorker::Direction::Dequantize, type, count, bytes, bytes.Data(),
                                     output, reinterpret_cast<uint8_t*>(output.Data()));
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
  } catch (const std::exception& e) {
    return rejected(env, e.what());
  }
}

void initQuant(Napi::Env env, Napi::Object exports) {
  exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize, "dequantize"));
}

}  // namespace

THINKTUNE_ADDON_MODULE(quant, initQuant);

}  // namespace thinktune::addon
