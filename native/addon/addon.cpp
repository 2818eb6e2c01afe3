// The module's entry point: version and backends, then every registered wrapper.
#include <string>
#include <utility>
#include <vector>

#include "addon/registry.h"
#include "engine/backend.h"

namespace thinktune::addon {

namespace {
std::vector<std::pair<const char*, ModuleInit>>& registrations() {
  static std::vector<std::pair<const char*, ModuleInit>> list;
  return list;
}
}  // namespace

ModuleRegistration::ModuleRegistration(const char* name, ModuleInit init) {
  registrations().emplace_back(name, init);
}

void initRegisteredModules(Napi::Env env, Napi::Object exports) {
  for (auto& [name, init] : registrations()) init(env, exports);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::String::New(env, "0.1.0"));
  Napi::Array backends = Napi::Array::New(env);
  backends.Set(uint32_t(0), Napi::String::New(env, "cpu"));
  if (cudaBackendBuilt()) backends.Set(uint32_t(1), Napi::String::New(env, "cuda"));
  exports.Set("backends", backends);
  exports.Set("cudaArchitectures", Napi::String::New(env, cudaArchitectures()));
  initRegisteredModules(env, exports);
  return exports;
}

}  // namespace thinktune::addon

static Napi::Object InitThinktune(Napi::Env env, Napi::Object exports) {
  return thinktune::addon::Init(env, exports);
}

NODE_API_MODULE(thinktune, InitThinktune)
