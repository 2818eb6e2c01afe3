#include "addon/errors.h"

#include <new>

#include "common/error.h"

namespace thinktune::addon {

Failure failureOf(const std::exception& error, const char* during) {
  if (const auto* native = dynamic_cast<const Error*>(&error)) return {native->what(), errorCode(native->kind)};
  if (dynamic_cast<const std::bad_alloc*>(&error)) {
    return {std::string("out of memory during ") + during + " (a host allocation failed); lower maxTokens or the "
                "LoRA rank, or free memory",
            errorCode(ErrorKind::OutOfMemory)};
  }
  return {error.what(), errorCode(ErrorKind::BadInput)};
}

Napi::Error jsError(Napi::Env env, const Failure& failure) {
  Napi::Error error = Napi::Error::New(env, failure.message);
  error.Set("code", Napi::String::New(env, failure.code));
  return error;
}

Napi::Promise rejected(Napi::Env env, const Failure& failure) {
  auto deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(jsError(env, failure).Value());
  return deferred.Promise();
}

}  // namespace thinktune::addon
