// Cross-entropy over the vocabulary without ever holding all (tokens, vocab) logits: the engine
// computes the logits of one vocabulary chunk at a time and these kernels keep a running
// log-sum-exp (online softmax) per token, then turn each chunk's logits into their gradient.
#pragma once
#include <cstdint>

namespace thinktune::kernels {

// Starts the running state of N tokens: runMax = −inf, runSum = 0, targetLogit = NaN (set once seen).
void cross_entropy_begin(float* runMax, float* runSum, float* targetLogit, int64_t N);

// Folds logits (N, chunk) of vocabulary ids [vocab0, vocab0+chunk) into the running state;
// targets (N) are token ids (each ≥ 0).
void cross_entropy_accumulate(float* runMax, float* runSum, float* targetLogit, const float* logits,
                              const int32_t* targets, int64_t N, int64_t chunk, int64_t vocab0);

// lse (N) = runMax + log(runSum); returns Σ (lse − targetLogit), the summed loss, in double
double cross_entropy_finish(float* lse, const float* runMax, const float* runSum, const float* targetLogit,
                            int64_t N);

// logits (N, chunk) in place become scale · (softmax − onehot(target)) for vocabulary ids
// [vocab0, vocab0+chunk): the gradient of scale · loss with respect to the logits.
void cross_entropy_backward(float* logits, const float* lse, const int32_t* targets, int64_t N, int64_t chunk,
                            int64_t vocab0, float scale);

}  // namespace thinktune::kernels
