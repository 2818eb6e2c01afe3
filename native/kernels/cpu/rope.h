// Rotary position embedding as ggml computes it (ggml_rope_ext without YaRN): pair i of a head
// rotates by pos·base^(-2i/d) (divided by freq_factors[i] when the model has rope_freqs.weight).
// NEOX ordering (qwen2) pairs element i with i + d/2; normal ordering (llama) pairs 2i with 2i+1.
#pragma once
#include <cstdint>

namespace thinktune::kernels {

// cache (T, D): per position, cos and sin of each of the D/2 pairs interleaved (ggml's layout).
// The angle is built by ggml's float recurrence theta *= base^(-2/D) so results match llama.cpp.
void rope_cache(float* cache, const int32_t* positions, int64_t T, int64_t D, float base,
                const float* freqFactors);

// x (T, nHeads, D) rotated in place
void rope_forward(float* x, const float* cache, int64_t T, int64_t nHeads, int64_t D, bool neox);

// dx (T, nHeads, D) in place: the rotation's transpose (rotation by −theta)
void rope_backward(float* dx, const float* cache, int64_t T, int64_t nHeads, int64_t D, bool neox);

}  // namespace thinktune::kernels
