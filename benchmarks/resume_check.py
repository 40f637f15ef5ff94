"""Resume after a kill: a LoRA training run SIGKILLed right after its first checkpoint
resumes from it to the same result as a run that was never interrupted.

    .venv/bin/python benchmarks/resume_check.py                 # CUDA if available
    .venv/bin/python benchmarks/resume_check.py --device cpu
    .venv/bin/python benchmarks/resume_check.py --device cuda --deterministic

Three training runs of the same settings, each in its own process (as a user's runs
would be), on a small generated dataset (``core.sources.synthetic``) with the tiny
random model by default:

1. straight: start to end, uninterrupted (with checkpoints, as the others);
2. killed: the same, SIGKILLed as soon as its first checkpoint folder ``<dir>/last``
   exists (``core.atomic.atomic_dir`` renames it into place complete, so existing means
   settled) and before training ends; no cleanup code runs, as after a power cut or an
   out-of-memory kill;
3. resumed: the same command again on the same checkpoint folder, to the end. It must
   log "resuming from ... at step N", and its history must hold every step 1..total.

Then the resumed run's loss history and adapter tensors (``AdaptedClip.state()``) are
compared with the straight run's. On a CPU they must be identical (training there is
deterministic for a seed). On CUDA, kernels such as attention's backward may add in a
different order from run to run, so they must agree within ``--tolerance`` (max
absolute difference), or exactly with ``--deterministic`` (runtime.deterministic:
deterministic kernels only). Prints one JSON line; exit code 0 when the check passed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# The entry of benchmarks' fast LoRA settings (tests/core/test_train.py uses the same):
# the tiny random model barely moves with CLIP-LoRA's defaults. Dropout > 0 so that the
# check also covers the RNG state a checkpoint must carry.
ENTRY = {"method": "lora", "lr": 5e-3, "batch_size": 16, "eval_every": 20,
         "crop_scale": [0.5, 1.0], "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
DATA = {"num_classes": 6, "images_per_class": 24, "image_size": 32, "seed": 0}
TRAIN_IMAGES = 96  # of the 144; the rest validate


def dataset(root: Path) -> dict:
    """The generated shapes (made once under ``root``; later calls only index them),
    split as tests/core/test_train.py does."""
    from clip_lora_pipeline.core.sources.synthetic import Synthetic

    if not (root / ".synthetic.json").exists():
        Synthetic().prepare(root, **DATA)
    manifest = Synthetic().index(root, **DATA).sample(frac=1.0, random_state=0)
    train, val = manifest.iloc[:TRAIN_IMAGES], manifest.iloc[TRAIN_IMAGES:]
    names = manifest.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    return {"train": ([str(root / p) for p in train["path"]], train["label"].tolist()),
            "val": ([str(root / p) for p in val["path"]], val["label"].tolist()),
            "names": names}


def train(args: argparse.Namespace) -> None:
    """One training run (the child process): fit to the end, or until killed; writes
    its history and adapter tensors to ``args.result`` when it finishes."""
    from safetensors.torch import save_file

    from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
    from clip_lora_pipeline.core.adapted import AdaptedClip
    from clip_lora_pipeline.core.model_id import ModelSpec
    from clip_lora_pipeline.core.models import load_model
    from clip_lora_pipeline.core.runtime import (
        RuntimeSettings,
        resolve_device,
        resolve_precision,
    )
    from clip_lora_pipeline.core.train import TrainingLoop

    # INFO, so the loop's "resuming from ... at step N" reaches stderr for the parent.
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    data = dataset(args.data)
    runtime = RuntimeSettings(device=args.device, precision=args.precision, num_workers=0,
                              deterministic=args.deterministic)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(device, runtime.precision)
    entry = {**ENTRY, "max_steps": args.steps, "checkpoint_every": args.checkpoint_every}
    adapted = AdaptedClip.from_settings(load_model(ModelSpec(args.model), device),
                                        data["names"], adaptation_settings("resume", entry),
                                        seed=1, dtype=dtype)
    result = TrainingLoop(adapted).fit(*data["train"], *data["val"], adapted.preprocess,
                                       args.steps, checkpoint_dir=args.checkpoints,
                                       runtime=runtime)
    args.result.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in adapted.state().items()},
              str(args.result / "state.safetensors"))
    history = result.history.to_dict("records")
    (args.result / "result.json").write_text(json.dumps(
        {"history": history, "steps_done": result.steps_done, "device": str(device),
         "precision": str(dtype).removeprefix("torch."),
         "wall_seconds": result.wall_seconds}))


def child(args: argparse.Namespace, name: str, work: Path) -> list[str]:
    """The command of one training run."""
    return [sys.executable, __file__, "--train", "--data", str(work / "data"),
            "--checkpoints", str(work / f"{name}_checkpoints"),
            "--result", str(work / f"{name}_result"), "--device", args.device,
            "--precision", args.precision, "--model", args.model,
            "--steps", str(args.steps), "--checkpoint-every", str(args.checkpoint_every),
            *(["--deterministic"] if args.deterministic else [])]


def run_to_end(command: list[str], log: Path) -> tuple[float, int]:
    """Seconds and exit code of a run to its end."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, code


def give_up(report: dict, why: str) -> None:
    """A run that failed: the report so far, with the reason and the log's tail."""
    report.update(passed=False, error=why)
    print(json.dumps(report))
    sys.exit(1)


def run_and_kill(command: list[str], log: Path, last: Path, limit_s: float) -> dict:
    """Start the run; SIGKILL it the moment ``last`` appears. Only ``exists()`` is
    polled: ``settled_dir`` may rename a folder (putting back ``last.old``), which must
    not happen under a process that is still writing it."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        start = time.perf_counter()
        while process.poll() is None and not last.exists():
            if time.perf_counter() - start > limit_s:
                break
            time.sleep(0.002)  # steps of the tiny model take milliseconds
        alive = process.poll() is None
        if alive:
            os.kill(process.pid, signal.SIGKILL)
        code = process.wait()
    return {"killed": alive and code == -signal.SIGKILL, "returncode": code,
            "seconds_to_kill": time.perf_counter() - start}


def compare(straight: Path, resumed: Path) -> dict:
    from safetensors.torch import load_file

    a, b = (json.loads((p / "result.json").read_text()) for p in (straight, resumed))
    loss_a = torch.tensor([r["loss"] for r in a["history"]], dtype=torch.float64)
    loss_b = torch.tensor([r["loss"] for r in b["history"]], dtype=torch.float64)
    state_a, state_b = (load_file(str(p / "state.safetensors")) for p in (straight, resumed))
    same_shape = loss_a.shape == loss_b.shape and state_a.keys() == state_b.keys()
    loss_diff = (loss_a - loss_b).abs().max().item() if same_shape else math.inf
    state_diff = max(((state_a[k].double() - state_b[k].double()).abs().max().item()
                      for k in state_a), default=0.0) if same_shape else math.inf
    exact = same_shape and torch.equal(loss_a, loss_b) and all(
        torch.equal(state_a[k], state_b[k]) for k in state_a)
    return {"max_loss_diff": loss_diff, "max_state_diff": state_diff, "exact": exact,
            "steps_logged": [r["step"] for r in b["history"]],
            "device": b["device"], "precision": b["precision"],
            "final_loss": b["history"][-1]["loss"] if b["history"] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--model", default="clip-lora-tiny")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of a whole run")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--deterministic", action="store_true",
                        help="runtime.deterministic (GPU): demand an exact match")
    parser.add_argument("--tolerance", type=float, default=1e-2,
                        help="max absolute difference allowed on CUDA without --deterministic")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--kill-limit", type=float, default=600.0,
                        help="seconds to wait for the first checkpoint before giving up")
    # the child process's own arguments
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        train(args)
        return
    if args.checkpoint_every >= args.steps:
        parser.error("--checkpoint-every must be below --steps, or no kill can land between "
                     "the first checkpoint and the end")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="resume_check-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset(work / "data")  # generated once, before the runs, so none of them times it
    report: dict = {"part": "resume", "model": args.model, "total_steps": args.steps,
                    "checkpoint_every": args.checkpoint_every,
                    "deterministic": args.deterministic, "workdir": str(work)}

    report["straight_seconds"], code = run_to_end(child(args, "straight", work),
                                                  work / "straight.log")
    if code:
        give_up(report, f"the uninterrupted run failed (exit {code}); see straight.log")
    kill = run_and_kill(child(args, "resumed", work), work / "killed.log",
                        work / "resumed_checkpoints" / "last", args.kill_limit)
    report.update(kill)
    state_file = work / "resumed_checkpoints" / "last" / "state.pt"
    report["checkpoint_step_at_kill"] = (
        torch.load(state_file, weights_only=True, map_location="cpu")["step"]
        if state_file.exists() else None)
    report["resumed_seconds"], code = run_to_end(child(args, "resumed", work),
                                                 work / "resumed.log")
    if code:
        give_up(report, f"the resumed run failed (exit {code}); see resumed.log")
    log = (work / "resumed.log").read_text()
    report["resume_logged"] = "resuming from" in log

    report.update(compare(work / "straight_result", work / "resumed_result"))
    cuda = report["device"].startswith("cuda")
    exact_needed = not cuda or args.deterministic
    report["criterion"] = "exact" if exact_needed else f"max abs diff <= {args.tolerance}"
    close = report["exact"] or (not exact_needed and max(
        report["max_loss_diff"], report["max_state_diff"]) <= args.tolerance)
    checks = {
        # alive when killed, with a checkpoint short of the end: training had not ended
        "killed before the end": kill["killed"] and report["checkpoint_step_at_kill"]
        is not None and report["checkpoint_step_at_kill"] < args.steps,
        "resumed from the checkpoint": report["resume_logged"],
        "history covers every step": report["steps_logged"] == list(range(1, args.steps + 1)),
        f"matches the straight run ({report['criterion']})": close,
    }
    report["checks"] = checks
    report["passed"] = all(checks.values())
    del report["steps_logged"]  # all of 1..total when the check above passed
    print(json.dumps(report))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
