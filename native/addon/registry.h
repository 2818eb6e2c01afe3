// Each Node-API wrapper file registers its exports here with THINKTUNE_ADDON_MODULE, so adding a
// wrapper never means editing the module's init function.
#pragma once
#include <napi.h>

namespace thinktune::addon {

using ModuleInit = void (*)(Napi::Env env, Napi::Object exports);

struct ModuleRegistration {
  ModuleRegistration(const char* name, ModuleInit init);
};

void initRegisteredModules(Napi::Env env, Napi::Object exports);

}  // namespace thinktune::addon

#define THINKTUNE_ADDON_MODULE(name, init) \
  static ::thinktune::addon::ModuleRegistration thinktuneAddonModule_##name(#name, init)
