"""Image-embedding throughput of the pipeline against the naive loop, and the text
classifier with and without trimming.

    .venv/bin/python benchmarks/embedding_throughput.py --images ../shared/datasets/caltech101-mini

Both image paths encode the same real images with the same model (ViT-B-32, random
weights: speed does not depend on the weights). The naive loop opens, preprocesses and
encodes one image at a time; the pipeline uses ``core.embed.encode_images`` (batched
DataLoader). Each path makes ``--passes`` timed passes over the images, alternating, and
counts its best (medians are printed too). Achieved model GFLOP/s is compared with
sgemm peaks measured in the same run: the one right before and right after each pass,
and the highest of the run. Prints a Markdown block to paste into
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clip_lora_pipeline.core.attention import unfuse_attention
from clip_lora_pipeline.core.embed import encode_images
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import load_model
from clip_lora_pipeline.core.pooled_block import compute_pooled_token_only
from clip_lora_pipeline.core.prompts import build_text_classifier, templates_for
from clip_lora_pipeline.core.sources.classnames import load_class_names
from clip_lora_pipeline.core.sources.image_folder import ImageFolder


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_per_image(model, preprocess, image) -> float:
    """Counted with the fused attention fast path off: FlopCounterMode does not see the
    projections inside torch._native_multi_head_attention and would undercount."""
    batch = preprocess(image).unsqueeze(0)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.encode_image(batch)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return float(counter.get_total_flops())


def model_shaped_matmul_gflops(model, batch_size: int, repeats: int = 10) -> float:
    """sgemm at the MLP shape the vision tower spends most time in."""
    visual = model.visual
    tokens = (visual.grid_size[0] * visual.grid_size[1] + 1) * batch_size
    width = visual.transformer.width
    a, w = torch.randn(tokens, width), torch.randn(4 * width, width)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - start)
    return 2 * tokens * width * 4 * width / best / 1e9


def naive_rate(model, preprocess, paths) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for path in paths:
            model.encode_image(preprocess(load_rgb(path)).unsqueeze(0))
    return len(paths) / (time.perf_counter() - start)


def pipeline_rate(model, preprocess, manifest, root, batch_size, num_workers) -> float:
    start = time.perf_counter()
    encode_images(model, manifest, root, preprocess, torch.device("cpu"),
                  batch_size=batch_size, num_workers=num_workers)
    return len(manifest) / (time.perf_counter() - start)


def _rates(runs: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in runs)


def text_classifier_seconds(model, tokenizer, trim: bool) -> float:
    classes = load_class_names("flowers102")
    templates = templates_for("ensemble", "flowers102")
    start = time.perf_counter()
    build_text_classifier(model, tokenizer, classes, templates, torch.device("cpu"),
                          batch_size=256, trim=trim)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True,
                        help="an image folder (one sub-folder per class)")
    parser.add_argument("--n", type=int, default=256, help="images to encode (>= 64)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers; 0 is what the pipeline picks on CPU")
    parser.add_argument("--passes", type=int, default=3,
                        help="timed passes of each path over the images, alternating")
    parser.add_argument("--skip-text", action="store_true",
                        help="skip the text-classifier timing (several minutes untrimmed)")
    args = parser.parse_args()

    manifest = ImageFolder().index(args.images)
    manifest = manifest.groupby("label").head(-(-args.n // manifest["label"].nunique()))
    manifest = manifest.head(args.n).reset_index(drop=True)
    paths = [args.images / p for p in manifest["path"]]
    # The naive loop uses open_clip's model as created (fused attention), as a notebook
    # would; the pipeline uses the same weights as load_model() prepares them.
    loaded = load_model(ModelSpec(args.model), unfused_attention=False, pooled_token_only=False)
    fused, preprocess = loaded.model, loaded.preprocess
    model = copy.deepcopy(fused)
    unfuse_attention(model)
    compute_pooled_token_only(model)

    open_clip_flops = flops_per_image(fused, preprocess, load_rgb(paths[0]))
    # GFLOP/s counts what the pipeline computes: its last block skips most tokens' work.
    flops = flops_per_image(model, preprocess, load_rgb(paths[0]))
    # Warm-up of both paths (first calls set up kernels; the pipeline's also tunes the
    # allocator, which the naive loop then enjoys too), then timed passes that alternate,
    # so both see the same drift of this VM's speed. Like the sgemm peak (best of ten),
    # each path's rate is its best pass; medians are printed too.
    with torch.inference_mode():
        fused.encode_image(preprocess(load_rgb(paths[0])).unsqueeze(0))
    pipeline_rate(model, preprocess, manifest.head(args.batch_size), args.images,
                  args.batch_size, 0)
    # This VM's speed drifts by up to 20% within a minute, so each pipeline pass is also
    # compared with the sgemm peak measured right before and right after it.
    naive_runs, batched_runs, peaks = [], [], [matmul_peak_gflops()]
    for _ in range(args.passes):
        naive_runs.append(naive_rate(fused, preprocess, paths))
        peaks.append(matmul_peak_gflops())
        batched_runs.append(pipeline_rate(model, preprocess, manifest, args.images,
                                          args.batch_size, args.num_workers))
        peaks.append(matmul_peak_gflops())
    naive, batched = max(naive_runs), max(batched_runs)
    shaped = model_shaped_matmul_gflops(model, args.batch_size)
    shares = [flops * rate / 1e9 / max(peaks[2 * i + 1], peaks[2 * i + 2])
              for i, rate in enumerate(batched_runs)]

    achieved = flops * batched / 1e9
    peak_used = max(peaks)
    print(f"### {args.model} (random weights), {len(manifest)} images from {args.images.name}")
    print(f"- machine: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {sys.version.split()[0]}")
    print(f"- model cost (torch FlopCounterMode): {open_clip_flops / 1e9:.2f} GFLOP per image as "
          f"open_clip runs it, {flops / 1e9:.2f} as the pipeline does (class token alone in "
          "the last block); GFLOP/s below count the latter")
    print(f"- matmul peaks (fp32 2048^3 sgemm, best of 10; at the start, then after each "
          f"naive and each pipeline pass): {_rates(peaks)} GFLOP/s")
    print(f"- matmul at the model's MLP shape (batch {args.batch_size}): {shaped:.1f} GFLOP/s")
    print(f"- naive loop (open, preprocess, encode one at a time): best {naive:.2f} img/s "
          f"(passes: {_rates(naive_runs)})")
    print(f"- pipeline (batch {args.batch_size}, {args.num_workers} worker(s)): best "
          f"{batched:.2f} img/s (passes: {_rates(batched_runs)})")
    print(f"- speed-up: {batched / naive:.2f}x best to best, "
          f"{statistics.median(batched_runs) / statistics.median(naive_runs):.2f}x median to "
          "median (target >= 1.7x)")
    print(f"- share of the peak, each pipeline pass against the larger of the peaks measured "
          f"right before and after it: {', '.join(f'{s:.0%}' for s in shares)}; best "
          f"{max(shares):.0%}, median {statistics.median(shares):.0%} (target >= 75%)")
    print(f"- share of the peak, best pass ({achieved:.1f} GFLOP/s) against the highest peak "
          f"of the run ({peak_used:.1f}): {achieved / peak_used:.0%}; "
          f"{achieved / shaped:.0%} of the model-shaped matmul")
    if not args.skip_text:
        trimmed = text_classifier_seconds(model, loaded.tokenizer, trim=True)
        untrimmed = text_classifier_seconds(model, loaded.tokenizer, trim=False)
        print(f"- text classifier, 102 classes x 80 templates: untrimmed {untrimmed:.2f} s, "
              f"trimmed {trimmed:.2f} s ({untrimmed / trimmed:.1f}x)")


if __name__ == "__main__":
    main()
