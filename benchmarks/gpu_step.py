"""One LoRA training step of the project's adapted model: steps/s, images/s, peak
memory and MFU (model FLOPs utilisation).

    .venv/bin/python benchmarks/gpu_step.py                      # CUDA: ViT-B-16, batch 32
    .venv/bin/python benchmarks/gpu_step.py --device cpu         # CPU: the tiny model
    .venv/bin/python benchmarks/gpu_step.py --model ViT-B-32 --batch 64 --precision fp16

The model is built exactly as training builds it (``load_model`` then
``AdaptedClip.from_settings`` with CLIP-LoRA's default ``lora`` entry, the batch size
set to ``--batch`` so the step is not split into micro-batches), and each step is
``TrainingLoop._step``: zero_grad, forward under autocast, loss, (scaled) backward and
AdamW. Random weights (pretrained None: no download) and random pixels: the speed does
not depend on their values. The text head uses Flowers102's 102 class names with "a
photo of a {}.", recomputed every step as in training. Decoding and augmentation are
left out (benchmarks/loader_throughput.py measures them).

FLOPs of one step (forward + backward; AdamW's elementwise work is not counted, as is
usual for MFU; frozen weights get no weight gradients, so a LoRA step costs less than
3x its forward) are counted once with ``torch.utils.flop_counter.FlopCounterMode``
outside the timed loop. MFU = flops_per_step x steps_per_s / peak FLOP/s, the peak from
``--peak-tflops`` or the table below by GPU name. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clip_lora_pipeline.core.adaptation_settings import adaptation_settings
from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.runtime import (
    resolve_device,
    resolve_precision,
    tune_cpu_allocator,
)
from clip_lora_pipeline.core.sources.classnames import load_class_names
from clip_lora_pipeline.core.train import TrainingLoop

# Vendor datasheet peaks of dense bf16/fp16 tensor-core math, in TFLOP/s, WITHOUT the
# 2:4 structured sparsity that the headline numbers often double (T4 and V100 have no
# bf16: their fp16 peak). The first name contained in torch.cuda.get_device_name()
# wins, so the more specific names come first; a variant not listed (H100 NVL, A10G)
# gets its family's figure, so pass --peak-tflops for it. They are peaks for bf16/fp16
# only: an fp32 run (TF32 or plain fp32 units) gets MFU n/a unless --peak-tflops is given.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H200", 989.0),  # SXM (also GH200); same tensor cores as H100 SXM
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),  # before "L4", which both names contain
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),  # after "A100": "A10" is a prefix of it
    ("T4", 65.0),  # fp16
    ("V100", 125.0),  # fp16, SXM2
)


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None
                ) -> tuple[float | None, str]:
    """The peak to divide by and where it came from."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "none for a CPU (pass --peak-tflops)"
    if dtype == torch.float32:
        return None, "none for fp32 (the table holds bf16/fp16 peaks; pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS:
        if key in name:
            return tflops, f"table: {key} dense bf16/fp16"
    return None, f"{name!r} not in the table (pass --peak-tflops)"


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def sync(device: torch.device) -> None:
    """Wait for the GPU: kernels run asynchronously, so a timer read without it would
    measure how fast the host queues work, not how fast the GPU does it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--model", help=f"open_clip name; default ViT-B-16 on CUDA, "
                        f"{TINY_MODEL} on CPU")
    parser.add_argument("--batch", type=int, help="images per step; default 32 on CUDA, 8 on CPU")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast dtype; auto = bf16 (fp16 without it) on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps; default 50 on CUDA, 10 on CPU")
    parser.add_argument("--warmup", type=int, help="untimed steps first; default 10 on CUDA, 2 on CPU")
    parser.add_argument("--classes", type=int, default=102,
                        help="class names in the text head (Flowers102's, then made-up ones)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("ViT-B-16" if cuda else TINY_MODEL)
    batch = args.batch or (32 if cuda else 8)
    steps = args.steps or (50 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    dtype = resolve_precision(device, args.precision)
    if not cuda:
        tune_cpu_allocator()  # as TrainingLoop.fit does on a CPU

    flowers = load_class_names("flowers102")
    names = (flowers + [f"class {i}" for i in range(len(flowers), args.classes)])[:args.classes]
    # As the lora node builds it; batch_size set so that _step runs one micro-batch.
    settings = adaptation_settings("lora", {"batch_size": batch})
    adapted = AdaptedClip.from_settings(load_model(ModelSpec(model), device), names,
                                        settings, seed=0, dtype=dtype)
    loop = TrainingLoop(adapted)
    adapted.train()

    size = adapted.clip.visual.preprocess_cfg["size"][0]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, len(names), (batch,), generator=generator).to(device)

    # FLOPs of one whole step, counted once, before timing (the counter slows ops down).
    with FlopCounterMode(display=False) as counter:
        loop._step(images, labels)
    flops_per_step = float(counter.get_total_flops())
    # Per op, so a reader can see what was counted: on CUDA SDPA's flash/efficient/cuDNN
    # kernels are; on a CPU its fused kernel (_scaled_dot_product_flash_attention_for_cpu)
    # has no formula in torch's counter, so CPU counts leave attention's matmuls out.
    flops_by_op = {str(op).removeprefix("aten."): int(n)
                   for op, n in counter.get_flop_counts().get("Global", {}).items()}

    for _ in range(warmup):  # kernel selection, allocator growth, lazy inits
        loop._step(images, labels)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss, _correct = loop._step(images, labels)
        losses.append(loss)  # stays on the device: reading it would sync every step
    sync(device)
    seconds = time.perf_counter() - start
    losses = torch.stack(losses).float().cpu().tolist()

    steps_per_s = steps / seconds
    peak, peak_source = peak_tflops(device, dtype, args.peak_tflops)
    achieved_tflops = flops_per_step * steps_per_s / 1e12
    if cuda:
        # absolute: weights, optimizer state and activations of the timed steps
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        memory_kind = "torch.cuda.max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory_kind = "process peak RSS"
    print(json.dumps({
        "part": "step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "model": model,
        "batch": batch,
        "precision": str(dtype).removeprefix("torch."),
        "classes": len(names),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "seconds": seconds,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * batch,
        "flops_per_step": flops_per_step,
        "flops_by_op": flops_by_op,
        "achieved_tflops": achieved_tflops,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": achieved_tflops / peak if peak else None,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": memory_kind,
        "trainable_parameters": loop.trainable_count,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses_finite": all(math.isfinite(x) for x in losses),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
