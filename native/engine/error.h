// The engine reports every failure by throwing thinktune::Error; the addon turns it into a
// rejected Promise. Nothing in native code exits, aborts or prints.
#pragma once
#include <stdexcept>
#include <string>

namespace thinktune {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown when an abort was requested (checked between layers).
struct AbortedError : Error {
  AbortedError() : Error("aborted") {}
};

}  // namespace thinktune
