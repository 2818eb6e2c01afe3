// exports.cudaDeviceCount(): usable CUDA devices, 0 in the CPU-only build or without a GPU/driver.
#include "addon/registry.h"
#include "engine/backend.h"

namespace thinktune::addon {

namespace {

Napi::Value CudaDeviceCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), thinktune::cudaDeviceCount());
}

void initCuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCount, "cudaDeviceCount"));
}

}  // namespace

}  // namespace thinktune::addon

THINKTUNE_ADDON_MODULE(cuda, thinktune::addon::initCuda);
