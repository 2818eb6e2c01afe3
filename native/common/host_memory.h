// The host's physical memory: the budget the CPU engine's kept layers and the CUDA engine's pinned
// checkpoints are measured against.
#pragma once
#include <unistd.h>

#include <cstddef>

namespace thinktune {

inline size_t physicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), pageSize = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && pageSize > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(pageSize) : 0;
}

}  // namespace thinktune
