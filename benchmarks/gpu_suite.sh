#!/usr/bin/env bash
# The GPU suite: one H100 / H200, under 8 minutes, from the repository root.
#
#   bash benchmarks/gpu_suite.sh               # on the GPU machine
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # the same steps at tiny sizes on a CPU (proves the script)
#
# It measures, printing one `RESULT ...` line per measurement and the ratios at the end:
#   1. learner vs raw timm bf16 loop on the same GPU-resident batches (the learner's own overhead):
#      R50x1 at 128, 224 and 480 px, eager and torch.compile; R152x4 at 224 px eager.  goal >= 0.95
#   2. the learner streamed from a memory-mapped uint8 file in the cache's layout vs the same learner
#      on resident batches, R50x1 224 px compiled (images/s, and the share of time the step waited
#      for a batch: the GPU waits when that is above ~0).                               goal >= 0.95
#   2b. the same streamed run with every row checked against the cache's CRC-32 on its first read (each
#      run starts unverified: the worst case, a first epoch), vs resident.              goal >= 0.95
#   3. a 1-GPU torchrun smoke run of `xrstudy train` (a phantom CheXpert source, R50x1, a few steps),
#      then its history.csv (a row per step, peak GPU memory filled in) and TensorBoard events read back.
#   4. the training history's cost: the learner with / without its HistoryLogger, R50x1 224 px bf16,
#      every step logged (the default of runs of <= 200 steps) and every 50 (a 10k-step run's default).
#                                                                                     goal <= 2 % of step time
#   5. evaluation in fp32 while training runs in bf16, channels_last kept (benchmarks/check_eval_precision.py).
#   6. the linear probe (bench_probe.py): fp32 feature extraction streamed from a uint8 memmap vs a bf16
#      training step, R50x1 and R152x4 at 224 px (the plan prices extraction at 3x the training images/s),
#      and the feature file read back vs extracted.
#
# Needs torch (CUDA) and timm on the machine. fastai and its pure-Python dependencies can come as
# wheels carried along (the GPU machine has no network). On a machine with network, from the repo root:
#   pip download --no-deps -d wheels fastai fastcore fasttransform fastdownload beartype \
#       "fastprogress<1.1" "plum-dispatch<2.10"
#   (plus, if missing there: pip download --no-deps -d wheels filelock pyyaml scikit-learn)
# then copy wheels/ along; the script installs them with `pip install --no-deps wheels/*.whl` when
# fastai is not importable. Results go to $OUT (default: a temp dir); copy them into RESULTS.md with
# the device, date and commit this script prints; a measured images/s for `xrstudy sweep plan`'s cost goes into
# xrstudy/training/tables/throughput.csv (package data, shipped in the wheel).
set -euo pipefail

MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then MODE=cpu; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 XRSTUDY_NO_PROGRESS=1
cd "$ROOT"
STARTED=$SECONDS
LOG="$OUT/gpu_suite.log"

if ! python -c "import fastai" 2>/dev/null; then
  if compgen -G "$ROOT/wheels/*.whl" >/dev/null; then
    pip install --quiet --no-deps "$ROOT"/wheels/*.whl
  else
    echo "fastai is not installed and $ROOT/wheels/ holds no wheels (see the comment at the top)" >&2
    exit 2
  fi
fi

if [[ $MODE == gpu ]]; then
  DEVICE=cuda; R50=resnetv2_50x1_bit; R152=resnetv2_152x4_bit
  SIZES="128 224 480"; STEPS=${STEPS:-20}; REPEATS=${REPEATS:-3}
  declare -A BATCH=([128]=128 [224]=128 [480]=32)
  BIG_SIZE=224; BIG_BATCH=32; STREAM_SIZE=224; STREAM_BATCH=128; COMPILE=(--compile)
  SMOKE_ARCH=$R50; SMOKE_SIZE=64; SMOKE_DEVICE=auto
else
  DEVICE=cpu; R50=resnetv2_tiny_bit; R152=resnetv2_tiny_bit
  SIZES="32"; STEPS=${STEPS:-3}; REPEATS=${REPEATS:-1}
  declare -A BATCH=([32]=8)
  BIG_SIZE=32; BIG_BATCH=4; STREAM_SIZE=32; STREAM_BATCH=8
  COMPILE=()  # inductor on this CPU takes minutes; set CPU_COMPILE=1 to include it
  if [[ "${CPU_COMPILE:-0}" == 1 ]]; then COMPILE=(--compile); fi
  SMOKE_ARCH=resnetv2_tiny_bit; SMOKE_SIZE=32; SMOKE_DEVICE=cpu
fi

{
  echo "# xrstudy GPU suite ($MODE) $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  python - <<'EOF'
import torch, timm, fastai
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
print(f"device: {name}; torch {torch.__version__}, timm {timm.__version__}, fastai {fastai.__version__}")
EOF
} | tee "$LOG"

bench() {  # one bench_learner run; keeps its RESULT line
  local t0=$SECONDS
  python benchmarks/bench_learner.py --device "$DEVICE" --steps "$STEPS" --repeats "$REPEATS" "$@" 2>&1 \
    | grep -v -i "warn" | tee -a "$LOG" | grep -E "^(RESULT|ratio|  )" || true
  echo "   ($((SECONDS - t0)) s)" | tee -a "$LOG"
}

echo "== 1. learner vs raw loop, GPU-resident batches" | tee -a "$LOG"
for size in $SIZES; do
  bench --resident --arch "$R50" --size "$size" --batch "${BATCH[$size]}"
  if [[ ${#COMPILE[@]} -gt 0 ]]; then
    bench --resident "${COMPILE[@]}" --arch "$R50" --size "$size" --batch "${BATCH[$size]}"
  fi
done
bench --resident --arch "$R152" --size "$BIG_SIZE" --batch "$BIG_BATCH" --repeats 2

echo "== 2. streamed from the uint8 memmap vs resident batches" | tee -a "$LOG"
bench --stream "${COMPILE[@]}" --arch "$R50" --size "$STREAM_SIZE" --batch "$STREAM_BATCH" --dir "$WORK" \
  --images $((64 * STREAM_BATCH))

echo "== 2b. streamed with the cache's checksums checked on first read vs resident batches" | tee -a "$LOG"
bench --stream --checked "${COMPILE[@]}" --arch "$R50" --size "$STREAM_SIZE" --batch "$STREAM_BATCH" --dir "$WORK" \
  --images $((64 * STREAM_BATCH))

echo "== 3. 1-GPU torchrun smoke run" | tee -a "$LOG"
python - "$WORK" "$SMOKE_ARCH" "$SMOKE_SIZE" "$SMOKE_DEVICE" <<'EOF'
import sys
from pathlib import Path
from xrstudy.data import layouts, phantoms
from xrstudy.config import RunConfig

work, arch, size, device = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
style = phantoms.PhantomStyle(height=80, width=72)
root = layouts.write_layout("chexpert", work / "CheXpert-v1.0-small",
                            phantoms.xray_records(64, seed=1, style=style, splits=(("train", 0.8), ("valid", 0.2))))
RunConfig(kind="pretrain", sources=("chexpert",), roots=(f"chexpert={root}",), arch=arch, image_size=size,
          steps=6, batch_size=16, out_dir=str(work / "out"), device=device).to_yaml(work / "smoke.yaml")
EOF
t0=$SECONDS
if torchrun --standalone --nproc_per_node 1 -m xrstudy.cli train "$WORK/smoke.yaml" 2>&1 | grep -v -i warn | tail -3 | tee -a "$LOG"; then
  echo "RESULT mode=torchrun ok=1 seconds=$((SECONDS - t0))" | tee -a "$LOG"
else
  echo "RESULT mode=torchrun ok=0" | tee -a "$LOG"
fi
# The cell as training resolved it on this device (xrstudy.training.resolve; the result's `resolved`):
# on a GPU, precision auto must be bf16, evaluation fp32, and the device named as the cost tables name it
# (an H200 has no rows yet: no GPU-hours estimate).
python - "$WORK/out/results" <<'PY' | tee -a "$LOG"
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())["resolved"]
    print(f"RESULT mode=resolved precision={r['precision']} eval_precision={r['eval_precision']} "
          f"cache_mode={r['cache_mode']} micro_batch={r['micro_batch']} throughput_from={r['throughput_from']!r}")
PY

python - "$WORK" <<'EOF' 2>&1 | grep -v -i warn | tee -a "$LOG" || true
import sys
from pathlib import Path

try:
    from tensorboard.backend.event_processing import event_accumulator
    from xrstudy.training import history

    run = next(Path(sys.argv[1], "out", "runs").iterdir())
    rows = history.read_rows(run / history.HISTORY_FILE)
    events = event_accumulator.EventAccumulator(str(run / history.TENSORBOARD_DIR))
    events.Reload()
    steps = [r["step"] for r in rows]
    peak = max((r["train/gpu_peak_gib"] or 0.0) for r in rows) if rows else 0.0
    ok = steps == list(range(1, 7)) and [e.step for e in events.Scalars("train/loss")] == steps
    print(f"RESULT mode=history_rows ok={int(ok)} rows={len(rows)} gpu_peak_gib={peak:.2f}")
except Exception as err:  # the torchrun run failed above: say so, keep going
    print(f"RESULT mode=history_rows ok=0 error={type(err).__name__}")
EOF

echo "== 4. the training history's cost (learner with / without HistoryLogger)" | tee -a "$LOG"
bench --history --arch "$R50" --size "$STREAM_SIZE" --batch "$STREAM_BATCH" --log-every 1
bench --history --arch "$R50" --size "$STREAM_SIZE" --batch "$STREAM_BATCH" --log-every 50 --steps $((STEPS * 5))

echo "== 5. evaluation in fp32 after bf16 training" | tee -a "$LOG"
python benchmarks/check_eval_precision.py --device "$DEVICE" 2>&1 | grep "^RESULT" | tee -a "$LOG" || true

echo "== 6. linear probe: fp32 feature extraction vs a training step, feature file reuse" | tee -a "$LOG"
probe_bench() {
  local t0=$SECONDS
  python benchmarks/bench_probe.py --device "$DEVICE" --repeats "$REPEATS" "$@" 2>&1 \
    | grep -v -i "warn" | tee -a "$LOG" | grep -E "^(RESULT|extraction|training|features)" || true
  echo "   ($((SECONDS - t0)) s)" | tee -a "$LOG"
}
if [[ $MODE == gpu ]]; then
  probe_bench --arch "$R50" --size 224 --batch 128 --images 4096 --steps 10
  probe_bench --arch "$R152" --size 224 --batch 32 --images 1024 --steps 6
else
  probe_bench --arch "$R50" --size 32 --batch 8 --images 128 --steps "$STEPS"
fi

echo "== summary (goal >= 0.95 learner/raw and streamed/resident; history cost_pct <= 2; eval_fp32 ok=1)" | tee -a "$LOG"
grep "^RESULT" "$LOG" | tee "$OUT/results.txt"
echo "total $((SECONDS - STARTED)) s; log $LOG" | tee -a "$LOG"
rm -rf "$WORK"
