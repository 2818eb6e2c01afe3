#include "engine/memory_plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"

namespace thinktune {

namespace {
constexpr size_t kAlignment = 64;

std::string mebibytes(size_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

char* allocate(size_t bytes, const char* lifetime) {
  void* block = std::aligned_alloc(kAlignment, roundUp(std::max<size_t>(bytes, kAlignment), kAlignment));
  if (!block) {
    throw Error(std::string("out of memory: the ") + lifetime + " buffers need " + mebibytes(bytes) +
                    "; lower maxTokens or the LoRA rank, or free memory",
                ErrorKind::OutOfMemory);
  }
  return static_cast<char*>(block);
}
}  // namespace

void MemoryPlan::Block::operator()(void* p) const { std::free(p); }

void layoutLora(BufferLayout& layout, LoraBuffers& l, int64_t P) {
  layout.add(l.params, P);
  layout.add(l.grads, P);
  layout.add(l.m, P);
  layout.add(l.v, P);
  layout.add(l.savedParams, P);
  layout.add(l.savedM, P);
  layout.add(l.savedV, P);
}

float* loraBlock(const LoraBuffers& l, LoraBlock block) {
  switch (block) {
    case LoraBlock::Params: return l.params;
    case LoraBlock::Grads: return l.grads;
    case LoraBlock::M: return l.m;
    case LoraBlock::V: return l.v;
  }
  return l.params;
}

std::array<std::pair<float*, const float*>, 3> stateCopies(const LoraBuffers& l, bool save) {
  if (save) return {{{l.savedParams, l.params}, {l.savedM, l.m}, {l.savedV, l.v}}};
  return {{{l.params, l.savedParams}, {l.m, l.savedM}, {l.v, l.savedV}}};
}

void layoutActivations(BufferLayout& act, ActivationBuffers& a, const ModelConfig& c, int64_t T, int64_t TF,
                       int64_t R, int64_t residualSlots, bool sharedBuffers) {
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim(), F = c.nFf;
  // dAttn and dq also hold the loss head's (positions, C) rows when shared
  const int64_t lossRows = sharedBuffers ? std::max(C, QD) : QD;
  if (residualSlots > 0) act.add(a.residual, residualSlots * T * C);
  act.add(a.normed1, T * C);
  act.add(a.rstd1, T);
  act.add(a.q, T * QD);
  act.add(a.k, T * KD);
  act.add(a.v, T * KD);
  act.add(a.attn, T * QD);
  act.add(a.normed2, T * C);
  act.add(a.rstd2, T);
  if (!sharedBuffers) act.add(a.gate, TF * F);
  act.add(a.up, TF * F);
  if (!sharedBuffers) act.add(a.hidden, TF * F);
  if (!sharedBuffers) act.add(a.normedFinal, T * C);
  act.add(a.rstdFinal, T);
  act.add(a.ropeCache, T * c.headDim);
  act.add(a.seqStart, T);
  act.add(a.dResidual, T * C);
  act.add(a.dNormed, T * C);
  act.add(a.dAttn, T * lossRows);
  act.add(a.dq, T * lossRows);
  act.add(a.dk, T * KD);
  act.add(a.dv, T * KD);
  act.add(a.dHidden, TF * F);
  act.add(a.dLoraHidden, T * R);
  if (!sharedBuffers) act.add(a.lossInput, T * C);
  if (!sharedBuffers) act.add(a.dLossInput, T * C);
  act.add(a.lossTargets, T);
  act.add(a.lossPositions, T);
  act.add(a.runMax, T);
  act.add(a.runSum, T);
  act.add(a.targetLogit, T);
  act.add(a.lossLse, T);
}

void shareActivationBuffers(ActivationBuffers& a) {
  a.gate = a.dHidden;
  a.hidden = a.up;
  a.normedFinal = a.dNormed;
  a.lossInput = a.dAttn;
  a.dLossInput = a.dq;
}

namespace {
void addKeptLayer(BufferLayout& act, CpuLayerActivations& l, const ModelConfig& c, int64_t T, int64_t R) {
  const int64_t C = c.nEmbd, QD = c.qDim(), KD = c.kvDim(), F = c.nFf;
  act.add(l.normed1, T * C);
  act.add(l.rstd1, T);
  act.add(l.q, T * QD);
  act.add(l.k, T * KD);
  act.add(l.v, T * KD);
  act.add(l.attn, T * QD);
  act.add(l.lse, c.nHead * T);
  act.add(l.residual2, T * C);
  act.add(l.normed2, T * C);
  act.add(l.rstd2, T);
  act.add(l.gate, T * F);
  act.add(l.up, T * F);
  act.add(l.hidden, T * F);
  act.add(l.loraHidden, kProjectionCount * T * R);
  l.feedForwardTokens = T;
}
}  // namespace

size_t MemoryPlan::keptLayerBytes(const ModelConfig& config, int64_t T, int64_t rank) {
  BufferLayout one(kAlignment);
  CpuLayerActivations sizing;
  addKeptLayer(one, sizing, config, T, rank);
  return one.bytes();
}

const CpuLayerActivations& MemoryPlan::layerActivations(int64_t layer) const {
  return kept(layer) ? kept_[static_cast<size_t>(layer - firstKeptLayer_)] : shared_;
}

MemoryPlan::MemoryPlan(const Model& model, const Lora& lora, const PlanSizes& sizes) : sizes_(sizes) {
  const ModelConfig& c = model.config();
  const int64_t T = sizes.maxTokens;
  const int64_t C = c.nEmbd, QD = c.qDim(), F = c.nFf, R = lora.options().rank;

  BufferLayout loraLayout(kAlignment);
  layoutLora(loraLayout, lora_, static_cast<int64_t>(lora.parameterCount()));

  BufferLayout act(kAlignment);
  layoutActivations(act, activations_, c, T, sizes.feedForwardTokens, R, c.nLayer + 1);
  CpuBuffers& b = cpuBuffers_;
  act.add(b.lse, c.nHead * T);
  act.add(b.residual2, T * C);
  act.add(b.loraHidden, kProjectionCount * T * R);
  act.add(b.positions, T);
  act.add(b.seqEnd, T);
  lastLayer_ = c.nLayer - 1;
  firstKeptLayer_ = lastLayer_ - std::min<int64_t>(sizes.keptLayers, lastLayer_);
  kept_.assign(static_cast<size_t>(lastLayer_ - firstKeptLayer_), CpuLayerActivations{});
  for (CpuLayerActivations& layer : kept_) addKeptLayer(act, layer, c, T, R);

  BufferLayout scratch(kAlignment);
  ScratchBuffers& s = scratch_;
  scratch.add(s.weightChunk, sizes.weightChunkFloats);
  scratch.add(s.logitsChunk, T * sizes.vocabChunk);
  // kept layers run their feed-forward whole
  scratch.add(s.droppedInput, std::max(T * std::max(C, QD), (kept_.empty() ? sizes.feedForwardTokens : T) * F));
  scratch.add(s.gemm, static_cast<int64_t>(kernels::gemmWorkspaceFloats(sizes.threads)));
  scratch.add(s.attention, static_cast<int64_t>(kernels::attentionWorkspaceFloats(T, c.nHead, sizes.threads)));

  loraBytes_ = loraLayout.bytes();
  activationBytes_ = act.bytes();
  scratchBytes_ = scratch.bytes();
  loraBlock_.reset(allocate(loraBytes_, "LoRA"));
  activationBlock_.reset(allocate(activationBytes_, "activation"));
  scratchBlock_.reset(allocate(scratchBytes_, "scratch"));
  loraLayout.assign(loraBlock_.get());
  act.assign(activationBlock_.get());
  scratch.assign(scratchBlock_.get());
  const ActivationBuffers& a = activations_;
  // the shared set is the one-layer buffers both backends lay out, plus the CPU's own
  shared_.normed1 = a.normed1;
  shared_.rstd1 = a.rstd1;
  shared_.q = a.q;
  shared_.k = a.k;
  shared_.v = a.v;
  shared_.attn = a.attn;
  shared_.lse = b.lse;
  shared_.residual2 = b.residual2;
  shared_.normed2 = a.normed2;
  shared_.rstd2 = a.rstd2;
  shared_.gate = a.gate;
  shared_.up = a.up;
  shared_.hidden = a.hidden;
  shared_.loraHidden = b.loraHidden;
  shared_.feedForwardTokens = sizes.feedForwardTokens;
  std::memset(loraBlock_.get(), 0, loraBytes_);
}

std::vector<std::pair<std::string, double>> MemoryPlan::report(const Model& model) const {
  const double mapped = static_cast<double>(model.mappedBytes());
  const double converted = static_cast<double>(model.ownedBytes());
  const double lora = static_cast<double>(loraBytes_);
  const double activations = static_cast<double>(activationBytes_);
  const double scratch = static_cast<double>(scratchBytes_);
  return {{"weights", mapped},
          {"convertedWeights", converted},
          {"lora", lora},
          {"activations", activations},
          {"scratch", scratch},
          // layers whose activations stay from the forward (besides the last, which is never recomputed)
          {"keptLayers", static_cast<double>(kept_.size())},
          {"recomputedLayers", static_cast<double>(firstKeptLayer_)}};
}

}  // namespace thinktune
