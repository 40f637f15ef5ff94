"""What each method that trains through the backbone costs: its trainable parameters on
ViT-B-16, and its seconds per training step on ViT-B-32, on this machine.

    .venv/bin/python benchmarks/method_costs.py [--repeats 2] [--methods lora vpt ...]

Every entry of conf/base/parameters_lora.yml's ``adaptation_methods`` (the project's
defaults for each method), built the way training builds it (``AdaptedClip`` on the
project's model: unfused attention, trimmed text tower, class token alone in the last
vision block), with random weights: neither count nor speed depends on them.
  - Trainable parameters: ViT-B-16 and Flowers102's 102 class names, the method's own
    tensors and, where the entry's head is 'linear', the head's, counted apart.
  - Seconds per step: ViT-B-32, batch 32, 102 classes, one optimizer step of the
    training loop (``core.train.TrainingLoop``: the entry's optimiser, loss and, for
    methods with a text head, the class prompts recomputed while the text tower trains)
    on random pixels, so decoding and augmentation are left out. Each method runs in its
    own process (its own peak RSS); the methods take turns, ``--repeats`` rounds, and the
    fastest run of each counts (this VM drifts by 10-20% within minutes). The ratio to
    LoRA's step is taken within the same round.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WARMUP, STEPS = 2, 5
BATCH, CLASSES = 32, 102
# Counts the papers publish for ViT-B/16, where one exists (method entry -> count, source).
PUBLISHED = {
    "lora": (184_320, "CLIP-LoRA (Zanella & Ben Ayed, 2024): 184K, r=2 on q/k/v of both towers"),
    "coop": (8_192, "CoOp (Zhou et al., 2022): 16 context vectors x 512"),
}


def entries() -> dict:
    params = yaml.safe_load((ROOT / "conf/base/parameters_lora.yml").read_text())
    return params["adaptation_methods"]


def _adapted(name: str, model: str):
    from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
    from clip_lora_pipeline.core.adapted import AdaptedClip
    from clip_lora_pipeline.core.model_id import ModelSpec
    from clip_lora_pipeline.core.models import load_model
    from clip_lora_pipeline.core.sources.classnames import load_class_names

    loaded = load_model(ModelSpec(model))
    names = load_class_names("flowers102")[:CLASSES]
    return AdaptedClip.from_settings(loaded, names, adaptation_settings(name, entries()[name]),
                                     seed=0)


def count(name: str) -> dict:
    adapted = _adapted(name, "ViT-B-16")
    head = sum(p.numel() for p in adapted.linear.parameters()) if adapted.linear else 0
    total = sum(p.numel() for p in adapted.trainable_parameters())
    return {"method": name, "trainable": total - head, "head": head}


def step_seconds(name: str) -> dict:
    import torch

    from clip_lora_pipeline.core.runtime import tune_cpu_allocator
    from clip_lora_pipeline.core.train import TrainingLoop

    tune_cpu_allocator()
    adapted = _adapted(name, "ViT-B-32")
    loop = TrainingLoop(adapted)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, 224, 224, generator=generator)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    adapted.train()
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        loss, _ = loop._step(images, labels)
        float(loss)  # wait for the step to finish
    return {"method": name, "seconds": (time.perf_counter() - start) / STEPS,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_process(kind: str, name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, name], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="*", help="entries to run (default: all)")
    args = parser.parse_args()
    if args.one:
        kind, name = args.one
        print(json.dumps(count(name) if kind == "count" else step_seconds(name)))
        return
    names = args.methods or list(entries())
    if "lora" not in names:
        names = ["lora", *names]  # the reference every ratio is taken against
    counts = {n: _in_process("count", n) for n in names}
    rounds = []
    for _ in range(args.repeats):
        rounds.append({n: _in_process("step", n) for n in names})
    print(f"### Methods through the backbone, {time.strftime('%Y-%m-%d')}, "
          f"{args.repeats} rounds")
    print("| entry | trainable on ViT-B-16 (+ head) | published | s / step, ViT-B-32, "
          "batch 32, 102 classes (every round) | vs LoRA, same round (every round) | "
          "peak RSS MB |")
    print("|---|---:|---|---|---|---:|")
    for n in names:
        c, runs = counts[n], [r[n] for r in rounds]
        best = min(runs, key=lambda r: r["seconds"])
        ratios = [r[n]["seconds"] / r["lora"]["seconds"] for r in rounds]
        head = f" (+ {c['head']:,})" if c["head"] else ""
        published = PUBLISHED.get(n)
        published = f"{published[0]:,}: {published[1]}" if published else "—"
        every_run = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        every_ratio = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"| {n} | {c['trainable']:,}{head} | {published} | {best['seconds']:.2f} "
              f"({every_run}) | {min(ratios):.2f}x ({every_ratio}) | "
              f"{max(r['peak_rss_mb'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
