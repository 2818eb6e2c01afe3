// The CUDA backend's entry points in a build without it (THINKTUNE_CUDA=off, no toolkit, or the
// node-gyp fallback): one clear answer for device "cuda". cuda_backend.cu replaces this file.
#include "common/error.h"
#include "engine/backend.h"

namespace thinktune {

std::unique_ptr<Backend> createCudaBackend(const EngineOptions&, const Model&, const Lora&) {
  throw Error(
      "options.device \"cuda\" is not available in the CPU engine, and this build of thinktune has no CUDA engine "
      "(reinstall with a CUDA toolkit and cuBLAS present; THINKTUNE_CUDA=on npm install says what is missing); use "
      "device \"cpu\"");
}

bool cudaBackendBuilt() { return false; }
int cudaDeviceCount() { return 0; }
const char* cudaArchitectures() { return ""; }

}  // namespace thinktune
