// SwiGLU gate of the FFN, as ggml_swiglu_split: h = silu(g) · u with silu(g) = g / (1 + exp(−g)).
#pragma once
#include <cstdint>

namespace thinktune::kernels {

// h (N) from gate g (N) and up u (N); N = T · nFf
void swiglu_forward(float* h, const float* g, const float* u, int64_t N);

// dg (N) and du (N) are assigned from dh (N); they may alias g and u (the engine reuses those buffers)
void swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t N);

}  // namespace thinktune::kernels
