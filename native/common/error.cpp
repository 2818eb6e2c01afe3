#include "common/error.h"

namespace thinktune {

const char* errorCode(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::BadInput: return "bad-input";
    case ErrorKind::OutOfMemory: return "out-of-memory";
    case ErrorKind::DeviceFailure: return "device-failure";
    case ErrorKind::Diverged: return "diverged";
    case ErrorKind::Aborted: return "aborted";
  }
  return "bad-input";
}

Error outOfMemory(size_t bytes, const std::string& what) {
  const size_t mib = (bytes + (size_t{1} << 20) - 1) >> 20;
  return Error("out of memory allocating " + std::to_string(bytes) + " bytes (" + std::to_string(mib) + " MiB) for " +
                   what,
               ErrorKind::OutOfMemory);
}

}  // namespace thinktune
