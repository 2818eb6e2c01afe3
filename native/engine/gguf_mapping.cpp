#include "engine/gguf_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace thinktune {

namespace {

constexpr size_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr const char* kCorruptAdvice = "the file is truncated or corrupt; re-download or re-export it";

std::string dimsText(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// Checks one table entry against a file of `fileSize` bytes; returns it with sizes filled in (data
// still null).
MappedTensor checkEntry(const TensorEntry& entry, const std::string& path, size_t fileSize, size_t alignment) {
  const std::string where = "tensor " + entry.name + " in " + path;
  const quant::TypeInfo& type = quant::typeInfo(entry.type, entry.name + " in " + path);
  if (entry.dims.empty() || entry.dims.size() > kMaxDims) {
    throw Error(where + " has " + std::to_string(entry.dims.size()) + " dimensions (expected 1 to " +
                std::to_string(kMaxDims) + "): " + kCorruptAdvice);
  }
  int64_t nElements = 1;
  for (size_t i = 0; i < entry.dims.size(); ++i) {
    if (entry.dims[i] <= 0) {
      throw Error(where + " has dimension " + std::to_string(i) + " = " + std::to_string(entry.dims[i]) + " in " +
                  dimsText(entry.dims) + "; every dimension must be positive: " + kCorruptAdvice);
    }
    if (__builtin_mul_overflow(nElements, entry.dims[i], &nElements)) {
      throw Error(where + " has dimensions " + dimsText(entry.dims) +
                  " whose product overflows a 64-bit element count: " + kCorruptAdvice);
    }
  }
  const int64_t rowLength = entry.dims[0];
  if (rowLength % type.blockSize != 0) {
    throw Error(where + " has rows of " + std::to_string(rowLength) + " values, not a multiple of the " + type.name +
                " block size " + std::to_string(type.blockSize) + ": " + kCorruptAdvice);
  }
  const size_t rowBytes = static_cast<size_t>(rowLength / type.blockSize) * static_cast<size_t>(type.typeSize);
  const int64_t nRows = nElements / rowLength;
  size_t nBytes = 0;
  if (__builtin_mul_overflow(rowBytes, static_cast<size_t>(nRows), &nBytes)) {
    throw Error(where + " (" + type.name + ", dims " + dimsText(entry.dims) + ") needs more bytes than fit in 64 bits: " +
                kCorruptAdvice);
  }
  if (entry.offset % alignment != 0) {
    throw Error(where + " starts at byte " + std::to_string(entry.offset) + ", not a multiple of the file's alignment " +
                std::to_string(alignment) + ": " + kCorruptAdvice);
  }
  if (entry.offset > fileSize || nBytes > fileSize - entry.offset) {
    throw Error(where + " (" + type.name + ", dims " + dimsText(entry.dims) + ", " + std::to_string(nBytes) +
                " bytes at offset " + std::to_string(entry.offset) + ") ends at byte " +
                std::to_string(static_cast<unsigned long long>(entry.offset) + nBytes) + " but the file has " +
                std::to_string(fileSize) + " bytes: " + kCorruptAdvice);
  }
  MappedTensor tensor;
  tensor.name = entry.name;
  tensor.type = type.type;
  tensor.dims = entry.dims;
  tensor.nElements = nElements;
  tensor.rowLength = rowLength;
  tensor.nRows = nRows;
  tensor.nBytes = nBytes;
  tensor.rowBytes = rowBytes;
  return tensor;
}

// Closes the descriptor on every path out of open().
struct FileDescriptor {
  int fd = -1;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::unique_ptr<MappedGguf> MappedGguf::open(const std::string& path, std::vector<TensorEntry> entries,
                                             size_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    throw Error(path + " declares alignment " + std::to_string(alignment) +
                ", which is not a power of two: " + kCorruptAdvice);
  }
  FileDescriptor file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd < 0) throw Error("cannot open " + path + ": " + std::strerror(errno));
  struct stat info {};
  if (::fstat(file.fd, &info) != 0) throw Error("cannot stat " + path + ": " + std::strerror(errno));
  if (S_ISDIR(info.st_mode)) throw Error(path + " is a directory, not a GGUF file");
  if (!S_ISREG(info.st_mode)) throw Error(path + " is not a regular file");
  const size_t fileSize = static_cast<size_t>(info.st_size);
  if (fileSize == 0) throw Error(path + " is empty: " + kCorruptAdvice);

  std::unique_ptr<MappedGguf> mapped(new MappedGguf());
  mapped->path_ = path;
  mapped->size_ = fileSize;
  mapped->tensors_.reserve(entries.size());
  for (const TensorEntry& entry : entries) {
    if (!mapped->index_.emplace(entry.name, mapped->tensors_.size()).second) {
      throw Error(path + " lists tensor " + entry.name + " twice: " + kCorruptAdvice);
    }
    mapped->tensors_.push_back(checkEntry(entry, path, fileSize, alignment));
  }

  void* base = ::mmap(nullptr, fileSize, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (base == MAP_FAILED) {
    throw Error("cannot memory-map " + path + " (" + std::to_string(fileSize) + " bytes): " + std::strerror(errno));
  }
  mapped->base_ = static_cast<const uint8_t*>(base);
  for (size_t i = 0; i < entries.size(); ++i) mapped->tensors_[i].data = mapped->base_ + entries[i].offset;
  return mapped;
}

MappedGguf::~MappedGguf() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

const MappedTensor* MappedGguf::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const MappedTensor& MappedGguf::get(const std::string& name) const {
  if (const MappedTensor* tensor = find(name)) return *tensor;
  throw Error(path_ + " has no tensor " + name +
              "; the file does not hold the tensors its architecture needs: re-export it from the original model");
}

}  // namespace thinktune
