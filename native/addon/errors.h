// Native failures as JS errors: the message, and error.code from thinktune::ErrorKind ("bad-input",
// "out-of-memory", "device-failure", "diverged", "aborted"). Workers capture a Failure in Execute
// (off the JS thread) and turn it into an Error in OnError.
#pragma once
#include <napi.h>

#include <exception>
#include <string>

namespace thinktune::addon {

struct Failure {
  std::string message;
  std::string code;
};

// What a caught exception says: thinktune::Error keeps its kind; a bare std::bad_alloc becomes an
// out-of-memory failure naming `during`; anything else is bad input.
Failure failureOf(const std::exception& error, const char* during);

Napi::Error jsError(Napi::Env env, const Failure& failure);
// A promise already rejected with `failure`.
Napi::Promise rejected(Napi::Env env, const Failure& failure);

}  // namespace thinktune::addon
