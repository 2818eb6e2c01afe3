// A GGUF file memory-mapped read-only, with every tensor checked against the file before anything
// touches its bytes. The tensor table comes from the TypeScript side (node-llama-cpp's reader); this
// class trusts none of it: each entry's type, dimensions, byte size, alignment and bounds are checked
// in open(), and a failure throws thinktune::Error naming the tensor, the numbers and what to do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "quant/quant.h"

namespace thinktune {

// One row of the tensor table as the GGUF header lists it.
struct TensorEntry {
  std::string name;
  uint32_t type = 0;          // ggml type id
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  uint64_t offset = 0;        // absolute byte offset in the file
};

// A checked tensor: its bytes lie inside the mapping, which lives as long as the MappedGguf.
struct MappedTensor {
  std::string name;
  quant::GgmlType type;
  std::vector<int64_t> dims;  // ggml order, every dim > 0
  int64_t nElements = 0;      // product of dims
  int64_t rowLength = 0;      // dims[0]; a multiple of the type's block size
  int64_t nRows = 0;          // nElements / rowLength
  size_t nBytes = 0;          // bytes of the whole tensor in its type
  size_t rowBytes = 0;        // bytes of one row in its type
  const uint8_t* data = nullptr;
};

class MappedGguf {
 public:
  // Maps `path` read-only and checks every entry (known type, dims > 0 without overflow, row length a
  // multiple of the block size, offset a multiple of `alignment`, offset + size within the file, no
  // duplicate names). Throws thinktune::Error on the first problem; nothing is mapped afterwards.
  static std::unique_ptr<MappedGguf> open(const std::string& path, std::vector<TensorEntry> entries,
                                          size_t alignment);
  ~MappedGguf();
  MappedGguf(const MappedGguf&) = delete;
  MappedGguf& operator=(const MappedGguf&) = delete;

  // nullptr when the file has no tensor of that name (optional tensors: biases, output, rope_freqs).
  const MappedTensor* find(const std::string& name) const;
  // Throws thinktune::Error naming the missing tensor and the file.
  const MappedTensor& get(const std::string& name) const;

  const std::vector<MappedTensor>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }
  size_t fileSize() const { return size_; }

 private:
  MappedGguf() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<MappedTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace thinktune
