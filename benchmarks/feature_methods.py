"""Fit time of every method on cached features, beside LoRA's time per training step.

    .venv/bin/python benchmarks/feature_methods.py [--repeats 2]

Each registered feature method (core.methods.registry) with its default settings is fit
on cached-feature-sized data: 102 classes x 16 shots of 512-d L2-normalised features
(ViT-B/16's width), 4 val images per class, 10 augmented views per train image, and a
text classifier. The features are synthetic clusters, so the accuracies printed only show
that each method fits something, not what it is worth on CLIP features; speed does not
depend on the values. Each fit runs as
the pipeline runs it (``FeatureMethod.fit_timed``: one torch thread). The fastest of
``--repeats`` fits counts (this VM's speed drifts by 10-20%). LoRA's seconds per step
come from one run of benchmarks/lora_throughput.py's case (ours, batch 32, 102 classes,
ViT-B-32 random weights) in a subprocess, measured in the same session.
Targets: every feature method under 30 s, Tip-Adapter under 2 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

CLASSES, SHOTS, VAL_SHOTS, DIM, VIEWS = 102, 16, 4, 512, 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def feature_set():
    from clip_lora_pipeline.core.methods.base import FeatureSet

    rng = np.random.default_rng(0)

    def noise(*shape: int, scale: float) -> np.ndarray:  # of norm ~scale per row
        return scale * rng.normal(size=(*shape, DIM)) / np.sqrt(DIM)

    centres = noise(CLASSES, scale=1.0)
    y, yv = np.repeat(np.arange(CLASSES), SHOTS), np.repeat(np.arange(CLASSES), VAL_SHOTS)
    # Image noise 4x the class signal and text noise 3x: zero-shot gets about a third
    # right and 16 shots carry enough to do better, so the accuracies tell methods apart.
    x = _unit(centres[y] + noise(len(y), scale=4.0))
    views = _unit(x[:, None, :] + noise(len(y), VIEWS, scale=0.5))
    xv = _unit(centres[yv] + noise(len(yv), scale=4.0))
    text = _unit(centres + noise(CLASSES, scale=3.0))
    test_y = np.repeat(np.arange(CLASSES), 10)
    test_x = _unit(centres[test_y] + noise(len(test_y), scale=4.0))
    return FeatureSet(x, y, xv, yv, text, 100.0, views), test_x, test_y


def lora_seconds_per_step() -> float:
    script = Path(__file__).with_name("lora_throughput.py")
    out = subprocess.run([sys.executable, str(script), "--case", "ours", "32", "102"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    return 32 / json.loads(out)["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from clip_lora_pipeline.core.methods.base import accuracy
    from clip_lora_pipeline.core.methods.registry import FEATURE_METHODS

    data, test_x, test_y = feature_set()
    zero_shot = accuracy(data.zero_shot_logits(test_x), test_y)
    print(f"### Methods on cached features: {CLASSES} classes x {SHOTS} shots, {DIM}-d, "
          f"{VIEWS} views, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| method | fit s (best) | every fit s | trainable parameters | test top-1 (synthetic) |")
    print("|---|---:|---|---:|---:|")
    print(f"| zero-shot | 0 | — | 0 | {zero_shot:.3f} |")
    for name, method in FEATURE_METHODS.items():
        times, fitted = [], None
        for _ in range(args.repeats):
            fitted = method.fit_timed(data, method.settings({}))  # as the pipeline fits
            times.append(fitted.fit_seconds)
        top1 = accuracy(method.logits(fitted, test_x), test_y)
        print(f"| {name} | {min(times):.2f} | {', '.join(f'{t:.2f}' for t in times)} | "
              f"{fitted.trainable_parameters:,} | {top1:.3f} |")
    print(f"- LoRA (ours, ViT-B-32, batch 32, 102 classes): {lora_seconds_per_step():.2f} s "
          "per training step; CLIP-LoRA's recipe runs 500 x 16 = 8,000 steps at 16 shots")
    print("- targets: every feature method < 30 s, Tip-Adapter < 2 s")


if __name__ == "__main__":
    main()
