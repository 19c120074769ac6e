#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU (issue 5), in one call.
#
# 1. Here, where Rust is (no GPU needed):
#        scripts/gpu-check.sh prepare
#    builds target/release/rear and the GPU test binaries (tests/cuda_kernels.rs,
#    tests/cuda_engine.rs, tests/cuda_bench.rs) in release mode, with the kernels embedded (it
#    fails without NVRTC: `pip install nvidia-cuda-nvrtc-cu12`), strips them and packs them into
#    target/gpu-bin.tar.gz — the one ignored path to carry to the device machine. The fixtures
#    and these scripts are tracked files and travel with the tree.
#
# 2. On the GPU machine (NVIDIA driver, python3 with torch and transformers; no Rust, no
#    network), from the repository root:
#        scripts/gpu-check.sh            (or: scripts/gpu-check.sh run)
#    a. the GPU tests (a test that reports "skipped:" counts as a failure here);
#    b. parity with transformers on the same GPU for a few fixture models, through the `rear`
#       binary with --device cuda (scripts/gpu_parity.py);
#    c. a random-weight Llama-3.2-1B-shaped bf16 checkpoint made with transformers, then
#       timings: the HBM floor (weight bytes / device-to-device copy bandwidth measured in the
#       same run), single-row decode step, guided greedy (2 rows) and guided beam B=16 (32 rows)
#       steps, rear guided greedy against transformers' CFG generate
#       (tests/cuda_bench.rs, scripts/gpu_bench_hf.py);
#    and prints a short table last. Exit status: 0 when the tests and parity pass (the timing
#    goals are reported, not enforced).
#
# Environment: GPU_CHECK_WORK (scratch dir, default /tmp/rear-gpu-check), GPU_CHECK_SKIP
# (comma list of tests,parity,bench), REAR_BENCH_STEPS (default 64), REAR_CUDA_SYNC=1
# (synchronise after every kernel: names the failing kernel), REAR_CUDA_MMA_MIN_ROWS.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
mode="${1:-run}"

if [ "$mode" = "prepare" ]; then
  set -e
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  export REAR_REQUIRE_KERNELS=1
  cargo build --release --bin rear
  cargo test --release --no-run --test cuda_kernels --test cuda_engine --test cuda_bench \
    --message-format=json > target/gpu-tests.json
  rm -rf target/gpu-bin && mkdir -p target/gpu-bin
  python3 - <<'EOF'
import json, shutil
for line in open("target/gpu-tests.json"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("cuda_"):
        shutil.copy(m["executable"], "target/gpu-bin/" + m["target"]["name"])
EOF
  cp target/release/rear target/gpu-bin/rear
  strip --strip-debug target/gpu-bin/* 2>/dev/null || true
  tar -C target -czf target/gpu-bin.tar.gz gpu-bin
  ls -la target/gpu-bin target/gpu-bin.tar.gz
  echo "carry: target/gpu-bin.tar.gz   then on the device: scripts/gpu-check.sh"
  exit 0
fi

bin="${2:-target/gpu-bin}"
if [ ! -x "$bin/rear" ] && [ -f target/gpu-bin.tar.gz ]; then
  tar -C target -xzf target/gpu-bin.tar.gz
fi
if [ ! -x "$bin/rear" ]; then
  echo "no $bin/rear: run 'scripts/gpu-check.sh prepare' where Rust is and carry target/gpu-bin.tar.gz" >&2
  exit 2
fi
work="${GPU_CHECK_WORK:-/tmp/rear-gpu-check}"
mkdir -p "$work"
skip="${GPU_CHECK_SKIP:-}"
export REAR_REPO="$repo"
status=0
results="$work/results.txt"
: > "$results"
note() { echo "$*" | tee -a "$results"; }

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true

if [[ ",$skip," != *",tests,"* ]]; then
  for t in cuda_kernels cuda_engine; do
    echo "== $t"
    log="$work/$t.log"
    start=$(date +%s)
    "$bin/$t" --test-threads=1 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    secs=$(( $(date +%s) - start ))
    passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | tail -1)
    if grep -q "skipped:" "$log"; then
      note "TEST $t: FAIL (a test was skipped on a GPU machine) ${passed} (${secs}s)"
      status=1
    elif [ "$rc" -ne 0 ]; then
      note "TEST $t: FAIL (exit $rc) ${passed} (${secs}s)"
      status=1
    else
      note "TEST $t: ok ${passed} (${secs}s)"
    fi
  done
fi

if [[ ",$skip," != *",parity,"* ]]; then
  echo "== parity with transformers on the GPU"
  python3 scripts/gpu_parity.py --rear "$bin/rear" --fixtures tests/fixtures 2>&1 | tee "$work/parity.log"
  rc=${PIPESTATUS[0]}
  summary=$(grep '^PARITY' "$work/parity.log" | tail -1)
  note "${summary:-PARITY: no summary (exit $rc)}"
  [ "$rc" -ne 0 ] && status=1
fi

if [[ ",$skip," != *",bench,"* ]]; then
  echo "== benchmark checkpoint"
  model="$work/llama-3.2-1b-shaped-bf16"
  if [ ! -f "$model/config.json" ]; then
    python3 scripts/gpu_bench_hf.py make "$model" 2>&1 | tail -3
  fi
  echo "== rear timings"
  REAR_BENCH_MODEL="$model" "$bin/cuda_bench" --nocapture --test-threads=1 2>&1 | tee "$work/bench.log"
  echo "== transformers timings"
  python3 scripts/gpu_bench_hf.py cfg "$model" 2>&1 | tee "$work/hf.log"
  echo "== rear bench --device cuda (CLI), guided greedy and guided beam B=16"
  "$bin/rear" bench --model "$model" --device cuda --json > "$work/rear_bench_greedy.json" 2> "$work/rear_bench_greedy.err" \
    || { echo "rear bench --device cuda failed:"; tail -3 "$work/rear_bench_greedy.err"; }
  "$bin/rear" bench --model "$model" --device cuda --algo beam --beams 16 --json > "$work/rear_bench_beam16.json" 2> "$work/rear_bench_beam16.err" \
    || { echo "rear bench --device cuda --algo beam failed:"; tail -3 "$work/rear_bench_beam16.err"; }
  echo "== rear generate (CLI, whole process) for reference"
  for n in 32 160; do
    s=$(date +%s.%N)
    "$bin/rear" generate --model "$model" --device cuda --prompt-ids "$(python3 -c 'print(",".join(str((i*7919+13)%128256) for i in range(64)))')" \
      --base-prompt-ids "$(python3 -c 'print(",".join(str((i*7919+13)%128256) for i in range(32,64)))')" \
      --lambda 3 --max-new-tokens $n --ignore-eos --json > "$work/cli_$n.json" 2> "$work/cli_$n.err"
    rc=$?
    e=$(date +%s.%N)
    echo "$n $rc $(python3 -c "print($e - $s)")" >> "$work/cli_times.txt"
    [ "$rc" -ne 0 ] && { echo "rear generate --device cuda failed:"; cat "$work/cli_$n.err"; }
  done
fi

echo
echo "================ rear CUDA backend: summary ================"
cat "$results"
python3 scripts/gpu_bench_hf.py table --bench "$work/bench.log" --hf "$work/hf.log" --cli "$work/cli_times.txt" 2>/dev/null || true
exit $status
