#include "engine/cuda_dispatch.h"

#include "engine/cuda_engine.h"
#include "engine/error.h"

namespace thinktune {

#ifndef THINKTUNE_HAVE_CUDA
// The CPU-only build: no CudaEngine to link, one clear answer for device "cuda".
struct CudaEngine::State {};
CudaEngine::~CudaEngine() = default;
int cudaDeviceCount() { return 0; }
#endif

DeviceEngine::DeviceEngine(EngineOptions options) {
  if (options.device == "cpu") {
    cpu_ = std::make_unique<Engine>(std::move(options));
  } else if (options.device == "cuda") {
#ifdef THINKTUNE_HAVE_CUDA
    cuda_ = std::make_unique<CudaEngine>(std::move(options));
#else
    throw Error(
        "options.device \"cuda\" is not available in the CPU engine, and this build of thinktune has no CUDA engine "
        "(reinstall with a CUDA toolkit and cuBLAS present; THINKTUNE_CUDA=on npm install says what is missing); use "
        "device \"cpu\"");
#endif
  } else {
    throw Error("options.device must be \"cpu\" or \"cuda\", got \"" + options.device + "\"");
  }
}

DeviceEngine::~DeviceEngine() = default;

// Every call goes to whichever engine exists.
#ifdef THINKTUNE_HAVE_CUDA
#define THINKTUNE_DISPATCH(call) return cuda_ ? cuda_->call : cpu_->call
#else
#define THINKTUNE_DISPATCH(call) return cpu_->call
#endif

StepResult DeviceEngine::step(const std::vector<Row>& rows, float lr) { THINKTUNE_DISPATCH(step(rows, lr)); }
LossResult DeviceEngine::evaluate(const std::vector<Row>& rows) { THINKTUNE_DISPATCH(evaluate(rows)); }
std::vector<float> DeviceEngine::logits(const Row& row) { THINKTUNE_DISPATCH(logits(row)); }
LossResult DeviceEngine::gradients(const std::vector<Row>& rows, std::vector<NamedTensorData>& tensors) {
  THINKTUNE_DISPATCH(gradients(rows, tensors));
}
std::vector<NamedTensorData> DeviceEngine::getLora() { THINKTUNE_DISPATCH(getLora()); }
void DeviceEngine::setLora(const std::vector<NamedTensorData>& tensors) { THINKTUNE_DISPATCH(setLora(tensors)); }
std::pair<int64_t, std::vector<NamedTensorData>> DeviceEngine::getOptimizerState() {
  THINKTUNE_DISPATCH(getOptimizerState());
}
void DeviceEngine::setOptimizerState(int64_t step, const std::vector<NamedTensorData>& tensors) {
  THINKTUNE_DISPATCH(setOptimizerState(step, tensors));
}
std::vector<std::pair<std::string, double>> DeviceEngine::memoryPlan() const { THINKTUNE_DISPATCH(memoryPlan()); }
void DeviceEngine::requestAbort() { THINKTUNE_DISPATCH(requestAbort()); }
void DeviceEngine::clearAbort() { THINKTUNE_DISPATCH(clearAbort()); }

#undef THINKTUNE_DISPATCH

}  // namespace thinktune
