// The model on the GPU (the CUDA side's model.h): every base matrix in its GGUF type, the f32 norms
// and biases, laid out inside the plan's one allocation (cuda_plan.cuh), uploaded once and checked
// for NaN / infinity once.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "engine/memory_plan.h"
#include "engine/model.h"

namespace thinktune {

// A base matrix in GPU memory, still in its GGUF type.
struct DeviceMatrix {
  const MappedTensor* host = nullptr;
  uint8_t* data = nullptr;  // (nRows, rowBytes)
};

struct DeviceLayer {
  float* attnNorm = nullptr;  // (C)
  float* ffnNorm = nullptr;   // (C)
  float* bias[kProjectionCount] = {};
  DeviceMatrix matrix[kProjectionCount];
};

class DeviceModel {
 public:
  // Lays out the weights lifetime (every matrix, then the norms and biases) in `layout`.
  DeviceModel(const Model& model, BufferLayout& layout);
  DeviceModel(const DeviceModel&) = delete;
  DeviceModel& operator=(const DeviceModel&) = delete;

  // After the layout was assigned: the tied output shares the token embedding's bytes.
  void assigned();
  // Copies every weight to the GPU, then scans every matrix for a NaN or infinite value, throwing
  // Error naming the tensor and row. badRow: (matrixCount()) device scratch.
  void upload(unsigned long long* badRow, cudaStream_t stream);
  size_t matrixCount() const { return matrices_.size(); }

  const DeviceLayer& layer(int64_t index) const { return layers_[static_cast<size_t>(index)]; }
  const DeviceMatrix& tokenEmbedding() const { return tokenEmbedding_; }
  const DeviceMatrix& output() const { return output_; }
  const float* outputNorm() const { return outputNorm_; }  // (C)

 private:
  const Model& model_;
  std::vector<DeviceLayer> layers_;
  DeviceMatrix tokenEmbedding_, output_;
  float* outputNorm_ = nullptr;
  std::vector<DeviceMatrix*> matrices_;
  bool separateOutput_ = false;
};

}  // namespace thinktune
