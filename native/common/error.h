// Native code reports every failure by throwing thinktune::Error; the addon turns it into a
// rejected Promise whose error.code is the kind. Nothing in native code exits, aborts or prints.
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>

namespace thinktune {

// What kind of failure an Error is: callers branch on this, never on the message text.
enum class ErrorKind {
  BadInput,       // the input (options, batch, tensors, model file) is wrong; the message says where
  OutOfMemory,    // a host or device allocation failed
  DeviceFailure,  // a CUDA or cuBLAS call failed: the device may be unusable afterwards
  Diverged,       // training produced a NaN or infinite loss, gradient or update (nothing was applied)
  Aborted,        // the caller asked the call to stop
};

// "bad-input", "out-of-memory", "device-failure", "diverged", "aborted": error.code in TypeScript
const char* errorCode(ErrorKind kind);

struct Error : std::runtime_error {
  explicit Error(const std::string& message, ErrorKind kind = ErrorKind::BadInput)
      : std::runtime_error(message), kind(kind) {}
  ErrorKind kind;
};

// Thrown when an abort was requested (checked between layers).
struct AbortedError : Error {
  AbortedError() : Error("aborted", ErrorKind::Aborted) {}
};

// The out-of-memory Error for a failed allocation of `bytes` for `what`.
Error outOfMemory(size_t bytes, const std::string& what);

// Resizes `vector` to `count` elements, turning std::bad_alloc into outOfMemory(…, what).
template <class Vector>
void resizeOrThrow(Vector& vector, size_t count, const std::string& what) {
  try {
    vector.resize(count);
  } catch (const std::bad_alloc&) {
    throw outOfMemory(count * sizeof(typename Vector::value_type), what);
  }
}

}  // namespace thinktune
