#!/usr/bin/env bash
# A check of the project on a CUDA machine (e.g. one H200), whose CPU-safe parts also
# run on a CPU. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh                   # CUDA: every part on the GPU
#   bash benchmarks/gpu_check.sh --cpu             # the CPU-safe parts, on the CPU
#   bash benchmarks/gpu_check.sh --quick           # fewest steps and repeats
#   bash benchmarks/gpu_check.sh --images DIR      # photos for the loader benchmark
#   OUT=/some/folder bash benchmarks/gpu_check.sh  # where results go
#
# Parts (each recorded PASS, FAIL or SKIP; one failing part does not stop the others):
#   1. smoke     kedro run --env smoke --params runtime.precision=<p>,runtime.device=<d>
#                in a temporary copy of the project (conf without conf/local, src,
#                pyproject.toml, an empty data/), so the user's data/ is never touched;
#                CUDA: bf16 and fp16; CPU: fp32, bf16 and fp16 (CPU autocast has both).
#                Records the exit code, the wall time, and LoRA's accuracy,
#                training_seconds and peak_memory_mb from the run's metrics/summary JSON.
#   2. step      benchmarks/gpu_step.py: one LoRA training step of the adapted model
#                (CUDA: ViT-B-16, batch 32, bf16 and fp16; CPU: the tiny model, fp32):
#                steps/s, images/s, peak memory, MFU.
#   3. loader    benchmarks/loader_throughput.py on --images (default
#                ../shared/datasets/caltech101-mini); SKIP when the folder is missing.
#                CUDA: also the new path with its cache and crops on the GPU.
#   4. resume    benchmarks/resume_check.py: a LoRA run SIGKILLed after its first
#                checkpoint resumes to the same result as an uninterrupted one (CUDA:
#                also with runtime.deterministic, which must match exactly).
#   5. ddp       benchmarks/ddp_check.py: LoRA on every visible GPU (runtime.devices,
#                NCCL) against one process on the same global batch: the adapters must
#                match, the speed-up is reported, and the multi-GPU run SIGKILLed after
#                a checkpoint must resume to its uninterrupted result (CUDA: ViT-B-16,
#                fp32, batch 32 per GPU; CPU: the tiny model on 2 gloo processes).
#                SKIP with one GPU.
#   6. summary   a markdown table (part, setting, result, numbers, pass/fail), printed
#                and written to $OUT/summary.md, beside each part's raw JSON and log.
#
# --quick: the smoke pipeline in bf16 only and only as far as LoRA's evaluation (the
# whole profile takes ~45 s on 2 CPU cores), the fewest benchmark steps and repeats, a
# 20-step resume check, a 12-step ddp check. It is what tests/test_gpu_check.py runs.
#
# Without CUDA the script runs as --cpu and says so. Exit code: 0 when no part failed.

set -euo pipefail

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

CPU=0
QUICK=0
IMAGES=""
while (($#)); do
  case "$1" in
    --cpu) CPU=1 ;;
    --quick) QUICK=1 ;;
    --images) IMAGES=${2:?--images needs a folder}; shift ;;
    --images=*) IMAGES=${1#--images=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Relative paths the user gave are relative to where they ran the script.
OUT_DIR=$(realpath -m "${OUT:-$ROOT/benchmarks/results/gpu_check}")
IMAGES=$(realpath -m "${IMAGES:-$ROOT/../shared/datasets/caltech101-mini}")
mkdir -p "$OUT_DIR"
cd "$ROOT"

# The project's venv when there is one (this checkout), else whatever python is first.
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=$(command -v python3 || command -v python); fi
export KEDRO_DISABLE_TELEMETRY=1
export PYTHONUNBUFFERED=1

ROWS="$OUT_DIR/rows.tsv"
: >"$ROWS"
FAILED=0
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

if ((CPU == 0)) && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "gpu_check: CUDA is not available here; running the CPU-safe parts on the CPU (as --cpu)."
  CPU=1
fi
if ((CPU)); then DEVICE=cpu; else DEVICE=cuda; fi
echo "gpu_check: device $DEVICE, quick $QUICK, results in $OUT_DIR"

now() { echo "$EPOCHREALTIME"; }

# record PART SETTING RESULT NUMBERS STATUS: one row of the summary table.
record() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$ROWS"
  if [[ "$5" == FAIL ]]; then FAILED=1; fi
  echo "gpu_check: $1 [$2]: $5 - $3; $4"
}

# last_json LOG JSON: the last line of LOG that is a JSON object, into JSON (the
# benchmark scripts print their results as one such line after any progress output).
last_json() {
  grep -E '^\{' "$1" | tail -n 1 >"$2" || true
  if [[ -s "$2" ]]; then return 0; fi
  rm -f "$2"  # no results: leave no empty file that looks like one
  return 1
}

# row KIND JSON SETTING: "setting<TAB>result<TAB>numbers<TAB>status" from a part's raw JSON.
row() {
  "$PY" - "$@" <<'PY'
import json, math, sys

kind, path, given = sys.argv[1], sys.argv[2], sys.argv[3]  # given: the caller's setting
d = json.load(open(path))


def num(x, fmt="{:.3g}"):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


if kind == "smoke":
    setting = f"{d['precision']}, {d['device']}"
    m, s = d.get("lora_metrics") or {}, d.get("lora_summary") or {}
    ok = d["exit_code"] == 0 and "top1" in m
    result = (f"exit {d['exit_code']}, lora top1 {num(m.get('top1'))}"
              if ok else f"exit {d['exit_code']}" + ("" if m else ", no lora metrics"))
    numbers = (f"wall {d['wall_seconds']:.1f} s; training {num(s.get('training_seconds'))} s;"
               f" peak {num(s.get('peak_memory_mb'))} MB ({s.get('peak_memory_kind', '?')})")
elif kind == "step":
    setting = (f"{d['model']}, batch {d['batch']}, {d['precision']}, {d['device']}, "
               f"{d['timed_steps']} timed steps")
    ok = d.get("losses_finite", False)
    mfu = d.get("mfu")
    result = ("loss finite" if ok else "loss not finite") + (
        f", MFU {100 * mfu:.1f}% of {d['peak_tflops']:g} TFLOP/s ({d['peak_source']})"
        if mfu is not None else f", MFU n/a: peak {d['peak_source']}")
    numbers = (f"{d['steps_per_s']:.2f} step/s, {d['images_per_s']:.1f} img/s; "
               f"{d['flops_per_step'] / 1e9:.3g} GFLOP/step, {d['achieved_tflops']:.3g} "
               f"TFLOP/s achieved; peak mem {d['peak_memory_mb']:.0f} MB ({d['peak_memory_kind']})")
elif kind == "loader":
    setting = f"{given}, 1 CPU thread"
    ok = d.get("new_img_per_s", 0) > 0 and d.get("old_img_per_s", 0) > 0
    ratio = d["new_img_per_s"] / d["old_img_per_s"] if ok else float("nan")
    result = f"new/old {ratio:.2f}x (its target >= 10x: {'met' if ratio >= 10 else 'missed'})"
    numbers = (f"old {d['old_img_per_s']:.1f} img/s, new {d['new_img_per_s']:.1f} img/s per "
               f"core; one-off decode {d.get('decode_s', float('nan')):.2f} s")
    if "device_img_per_s" in d:
        numbers += (f"; new on {d['device']} (cache there, host draws only): "
                    f"{d['device_img_per_s']:.0f} img/s")
elif kind == "resume":
    setting = (f"{d['model']}, {d.get('device', given)} {d.get('precision', '')}, "
               f"{d['total_steps']} steps, "
               f"checkpoint every {d['checkpoint_every']}"
               + (", deterministic" if d["deterministic"] else ""))
    ok = d.get("passed", False)
    if "error" in d:  # a run failed before there was anything to compare
        result, numbers = f"failed: {d['error']}", "-"
    else:
        failed = [k for k, v in d["checks"].items() if not v]
        result = ("killed, resumed, " + ("identical" if d["exact"] else "within tolerance")
                  if ok else "failed: " + "; ".join(failed))
        numbers = (f"killed at checkpoint step {d['checkpoint_step_at_kill']} of "
                   f"{d['total_steps']}; max abs diff: loss {d['max_loss_diff']:.3g}, adapter "
                   f"{d['max_state_diff']:.3g} ({d['criterion']}); runs "
                   f"{d['straight_seconds']:.0f} s + {d['resumed_seconds']:.0f} s")
elif kind == "ddp":
    backend = "NCCL" if d["device"] == "cuda" else "gloo"
    setting = (f"{d['model']}, {d['processes']} processes ({backend}), global batch "
               f"{d['global_batch']}, {d['precision']}, {d['steps']} steps")
    ok = d.get("passed", False)
    if "error" in d:  # a run failed before there was anything to compare
        result, numbers = f"failed: {d['error']}", "-"
    else:
        failed = [k for k, v in d["checks"].items() if not v]
        result = ("matches one process; killed, resumed, matches" if ok
                  else "failed: " + "; ".join(failed))
        numbers = (f"max rel diff vs one process {d['many_vs_one']['max_relative_diff']:.2g}"
                   f" (rtol {d['rtol']:g}); training {d['one_training_seconds']:.1f} s on 1, "
                   f"{d['many_training_seconds']:.1f} s on {d['processes']} "
                   f"({d['speedup']:.2f}x); killed at checkpoint step "
                   f"{d['checkpoint_step_at_kill']}")
else:
    raise SystemExit(f"unknown kind {kind}")
print(f"{setting}\t{result}\t{numbers}\t{'PASS' if ok else 'FAIL'}")
PY
}

# finish PART SETTING KIND RC LOG JSON: the row of a part from its exit code and JSON
# (SETTING is used when there is no JSON to take the setting from).
finish() {
  local part=$1 setting=$2 kind=$3 rc=$4 log=$5 json=$6 line result numbers status
  if [[ -s "$json" ]] && line=$(row "$kind" "$json" "$setting" 2>>"$log"); then
    IFS=$'\t' read -r setting result numbers status <<<"$line"
    if ((rc != 0)); then status=FAIL; result="exit $rc; $result"; fi
    record "$part" "$setting" "$result" "$numbers" "$status"
  else
    record "$part" "$setting" "exit $rc, no results" "see $(basename "$log")" FAIL
  fi
}

# 1. The smoke pipeline ----------------------------------------------------------------
smoke() {
  local precision=$1 name="smoke_$1"
  local log="$OUT_DIR/$name.log" json="$OUT_DIR/$name.json" copy="$SCRATCH/$name" rc=0
  mkdir -p "$copy"
  # The project as the tests copy it (tests/conftest.py copy_project): no data, no
  # conf/local (a machine's own settings would change what is checked), no venv.
  tar -C "$ROOT" --exclude=__pycache__ --exclude='conf/local/*' -cf - conf src pyproject.toml |
    tar -C "$copy" -xf -
  mkdir -p "$copy/conf/local" "$copy/data"
  local start end
  local -a only=()
  if ((QUICK)); then  # LoRA's evaluation and the nodes it needs: a tenth of the pipeline
    only=(--to-nodes "$("$PY" -c 'import sys, yaml; g = yaml.safe_load(open(sys.argv[1]))
print("synthetic.shots_%(shots)s_seed_%(few_shot_seed)s.evaluate_lora" % g)' \
      "$copy/conf/smoke/globals.yml")")
  fi
  start=$(now)
  (cd "$copy" && "$PY" -m kedro run --env smoke "${only[@]}" \
    --params "runtime.precision=$precision,runtime.device=$DEVICE") >"$log" 2>&1 || rc=$?
  end=$(now)
  # The LoRA node's outputs (conf/base/catalog.yml: adapted_{method}_metrics/_summary).
  "$PY" - "$copy" "$precision" "$DEVICE" "$rc" "$start" "$end" >"$json" 2>>"$log" <<'PY' || true
import json, sys
from pathlib import Path

copy, precision, device, rc, start, end = sys.argv[1:]
out = Path(copy) / "data/07_model_output"
found = {kind: sorted(out.glob(f"*/*/shots_*/lora/{kind}.json")) for kind in ("metrics", "summary")}
print(json.dumps({
    "part": "smoke", "precision": precision, "device": device, "exit_code": int(rc),
    "wall_seconds": float(end) - float(start),
    "lora_metrics": json.loads(found["metrics"][0].read_text()) if found["metrics"] else None,
    "lora_summary": json.loads(found["summary"][0].read_text()) if found["summary"] else None,
    "files": [str(p.relative_to(copy)) for p in found["metrics"] + found["summary"]],
}))
PY
  finish smoke "$precision, $DEVICE" smoke "$rc" "$log" "$json"
  rm -rf "$copy"
}

if ((QUICK)); then
  SMOKE_PRECISIONS=(bf16)
elif ((CPU)); then
  SMOKE_PRECISIONS=(fp32 bf16 fp16)
else
  SMOKE_PRECISIONS=(bf16 fp16)
fi
for precision in "${SMOKE_PRECISIONS[@]}"; do smoke "$precision"; done

# 2. The LoRA step benchmark -----------------------------------------------------------
step() {
  local precision=$1 name="step_$1" rc=0
  local log="$OUT_DIR/$name.log" json="$OUT_DIR/$name.json"
  local -a args=(--device "$DEVICE" --precision "$precision")
  if ((QUICK)); then args+=(--steps 3 --warmup 1); fi
  "$PY" benchmarks/gpu_step.py "${args[@]}" >"$log" 2>&1 || rc=$?
  last_json "$log" "$json" || true
  finish step "$precision, $DEVICE" step "$rc" "$log" "$json"
}

if ((CPU)); then
  step fp32
else
  step bf16
  if ((QUICK == 0)); then step fp16; fi
fi

# 3. The loader benchmark --------------------------------------------------------------
if compgen -G "$IMAGES/*" >/dev/null; then
  log="$OUT_DIR/loader.log" json="$OUT_DIR/loader.json" rc=0
  repeats=5
  if ((QUICK)); then repeats=1; fi
  "$PY" benchmarks/loader_throughput.py "$IMAGES" --repeats "$repeats" --device "$DEVICE" \
    >"$log" 2>&1 || rc=$?
  last_json "$log" "$json" || true
  finish loader "$IMAGES, repeats $repeats" loader "$rc" "$log" "$json"
else
  record loader "$IMAGES" "skipped: no such folder (pass --images DIR)" "-" SKIP
fi

# 4. Resume after a kill ---------------------------------------------------------------
resume() {
  local name=$1 rc=0
  shift
  local log="$OUT_DIR/$name.log" json="$OUT_DIR/$name.json" work="$SCRATCH/$name"
  local -a args=(--device "$DEVICE" --workdir "$work" "$@")
  if ((QUICK)); then args+=(--steps 20 --checkpoint-every 5); fi
  "$PY" benchmarks/resume_check.py "${args[@]}" >"$log" 2>&1 || rc=$?
  last_json "$log" "$json" || true
  # the three runs' own logs, for a failure's cause
  for run in straight killed resumed; do
    if [[ -f "$work/$run.log" ]]; then cp "$work/$run.log" "$OUT_DIR/${name}_$run.log"; fi
  done
  finish resume "$DEVICE${*:+ $*}" resume "$rc" "$log" "$json"
}

resume resume
if ((CPU == 0 && QUICK == 0)); then resume resume_deterministic --deterministic; fi

# 5. Several GPUs (DDP) ----------------------------------------------------------------
ddp() {
  local log="$OUT_DIR/ddp.log" json="$OUT_DIR/ddp.json" rc=0
  local -a args=(--device "$DEVICE" --workdir "$SCRATCH/ddp")
  if ((CPU)); then args+=(--processes 2); fi
  if ((QUICK)); then args+=(--steps 12 --checkpoint-every 4); fi
  "$PY" benchmarks/ddp_check.py "${args[@]}" >"$log" 2>&1 || rc=$?
  last_json "$log" "$json" || true
  # the runs' own logs, for a failure's cause
  for run in one many killed resumed; do
    if [[ -f "$SCRATCH/ddp/$run.log" ]]; then cp "$SCRATCH/ddp/$run.log" "$OUT_DIR/ddp_$run.log"; fi
  done
  local skipped=""
  if [[ -s "$json" ]]; then
    skipped=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("skipped", ""))' "$json" 2>>"$log" || true)
  fi
  if [[ -n "$skipped" ]]; then
    record ddp "$DEVICE" "skipped: $skipped" "-" SKIP
  else
    finish ddp "$DEVICE" ddp "$rc" "$log" "$json"
  fi
}

ddp

# 6. The summary -----------------------------------------------------------------------
{
  echo "## gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  "$PY" - "$DEVICE" "$QUICK" <<'PY' || echo "(environment: unknown)"
import platform, subprocess, sys
from pathlib import Path
import torch
device, quick = sys.argv[1], sys.argv[2] == "1"
if device == "cuda":
    name = torch.cuda.get_device_name(0)
else:
    cpuinfo = Path("/proc/cpuinfo")
    models = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines()
              if l.startswith("model name")] if cpuinfo.exists() else []
    name = f"{models[0] if models else platform.machine()}, {torch.get_num_threads()} threads"
def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
commit = git("rev-parse", "--short", "HEAD") or "unknown"
dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
print(f"device {device} ({name}), torch {torch.__version__}, commit {commit}{dirty}"
      + (", --quick" if quick else ""))
PY
  echo
  echo "| part | setting | result | numbers | pass/fail |"
  echo "|---|---|---|---|---|"
  while IFS=$'\t' read -r part setting result numbers status; do
    # a "|" inside a cell would end it: escape it
    echo "| ${part//|/\\|} | ${setting//|/\\|} | ${result//|/\\|} | ${numbers//|/\\|} | **$status** |"
  done <"$ROWS"
  echo
  echo "PASS for the benchmarks (step, loader) means they ran and gave sane numbers; their"
  echo "speed targets are reported, not enforced. Raw JSON and logs: one file per part here."
} >"$OUT_DIR/summary.md"
rm -f "$ROWS"

echo
cat "$OUT_DIR/summary.md"
if ((FAILED)); then
  echo "gpu_check: some parts FAILED" >&2
  exit 1
fi
