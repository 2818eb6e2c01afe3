#include "common/parallel.h"

#include <omp.h>

#include <thread>

namespace thinktune {

namespace {
int defaultThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}
int configuredThreads = 0;
}  // namespace

int threadCount() { return configuredThreads > 0 ? configuredThreads : defaultThreads(); }

void setThreadCount(int threads) {
  configuredThreads = threads > 0 ? threads : 0;
  omp_set_num_threads(threadCount());
}

}  // namespace thinktune
