#include "engine/cuda_model.cuh"

#include <string>

#include "common/error.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace thinktune {

using namespace cuda;

DeviceModel::DeviceModel(const Model& model, BufferLayout& weights) : model_(model) {
  const ModelConfig& c = model.config();
  const int64_t C = c.nEmbd, L = c.nLayer;
  layers_.assign(static_cast<size_t>(L), DeviceLayer{});
  auto addMatrix = [&](DeviceMatrix& matrix, const MappedTensor* host) {
    matrix.host = host;
    weights.add(matrix.data, static_cast<int64_t>(host->nBytes));
    matrices_.push_back(&matrix);
  };
  addMatrix(tokenEmbedding_, &model.tokenEmbedding());
  separateOutput_ = &model.output() != &model.tokenEmbedding();
  if (separateOutput_) addMatrix(output_, &model.output());
  else output_.host = &model.output();
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& w = model.layer(l);
    DeviceLayer& layer = layers_[static_cast<size_t>(l)];
    weights.add(layer.attnNorm, C);
    weights.add(layer.ffnNorm, C);
    for (int p = 0; p < kProjectionCount; ++p) {
      if (w.bias[p]) weights.add(layer.bias[p], w.matrix[p]->nRows);
      addMatrix(layer.matrix[p], w.matrix[p]);
    }
  }
  weights.add(outputNorm_, C);
}

void DeviceModel::assigned() {
  if (!separateOutput_) output_.data = tokenEmbedding_.data;
}

void DeviceModel::upload(unsigned long long* badRow, cudaStream_t stream) {
  const ModelConfig& c = model_.config();
  const int64_t C = c.nEmbd;
  auto copy = [&](void* dst, const void* src, size_t bytes) {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync (to the GPU)");
  };
  for (DeviceMatrix* matrix : matrices_) copy(matrix->data, matrix->host->data, matrix->host->nBytes);
  for (int64_t l = 0; l < c.nLayer; ++l) {
    const LayerWeights& w = model_.layer(l);
    DeviceLayer& layer = layers_[static_cast<size_t>(l)];
    copy(layer.attnNorm, w.attnNorm, sizeof(float) * C);
    copy(layer.ffnNorm, w.ffnNorm, sizeof(float) * C);
    for (int p = 0; p < kProjectionCount; ++p)
      if (w.bias[p]) copy(layer.bias[p], w.bias[p], sizeof(float) * w.matrix[p]->nRows);
  }
  copy(outputNorm_, model_.outputNorm(), sizeof(float) * C);

  // then every matrix checked for NaN / infinity once
  check(cudaMemsetAsync(badRow, 0xFF, sizeof(unsigned long long) * matrices_.size(), stream), "cudaMemsetAsync");
  for (size_t i = 0; i < matrices_.size(); ++i) {
    const MappedTensor& host = *matrices_[i]->host;
    find_nonfinite_row(badRow + i, matrices_[i]->data, static_cast<uint32_t>(host.type),
                       static_cast<int64_t>(host.rowBytes), host.rowLength, host.nRows, stream);
  }
  std::vector<unsigned long long> firstBad(matrices_.size());
  check(cudaMemcpyAsync(firstBad.data(), badRow, sizeof(unsigned long long) * matrices_.size(),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (from the GPU)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (size_t i = 0; i < matrices_.size(); ++i) {
    if (firstBad[i] != ~0ull) {
      throw Error("tensor " + matrices_[i]->host->name + " holds a NaN or infinite value in row " +
                  std::to_string(firstBad[i]) + "; the model file is damaged: re-download or re-convert it");
    }
  }
}

}  // namespace thinktune
