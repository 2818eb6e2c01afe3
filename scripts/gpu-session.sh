#!/usr/bin/env bash
# One GPU-machine session (the lent H200), run from the project root after ../shared/tools/device-prep
# here: builds the CUDA engine, then runs the stages named on the command line, logs under $OUT.
#   tests    the GPU tests (test/gpu: the CUDA engine against the CPU engine, the fused attention checks)
#   profile  per-kernel time of one step of the 7B shape cut to 4 layers at 4096 tokens (ncu) → $OUT/profile.md
#   long     the long lengths (32768, 65536, 131072) against a 24 GiB budget, one timed step each (a length
#            that does not fit says the plan's estimate and the others still run) → $OUT/bench-long/results.jsonl
#   cli-long `thinktune train` as a user runs it at long lengths: a 7B-shaped synth model (Q4_K), one
#            example of about 65,000 tokens (scripts/long-example.mjs), 3 steps on the GPU at --max-length
#            65536 and a 24 GiB budget; the run's output and its metrics.jsonl (measured peak, host
#            memory) → $OUT/cli-long.log
#   bench    npm run bench at 1024, 4096 and 16384 tokens with a 24 GiB budget, and the lean 10 GiB
#            plan at 4096 (without PEFT: its 4096 figure is the first command's), beside PEFT and torch
#            SDPA → $OUT/bench/results.jsonl
# COMMIT (the commit measured) is required for bench and long.
set -uo pipefail
source .device/env.sh
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
(CMAKE_CUDA_ARCHITECTURES=90a THINKTUNE_CUDA=on node scripts/build-native.mjs && npm run build:ts) > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
for stage in "$@"; do
  echo "== $stage $(date +%T)"
  case "$stage" in
    tests)
      npx vitest run test/gpu 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "✓|✗|×|FAIL|Tests|passed|failed" | tail -60 ;;
    profile)
      node dist/cli/main.js synth --preset r1-distill-qwen-7b --layers 4 --type Q4_K --seed 0 --out /tmp/cut.gguf > "$OUT/profile.log" 2>&1
      # the steps' wall time without the profiler, beside the kernels' sum below
      node bench/kernels/profile_step.mjs /tmp/cut.gguf 4096 2>&1 | grep "ms wall" | tee -a "$OUT/profile.log"
      # the raw CSV stays on the machine: at most 8 files come back from $OUT
      ncu --clock-control none --metrics gpu__time_duration.sum --csv node bench/kernels/profile_step.mjs /tmp/cut.gguf 4096 \
        > /tmp/ncu.csv 2>> "$OUT/profile.log"
      node bench/kernels/ncu_summary.mjs /tmp/ncu.csv | tee "$OUT/profile.md" ;;
    bench)
      node dist/cli/main.js bench --device cuda --type Q4_K --seq 1024,4096,16384 --gpu-memory 24GiB --commit "$COMMIT" \
        --results "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | grep -vE "^\|" | tail -30
      node dist/cli/main.js bench --device cuda --type Q4_K --seq 4096 --gpu-memory 10GiB --no-attention --no-peft --commit "$COMMIT" \
        --results "$OUT/bench" 2>&1 | tee "$OUT/bench-lean.log" | grep -vE "^\|" | tail -12
      tail -25 "$OUT/bench/RESULTS.md" ;;
    long)
      node dist/cli/main.js bench --device cuda --type Q4_K --seq 32768,65536,131072 --gpu-memory 24GiB --no-peft --no-attention --steps 1 \
        --commit "$COMMIT" --results "$OUT/bench-long" 2>&1 | tee "$OUT/long.log" | grep -vE "^\|" | tail -12 ;;
    cli-long)
      {
        # kept between calls on a warm machine: the synth takes minutes
        [ -f /tmp/r1-7b.gguf ] || node dist/cli/main.js synth --preset r1-distill-qwen-7b --type Q4_K --seed 0 --out /tmp/r1-7b.gguf
        node scripts/long-example.mjs /tmp/long-65k.jsonl 65000
        # train refuses a run folder that already holds a run
        rm -rf /tmp/cli-long-run
        node dist/cli/main.js train --model /tmp/r1-7b.gguf --data /tmp/long-65k.jsonl --device cuda --max-length 65536 --gpu-memory 24GiB \
          --max-steps 3 --eval-every 1000 --checkpoint-every 1000 --checkpoint-every-minutes 0 --log-every 1 --preview-tokens 0 \
          --out /tmp/cli-long-run
        echo "train exit code $?"
        cat /tmp/cli-long-run/metrics.jsonl
      } > "$OUT/cli-long.log" 2>&1
      grep -E "^(wrote|/tmp|Data|Training|step|Done|train exit|\{|thinktune:|error:)" "$OUT/cli-long.log" | tail -20 ;;
    *) echo "unknown stage $stage (tests, profile, bench, long, cli-long)"; exit 2 ;;
  esac
done
