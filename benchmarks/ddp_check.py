"""Several training processes against one (runtime.devices): a LoRA run on N processes
trains the adapter a one-process run does on the same global batch, how much faster it
is, and a killed N-process run resumes to its uninterrupted result.

    .venv/bin/python benchmarks/ddp_check.py                          # CUDA: every visible GPU
    .venv/bin/python benchmarks/ddp_check.py --device cpu --processes 2  # 2 gloo processes

Each run is ``python -m clip_lora_pipeline.core.train_cell --config <cell.yaml>`` (the
training node's own code; with ``runtime.devices`` N it starts N processes with torch's
elastic launcher: NCCL on GPUs, gloo on a CPU), on a generated dataset
(``core.sources.synthetic``) with random weights (no download):

1. one: ``runtime.devices: 1``;
2. many: ``runtime.devices: N``, the same global batch (each process takes 1/N of it);
3. killed: as 2, SIGKILLed (launcher and workers) once its first checkpoint exists,
   then run again to the end: it must resume and match 2.

2 must match 1 within ``--rtol`` as ``tests/core/tiny.assert_close`` measures it
(|a - b| <= rtol x (max |b| + |b|) per tensor): default 1e-3 on a CPU, 1e-2 on CUDA.
The two sum the batch's gradients in another order, and AdamW turns the rounding of
near-zero gradients (LoRA's A of the key projections) into whole steps, so the gap
grows with the steps: 6.5e-5 after 12 steps on the CPU here, while processes stepping
on their own shares (no gradient sum) give ~1. On a CPU 3 must match 2 exactly; on
CUDA, where kernels may sum in another order from run to run, within ``--rtol``. fp32
is the default precision here, so that the split of the batch is compared and not
bf16's rounding (cuDNN's patch-embedding convolution may still use TF32 on CUDA).
Speed: each run's training seconds (the summary's, rank 0's; model loading and process
start-up excluded, the first steps' warm-up included) and the speed-up of N over one.
Prints one JSON line; exit code 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

DATA = {"num_classes": 8, "images_per_class": 40, "image_size": 64, "seed": 0}
TRAIN_IMAGES = 256  # of the 320; the rest validate


def write_cell(work: Path, args: argparse.Namespace, name: str, devices: int) -> Path:
    """The dataset (made once) and the config of one run, in ``work``."""
    from clip_lora_pipeline.core.sources.synthetic import Synthetic

    data = work / "data"
    if not (data / ".synthetic.json").exists():
        Synthetic().prepare(data, **DATA)
    manifest = Synthetic().index(data, **DATA).sample(frac=1.0, random_state=0)
    tables = {"manifest": manifest, "train": manifest.iloc[:TRAIN_IMAGES],
              "val": manifest.iloc[TRAIN_IMAGES:]}
    for key, frame in tables.items():
        frame.to_parquet(work / f"{key}.parquet")
    entry = {"method": "lora", "lr": 5e-3, "max_steps": args.steps, "batch_size": args.batch,
             "eval_every": args.steps // 2, "checkpoint_every": args.checkpoint_every,
             "crop_scale": [0.5, 1.0], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    config = {"model": {"name": args.model, "pretrained": None, "checkpoint": None},
              "runtime": {"device": args.device, "precision": args.precision,
                          "devices": devices},
              "adaptation": "lora", "method": entry, "root": str(data),
              **{key: str(work / f"{key}.parquet") for key in tables},
              "shots": None, "seed": 1, "output": str(work / name)}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "clip_lora_pipeline.core.train_cell", "--config", str(config)]


def run_to_end(config: Path, log: Path) -> int:
    with log.open("w") as out:
        return subprocess.run(command(config), stdout=out, stderr=subprocess.STDOUT).returncode


def run_and_kill(config: Path, log: Path, checkpoints: Path, limit_s: float) -> dict:
    """Start the run; SIGKILL its whole process group the moment a checkpoint exists."""
    with log.open("w") as out:
        process = subprocess.Popen(command(config), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        start = time.perf_counter()
        while process.poll() is None and not list(checkpoints.glob("*/last")):
            if time.perf_counter() - start > limit_s:
                break
            time.sleep(0.01)
        alive = process.poll() is None
        if alive:
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
    states = list(checkpoints.glob("*/last/state.pt"))
    step = torch.load(states[0], weights_only=True)["step"] if states else None
    return {"killed": alive and code == -signal.SIGKILL, "checkpoint_step_at_kill": step}


def result(folder: Path) -> dict:
    from safetensors.torch import load_file

    summary = json.loads((folder / "summary.json").read_text())
    history = pd.read_parquet(folder / "history.parquet")
    return {"tensors": load_file(str(folder / "adapter.safetensors")), "summary": summary,
            "loss": torch.tensor(history["loss"].to_numpy(), dtype=torch.float64)}


def needed_rtol(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The smallest rtol at which ``tests/core/tiny.assert_close`` passes."""
    actual, expected = actual.double(), expected.double()
    scale = (expected.abs().max() + expected.abs()).clamp_min(1e-30)
    return float(((actual - expected).abs() / scale).max())


def difference(a: dict, b: dict) -> dict:
    """How far ``a``'s adapter is from ``b``'s (``needed_rtol``, the largest over the
    tensors), whether they are identical, and the largest gap of their loss curves."""
    relative = max(needed_rtol(a["tensors"][k], v) for k, v in b["tensors"].items())
    exact = all(torch.equal(a["tensors"][k], v) for k, v in b["tensors"].items())
    return {"max_relative_diff": relative, "exact": exact,
            "max_loss_diff": float((a["loss"] - b["loss"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--processes", type=int,
                        help="N; default every visible GPU on CUDA, 2 on a CPU")
    parser.add_argument("--model", help="default ViT-B-16 on CUDA, clip-lora-tiny on a CPU")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, help="the global batch; default 32 x N on "
                        "CUDA, 16 on a CPU")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--rtol", type=float, help="default 1e-3 on a CPU, 1e-2 on CUDA")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--kill-limit", type=float, default=600.0)
    args = parser.parse_args()

    from clip_lora_pipeline.core.runtime import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    args.device = "cuda" if cuda else "cpu"
    args.processes = args.processes or (torch.cuda.device_count() if cuda else 2)
    args.model = args.model or ("ViT-B-16" if cuda else "clip-lora-tiny")
    args.batch = args.batch or (32 * args.processes if cuda else 16)
    rtol = args.rtol or (1e-2 if cuda else 1e-3)
    report = {"part": "ddp", "device": args.device, "processes": args.processes,
              "model": args.model, "precision": args.precision, "global_batch": args.batch,
              "steps": args.steps, "rtol": rtol}
    if args.processes < 2:
        report.update(skipped=f"{args.processes} process(es): nothing to compare (one "
                      "GPU visible? pass --processes, or run on a machine with more)")
        print(json.dumps(report))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ddp_check-"))
    work.mkdir(parents=True, exist_ok=True)
    configs = {name: write_cell(work, args, name, devices) for name, devices in
               (("one", 1), ("many", args.processes), ("killed", args.processes))}
    for name in ("one", "many"):
        if run_to_end(configs[name], work / f"{name}.log"):
            report.update(passed=False, error=f"the {name} run failed; see {work}/{name}.log")
            print(json.dumps(report))
            sys.exit(1)
    report.update(run_and_kill(configs["killed"], work / "killed.log",
                               work / "killed" / "checkpoints", args.kill_limit))
    code = run_to_end(configs["killed"], work / "resumed.log")
    report["resume_logged"] = "resuming from" in (work / "resumed.log").read_text()

    one, many = result(work / "one"), result(work / "many")
    seconds = {name: r["summary"]["training_seconds"] for name, r in (("one", one),
                                                                     ("many", many))}
    report.update({f"{name}_training_seconds": s for name, s in seconds.items()},
                  speedup=seconds["one"] / seconds["many"],
                  many_vs_one=difference(many, one))
    checks = {f"N processes match one (rtol {rtol:g})":
              report["many_vs_one"]["max_relative_diff"] <= rtol}
    if code == 0:
        report["resumed_vs_many"] = difference(result(work / "killed"), many)
        resumed_ok = (report["resumed_vs_many"]["exact"] if not cuda
                      else report["resumed_vs_many"]["max_relative_diff"] <= rtol)
    else:
        resumed_ok = False
    checks.update({
        "killed before the end": report["killed"] and report["checkpoint_step_at_kill"]
        is not None and report["checkpoint_step_at_kill"] < args.steps,
        "resumed from the checkpoint": report["resume_logged"],
        "resumed matches the uninterrupted run" + ("" if cuda else " exactly"): resumed_ok})
    report.update(checks=checks, passed=all(checks.values()), workdir=str(work))
    print(json.dumps(report))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
