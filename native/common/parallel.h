// Thread count for the CPU kernels (OpenMP). Defaults to every core the process may use.
#pragma once

namespace thinktune {

int threadCount();
void setThreadCount(int threads);  // threads <= 0 restores the default

}  // namespace thinktune
