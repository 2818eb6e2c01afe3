// What a device does for the engine (engine.h): the passes over the layers, the optimizer's
// arithmetic and copies of the LoRA blocks. Everything else (validation, the busy guard, the row
// and layer loop, clipping, AdamW settings, state exchange, abort) is written once in engine.cpp.
// The CPU backend is cpu_backend.cpp, the CUDA backend cuda_backend.cu.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/adamw_step.h"
#include "engine/lora.h"
#include "engine/model.h"

namespace thinktune {

struct EngineOptions;
struct Row;

// The LoRA lifetime's blocks, each lora.parameterCount() floats laid out as Lora describes.
enum class LoraBlock { Params, Grads, M, V };

// What the passes of one call need to know.
struct Pass {
  bool training = false;      // LoRA dropout on
  uint64_t dropoutStep = 0;   // the optimizer step the dropout masks are drawn for
  bool backward = false;      // a backward pass follows the forward (what it reads must be saved)
};

class Backend {
 public:
  virtual ~Backend() = default;

  // On the calling (worker) thread, before anything else of a call: CPU thread count, CUDA device.
  virtual void beginCall() = 0;
  // The row's positions, sequence bounds and RoPE cache, and its token embeddings as layer 0's input.
  virtual void beginRow(const Row& row) = 0;
  // Layer `layer` of a row of T positions: its input (the saved checkpoint) to its output.
  virtual void layerForward(int64_t layer, int64_t T, const Pass& pass) = 0;
  // dL/d(layer output) in the backward buffer becomes dL/d(layer input) (only when inputGradient),
  // LoRA parameter gradients accumulate. recompute: the layer's activations must be rebuilt from its
  // saved input first (false only for the layer the forward pass ended with).
  virtual void layerBackward(int64_t layer, int64_t T, const Pass& pass, bool recompute, bool inputGradient) = 0;
  // Final norm, lm_head and cross-entropy over the row's target positions: adds their loss to the
  // running sum and, withGradient, leaves dL/d(final residual) for layerBackward. Returns the count.
  virtual int64_t lossHead(const Row& row, bool withGradient) = 0;
  // The running loss sum: reset before the rows, read after them.
  virtual void resetLoss() = 0;
  virtual double lossSum() = 0;
  // logits (T, nVocab) row-major of the row the forward pass ran, into host memory
  virtual void logitsHead(int64_t T, float* logits) = 0;

  virtual void zeroGradients() = 0;
  // Σ x² over a block in double precision: finite exactly when every element is
  virtual double sumSquares(LoraBlock block) = 0;
  virtual void adamwUpdate(const AdamWStep& hyper) = 0;
  // params, m and v to their saved copies (saveState) and back (restoreState)
  virtual void saveState() = 0;
  virtual void restoreState() = 0;
  // a whole block from / to host memory (lora.parameterCount() floats)
  virtual void readBlock(LoraBlock block, float* host) = 0;
  virtual void writeBlock(LoraBlock block, const float* host) = 0;

  // bytes per lifetime, as memoryPlan() reports them
  virtual std::vector<std::pair<std::string, double>> memoryPlan() const = 0;
};

std::unique_ptr<Backend> createCpuBackend(const EngineOptions& options, const Model& model, const Lora& lora);
// The CUDA backend (cuda_backend.cu), or, in a build without it (cuda_unavailable.cpp), an Error
// saying how to get one.
std::unique_ptr<Backend> createCudaBackend(const EngineOptions& options, const Model& model, const Lora& lora);
// Whether this build has the CUDA backend, and its usable devices (0 without one, a driver or a GPU;
// never throws).
bool cudaBackendBuilt();
int cudaDeviceCount();
// The GPU architectures the CUDA backend was compiled for, comma-separated as CMAKE_CUDA_ARCHITECTURES
// names them ("80,90a": 90a brings the Hopper attention kernels); "" without the backend.
const char* cudaArchitectures();

}  // namespace thinktune
