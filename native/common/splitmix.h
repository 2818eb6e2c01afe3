// The counter-based hash behind LoRA's initialization and dropout masks, for host and device code
// alike (the CPU engine's Lora::keeps and the CUDA dropout kernels must draw the same masks).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define THINKTUNE_HOST_DEVICE __host__ __device__
#else
#define THINKTUNE_HOST_DEVICE
#endif

namespace thinktune {

THINKTUNE_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// uniform in [0, 1) from the top 24 bits
THINKTUNE_HOST_DEVICE inline float unitFloat(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

// The dropout key of one optimizer step (1 for the first update), from the LoRA seed.
THINKTUNE_HOST_DEVICE inline uint64_t dropoutStepKey(uint64_t seed, uint64_t step) {
  return splitmix64(splitmix64(seed ^ 0xD1B54A32D192ED03ull) ^ step);
}

// Whether element `index` of the LoRA input at `site` (layer · 7 + projection) survives dropout.
THINKTUNE_HOST_DEVICE inline bool dropoutKeeps(uint64_t stepKey, uint64_t site, uint64_t index, float dropout) {
  return unitFloat(splitmix64(stepKey ^ (site << 40) ^ index)) >= dropout;
}

}  // namespace thinktune
