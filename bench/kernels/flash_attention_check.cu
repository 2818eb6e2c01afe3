// Standalone check and timing of the fused attention kernels (native/kernels/cuda/flash_attention.cu)
// on the GPU: every kernel variant (warps per block; the Hopper kernels, which an sm_90a build runs on a
// compute capability 9.0 GPU and the others replace with the mma.sync ones) against an fp64 CPU
// reference on packed rows (several sequences, lengths not multiples of the tiles, grouped-query
// heads), then forward and forward + backward TFLOP/s at the 7B distill's attention shape, counted
// as ../shared/bench/sdpa_attention.py counts them (forward 4·T²·D·H/2, backward 2.5× forward).
// Built with the CUDA engine as build/Release/thinktune_attention_check (native/kernels/cuda/cuda.cmake);
// by hand: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -DTHINKTUNE_SM90A -Inative \
//          bench/kernels/flash_attention_check.cu native/kernels/cuda/flash_attention.cu -o flash_check
// Run:   thinktune_attention_check [--no-check] [--seqs 1024,4096,16384] [--all-variants]
// (timings of the engine's variant, FlashAttentionArgs' defaults, unless --all-variants; --seqs "" times none)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/flash_attention.h"

using thinktune::cuda::FlashAttentionArgs;
using thinktune::cuda::FlashAttentionGradients;

#define CHECK(call)                                                                        \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    if (status_ != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(status_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

struct Variant {
  int forwardWarps, forwardRowTiles, backwardWarps;
  bool hopperKernels;  // where the build and the GPU have them (a head dimension of 128 on sm_90a)
  bool isDefault() const {
    const FlashAttentionArgs defaults;
    return forwardWarps == defaults.forwardWarps && forwardRowTiles == defaults.forwardRowTiles &&
           backwardWarps == defaults.backwardWarps && hopperKernels == defaults.hopperKernels;
  }
  std::string str() const {
    return std::to_string(forwardWarps) + "×" + std::to_string(forwardRowTiles) + "/" + std::to_string(backwardWarps) +
           (hopperKernels ? " hopper" : "");
  }
};
const Variant kVariants[] = {{8, 1, 8, false}, {4, 2, 8, false}, {8, 2, 8, false}, {8, 2, 8, true}};

template <class T>
T* deviceCopy(const std::vector<T>& host) {
  T* device = nullptr;
  CHECK(cudaMalloc(&device, sizeof(T) * std::max<size_t>(host.size(), 1)));
  CHECK(cudaMemcpy(device, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice));
  return device;
}
template <class T>
std::vector<T> hostCopy(const T* device, size_t n) {
  std::vector<T> host(n);
  CHECK(cudaMemcpy(host.data(), device, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return host;
}

std::vector<__nv_bfloat16> randomBf16(size_t n, std::mt19937& rng, std::vector<double>& rounded) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<__nv_bfloat16> values(n);
  rounded.resize(n);
  for (size_t i = 0; i < n; ++i) {
    values[i] = __float2bfloat16(normal(rng));
    rounded[i] = __bfloat162float(values[i]);
  }
  return values;
}

double relativeError(const std::vector<double>& expected, const std::vector<float>& actual, bool* nonFinite) {
  double difference = 0.0, norm = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!std::isfinite(actual[i])) *nonFinite = true;
    difference += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return std::sqrt(difference / std::max(norm, 1e-300));
}

// fp64 reference: out, lse, dq, dk, dv for one packed row
struct Reference {
  std::vector<double> out, lse, dq, dk, dv;
};
Reference reference(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                    const std::vector<double>& dout, const std::vector<int32_t>& seqStart, int T, int H, int Hkv,
                    int D, double scale) {
  Reference r;
  r.out.assign(size_t(T) * H * D, 0.0);
  r.lse.assign(size_t(H) * T, 0.0);
  r.dq.assign(size_t(T) * H * D, 0.0);
  std::vector<std::vector<double>> dkHead(H, std::vector<double>(size_t(T) * D, 0.0)), dvHead = dkHead;
  auto work = [&](int h) {
    const int hk = h / (H / Hkv);
    std::vector<double> p(T);
    for (int i = 0; i < T; ++i) {
      const double* qi = &q[(size_t(i) * H + h) * D];
      double maximum = -INFINITY;
      for (int j = seqStart[i]; j <= i; ++j) {
        const double* kj = &k[(size_t(j) * Hkv + hk) * D];
        double s = 0.0;
        for (int d = 0; d < D; ++d) s += qi[d] * kj[d];
        p[j] = s * scale;
        maximum = std::max(maximum, p[j]);
      }
      double sum = 0.0;
      for (int j = seqStart[i]; j <= i; ++j) sum += (p[j] = std::exp(p[j] - maximum));
      r.lse[size_t(h) * T + i] = maximum + std::log(sum);
      double* oi = &r.out[(size_t(i) * H + h) * D];
      for (int j = seqStart[i]; j <= i; ++j) {
        p[j] /= sum;
        const double* vj = &v[(size_t(j) * Hkv + hk) * D];
        for (int d = 0; d < D; ++d) oi[d] += p[j] * vj[d];
      }
      const double* doi = &dout[(size_t(i) * H + h) * D];
      double rowDot = 0.0;
      for (int d = 0; d < D; ++d) rowDot += doi[d] * oi[d];
      double* dqi = &r.dq[(size_t(i) * H + h) * D];
      for (int j = seqStart[i]; j <= i; ++j) {
        const double* vj = &v[(size_t(j) * Hkv + hk) * D];
        const double* kj = &k[(size_t(j) * Hkv + hk) * D];
        double dp = 0.0;
        for (int d = 0; d < D; ++d) dp += doi[d] * vj[d];
        const double ds = p[j] * (dp - rowDot);
        for (int d = 0; d < D; ++d) {
          dqi[d] += scale * ds * kj[d];
          dkHead[h][size_t(j) * D + d] += scale * ds * qi[d];
          dvHead[h][size_t(j) * D + d] += p[j] * doi[d];
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int h = 0; h < H; ++h) threads.emplace_back(work, h);
  for (auto& thread : threads) thread.join();
  r.dk.assign(size_t(T) * Hkv * D, 0.0);
  r.dv = r.dk;
  for (int h = 0; h < H; ++h) {
    const int hk = h / (H / Hkv);
    for (int j = 0; j < T; ++j)
      for (int d = 0; d < D; ++d) {
        r.dk[(size_t(j) * Hkv + hk) * D + d] += dkHead[h][size_t(j) * D + d];
        r.dv[(size_t(j) * Hkv + hk) * D + d] += dvHead[h][size_t(j) * D + d];
      }
  }
  return r;
}

struct DeviceProblem {
  int T, H, Hkv, D;
  __nv_bfloat16 *q, *k, *v, *dout, *out;
  float *lse, *dq, *dk, *dv, *rowDots;
  int32_t* seqStart;
  FlashAttentionArgs args(Variant variant) const {
    FlashAttentionArgs a;
    a.out = out; a.lse = lse; a.q = q; a.k = k; a.v = v; a.seqStart = seqStart;
    a.T = T; a.nHead = H; a.nHeadKv = Hkv; a.D = D; a.scale = 1.0f / std::sqrt(float(D));
    a.forwardWarps = variant.forwardWarps; a.forwardRowTiles = variant.forwardRowTiles;
    a.backwardWarps = variant.backwardWarps;
    a.hopperKernels = variant.hopperKernels;
    return a;
  }
  FlashAttentionGradients gradients() const { return {dout, dq, dk, dv, rowDots}; }
};

DeviceProblem upload(int T, int H, int Hkv, int D, const std::vector<__nv_bfloat16>& q,
                     const std::vector<__nv_bfloat16>& k, const std::vector<__nv_bfloat16>& v,
                     const std::vector<__nv_bfloat16>& dout, const std::vector<int32_t>& seqStart) {
  DeviceProblem p{T, H, Hkv, D};
  p.q = deviceCopy(q); p.k = deviceCopy(k); p.v = deviceCopy(v); p.dout = deviceCopy(dout);
  p.seqStart = deviceCopy(seqStart);
  CHECK(cudaMalloc(&p.out, sizeof(__nv_bfloat16) * size_t(T) * H * D));
  CHECK(cudaMalloc(&p.lse, sizeof(float) * size_t(T) * H));
  CHECK(cudaMalloc(&p.dq, sizeof(float) * size_t(T) * H * D));
  CHECK(cudaMalloc(&p.dk, sizeof(float) * size_t(T) * Hkv * D));
  CHECK(cudaMalloc(&p.dv, sizeof(float) * size_t(T) * Hkv * D));
  CHECK(cudaMalloc(&p.rowDots, sizeof(float) * size_t(T) * H));
  return p;
}
void release(DeviceProblem& p) {
  for (void* pointer : {(void*)p.q, (void*)p.k, (void*)p.v, (void*)p.dout, (void*)p.out, (void*)p.lse, (void*)p.dq,
                        (void*)p.dk, (void*)p.dv, (void*)p.rowDots, (void*)p.seqStart})
    cudaFree(pointer);
}

// returns false when a check fails
bool checkCase(int D, int H, int Hkv, const std::vector<int>& lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> seqStart;
  for (int length : lengths) {
    const int start = int(seqStart.size());
    for (int i = 0; i < length; ++i) seqStart.push_back(start);
  }
  const int T = int(seqStart.size());
  std::vector<double> q64, k64, v64, do64;
  auto q = randomBf16(size_t(T) * H * D, rng, q64), k = randomBf16(size_t(T) * Hkv * D, rng, k64);
  auto v = randomBf16(size_t(T) * Hkv * D, rng, v64), dout = randomBf16(size_t(T) * H * D, rng, do64);
  const Reference ref = reference(q64, k64, v64, do64, seqStart, T, H, Hkv, D, 1.0 / std::sqrt(double(D)));
  DeviceProblem problem = upload(T, H, Hkv, D, q, k, v, dout, seqStart);
  bool allPass = true;
  std::ostringstream shape;
  shape << "T " << T << " (";
  for (size_t i = 0; i < lengths.size(); ++i) shape << (i ? "+" : "") << lengths[i];
  shape << ") heads " << H << "/" << Hkv << " D " << D;
  for (const Variant& variant : kVariants) {
    // poison every output so an unwritten element shows
    CHECK(cudaMemset(problem.out, 0xff, sizeof(__nv_bfloat16) * size_t(T) * H * D));
    CHECK(cudaMemset(problem.lse, 0xff, sizeof(float) * size_t(T) * H));
    CHECK(cudaMemset(problem.dq, 0xff, sizeof(float) * size_t(T) * H * D));
    CHECK(cudaMemset(problem.dk, 0xff, sizeof(float) * size_t(T) * Hkv * D));
    CHECK(cudaMemset(problem.dv, 0xff, sizeof(float) * size_t(T) * Hkv * D));
    try {
      const FlashAttentionArgs args = problem.args(variant);
      thinktune::cuda::flash_attention_forward(args, nullptr);
      thinktune::cuda::flash_attention_backward(args, problem.gradients(), nullptr);
      CHECK(cudaDeviceSynchronize());
    } catch (const std::exception& error) {
      std::printf("FAIL %s warps %s: %s\n", shape.str().c_str(), variant.str().c_str(), error.what());
      allPass = false;
      continue;
    }
    const auto outBf16 = hostCopy(problem.out, size_t(T) * H * D);
    std::vector<float> out(outBf16.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = __bfloat162float(outBf16[i]);
    bool nonFinite = false;
    const double eOut = relativeError(ref.out, out, &nonFinite);
    const double eLse = relativeError(ref.lse, hostCopy(problem.lse, size_t(T) * H), &nonFinite);
    const double eDq = relativeError(ref.dq, hostCopy(problem.dq, size_t(T) * H * D), &nonFinite);
    const double eDk = relativeError(ref.dk, hostCopy(problem.dk, size_t(T) * Hkv * D), &nonFinite);
    const double eDv = relativeError(ref.dv, hostCopy(problem.dv, size_t(T) * Hkv * D), &nonFinite);
    // bf16 operands (P and dS rounded to bf16 too): errors of a few 1e-3 are expected
    const double tolerance = 2e-2;
    const bool pass = !nonFinite && eOut < tolerance && eLse < 1e-3 && eDq < tolerance && eDk < tolerance && eDv < tolerance;
    allPass &= pass;
    std::printf("%s %s warps %s: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e%s\n", pass ? "ok  " : "FAIL",
                shape.str().c_str(), variant.str().c_str(), eOut, eLse, eDq, eDk, eDv, nonFinite ? " NON-FINITE" : "");
  }
  release(problem);
  return allPass;
}

float median(std::vector<float> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

void timeShape(int T, const Variant& variant) {
  const int H = 28, Hkv = 4, D = 128, repeats = T >= 16384 ? 10 : 20;
  std::mt19937 rng(T);
  std::vector<double> unused;
  auto q = randomBf16(size_t(T) * H * D, rng, unused), k = randomBf16(size_t(T) * Hkv * D, rng, unused);
  auto v = randomBf16(size_t(T) * Hkv * D, rng, unused), dout = randomBf16(size_t(T) * H * D, rng, unused);
  std::vector<int32_t> seqStart(T, 0);
  DeviceProblem problem = upload(T, H, Hkv, D, q, k, v, dout, seqStart);
  const FlashAttentionArgs args = problem.args(variant);
  cudaEvent_t begin, end;
  CHECK(cudaEventCreate(&begin));
  CHECK(cudaEventCreate(&end));
  std::vector<float> forward, both;
  for (int i = 0; i < repeats + 3; ++i) {
    CHECK(cudaEventRecord(begin));
    thinktune::cuda::flash_attention_forward(args, nullptr);
    CHECK(cudaEventRecord(end));
    CHECK(cudaEventSynchronize(end));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, begin, end));
    if (i >= 3) forward.push_back(ms);
    CHECK(cudaEventRecord(begin));
    thinktune::cuda::flash_attention_forward(args, nullptr);
    thinktune::cuda::flash_attention_backward(args, problem.gradients(), nullptr);
    CHECK(cudaEventRecord(end));
    CHECK(cudaEventSynchronize(end));
    CHECK(cudaEventElapsedTime(&ms, begin, end));
    if (i >= 3) both.push_back(ms);
  }
  const double forwardFlops = 4.0 * T * double(T) * D * H / 2;
  const double f = median(forward), fb = median(both);
  std::printf("{\"kernel\": \"thinktune flash\", \"seq\": %d, \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
              "\"forward_warps\": %d, \"forward_row_tiles\": %d, \"backward_warps\": %d, \"hopper\": %s, \"fwd_ms\": %.3f, \"fwd_tflops\": %.1f, "
              "\"fwd_bwd_ms\": %.3f, \"fwd_bwd_tflops\": %.1f}\n",
              T, H, Hkv, D, variant.forwardWarps, variant.forwardRowTiles, variant.backwardWarps,
              variant.hopperKernels ? "true" : "false", f, forwardFlops / f / 1e9, fb,
              3.5 * forwardFlops / fb / 1e9);
  std::fflush(stdout);
  release(problem);
}

int main(int argc, char** argv) {
  bool check = true, allVariants = false;
  std::string seqs = "1024,4096,16384";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--no-check") check = false;
    else if (arg == "--all-variants") allVariants = true;
    else if (arg == "--seqs" && i + 1 < argc) seqs = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s; usage: thinktune_attention_check [--no-check] [--seqs N,N] [--all-variants]\n", arg.c_str());
      return 2;
    }
  }
  bool ok = true;
  if (check) {
    ok &= checkCase(64, 4, 2, {100, 37, 163}, 1);
    ok &= checkCase(128, 8, 2, {100, 37, 163}, 2);
    ok &= checkCase(128, 7, 1, {1, 64, 65, 127, 200}, 3);
    ok &= checkCase(64, 4, 4, {640}, 4);
    ok &= checkCase(128, 28, 4, {1024}, 5);
    std::printf("correctness: %s\n", ok ? "all variants pass" : "FAILURES above");
    std::fflush(stdout);
  }
  std::stringstream list(seqs);
  for (std::string item; std::getline(list, item, ',');) {
    if (item.empty()) continue;
    for (const Variant& variant : kVariants) {
      if (allVariants || variant.isDefault()) timeShape(std::stoi(item), variant);
    }
  }
  return ok ? 0 : 1;
}
