// When a kernel goes multi-threaded. Opening an OpenMP team and its barriers costs microseconds,
// far more when the cores are shared with other processes, so loops over fewer element operations
// than this run on the calling thread (a tiny model would otherwise spend its time in barriers).
#pragma once
#include <cstdint>

namespace thinktune::kernels {

constexpr int64_t kParallelMinWork = int64_t{1} << 16;

}  // namespace thinktune::kernels
