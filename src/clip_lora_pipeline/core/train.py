"""The training loop for an ``AdaptedClip`` (LoRA, BitFit, CoOp): AdamW or SGD on its
trainable tensors, a cosine schedule (after a warm-up, ``core.optimization``), a gradient
scaler under fp16, validation every N steps, and a checkpoint (``core.checkpoints``)
every N steps.

Deterministic on CPU for a seed; an interrupted run resumes from its last checkpoint to
the same result as an uninterrupted one. Batches come from ``core.train_inputs``
(shuffled epochs with a partial last batch, each sample augmented from its own seed).
Nothing in a step reads a value back from the GPU: the step's loss and accuracy stay on
the device until the loop needs them (``StepLog``). An fp16 run's gradient scaler still
checks for infinite gradients once per step, as ``GradScaler`` does. On several
processes (``core.distributed``) each takes its share of every batch, the gradients are
summed across them before the optimizer step, and rank 0 alone writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from clip_lora_pipeline.core.adapted import AdaptedClip
from clip_lora_pipeline.core.augment import Augmentation
from clip_lora_pipeline.core.batches import (
    EpochBatches,
    batches_per_epoch,
    micro_batches,
)
from clip_lora_pipeline.core.checkpoints import (
    Checkpoint,
    CheckpointStore,
    Progress,
    restore_rng,
    rng_state,
)
from clip_lora_pipeline.core.distributed import GradientSum, Ranks
from clip_lora_pipeline.core.durations import Pace, duration
from clip_lora_pipeline.core.errors import UserError
from clip_lora_pipeline.core.generated import GeneratedBatch, GeneratedImages
from clip_lora_pipeline.core.optimization import build_optimizer, build_scheduler
from clip_lora_pipeline.core.runtime import (
    PeakMemory,
    RuntimeSettings,
    deterministic_algorithms,
    resolve_num_workers,
    tune_cpu_allocator,
)
from clip_lora_pipeline.core.train_inputs import (
    InputSettings,
    TrainingBatches,
    Validation,
)
from clip_lora_pipeline.core.training_step import StepLog, training_loss

logger = logging.getLogger(__name__)


class TrainingError(UserError, ValueError):
    """A training run that cannot go on as asked."""


@dataclass
class TrainResult:
    history: pd.DataFrame
    trainable_parameters: int
    wall_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    best_step: int
    best_val_accuracy: float
    stopped_early: bool
    steps_done: int
    selected: str  # which state the model holds now: "last" or "best_val"
    selected_step: int


LOG_EVERY = 10
SLOW_SECONDS = 3600  # an estimate above this on CPU comes with the quicker settings


class TrainingLoop:
    """Trains ``adapted`` in place, with the training settings it was built with;
    ``ranks``: this process's place in a multi-process run (default: the process group
    it has joined, if any)."""

    def __init__(self, adapted: AdaptedClip, ranks: Ranks | None = None):
        self.adapted, self.settings = adapted, adapted.settings.train
        params = adapted.trainable_parameters()
        if not params:
            raise TrainingError("nothing to train: the chosen encoders have no such parameters.")
        self.trainable_count = sum(p.numel() for p in params)
        self.optimizer = build_optimizer(params, self.settings)
        self.scaler = torch.amp.GradScaler(adapted.device.type,
                                           enabled=adapted.dtype == torch.float16)
        self.ranks = ranks or Ranks.current()
        self.ranks.start_together(params, self.settings.seed or 0)
        self.sum_gradients = GradientSum(
            self.ranks, [p for group in self.optimizer.param_groups for p in group["params"]])
        cfg = adapted.clip.visual.preprocess_cfg
        self.augmentation = Augmentation(cfg["size"][0], self.settings.crop_scale,
                                         tuple(cfg["mean"]), tuple(cfg["std"]))

    def _settings_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.settings)))

    def _resume(self, store: CheckpointStore | None, scheduler) -> Progress:
        """A fresh start, or where the checkpoint in ``store`` left off."""
        if store is None or not self.ranks.writer_first(store.exists):
            return Progress(best=self.adapted.state())
        if store.settings() != self._settings_json():
            raise TrainingError(
                f"checkpoint {store.folder} was made with other training settings; delete it "
                "to start afresh, or restore the settings to resume.")
        saved = store.load()
        try:
            self.adapted.load_state(saved.trainable)
        except ValueError as exc:
            raise TrainingError(f"checkpoint {store.folder}: {exc}; delete it to start "
                                "afresh.") from None
        state = saved.state
        self.optimizer.load_state_dict(state.pop("optimizer"))
        scheduler.load_state_dict(state.pop("scheduler"))
        scaler = state.pop("scaler")
        if scaler:  # only fp16 runs have one; a run in another precision starts its own
            self.scaler.load_state_dict(scaler)
        restore_rng(self.ranks.own(state.pop("rng"), f"checkpoint {store.folder}"),
                    self.adapted.device)
        logger.info("resuming from %s at step %d", store.folder, state["step"])
        return Progress(best=saved.best, **state)

    def _step(self, images: torch.Tensor, labels: torch.Tensor,
              generated: GeneratedBatch | None = None, batch_size: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; its mean loss and correct count, on the device.
        ``batch_size``: the global batch, of which ``labels`` are this process's share."""
        s = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = torch.zeros((), device=labels.device), 0
        for chunk, share in micro_batches(len(labels), s.batch_size // s.grad_accumulation,
                                          batch_size):
            loss, hits = training_loss(self.adapted, images[chunk], labels[chunk],
                                       generated and generated.chunk(chunk))
            self.scaler.scale(loss * share).backward()
            loss_sum, correct = loss_sum + loss.detach() * share, correct + hits
        loss_sum, correct = self.sum_gradients(loss_sum, correct)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, correct

    def _checkpoint(self, store: CheckpointStore, run: Progress, scheduler) -> None:
        """Rank 0 writes, with every process's RNG state; the others wait for it."""
        state = {"optimizer": self.optimizer.state_dict(),
                 "rng": self.ranks.gather(rng_state(self.adapted.device)),
                 "scheduler": scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 **run.state()}
        if self.ranks.writer:
            store.save(Checkpoint(self.adapted.state(), run.best, state), self._settings_json())
        self.ranks.barrier()

    def fit(self, train_paths: Sequence[str], train_labels: Sequence[int],
            val_paths: Sequence[str], val_labels: Sequence[int], eval_transform,
            total_steps: int, checkpoint_dir: Path | None = None,
            runtime: RuntimeSettings | None = None, quicker: str | None = None,
            generated: GeneratedImages | None = None) -> TrainResult:
        """Train for ``total_steps`` optimizer steps and keep the state ``select`` names.
        With ``checkpoint_dir``, a run that was interrupted resumes from its last
        checkpoint there. ``runtime``: loader workers, the pixel cache's size, and
        whether GPU kernels must be deterministic. After its first steps the loop logs
        how long the rest will take; ``quicker`` (the settings to change, named as the
        caller knows them) is logged too when that is over an hour on CPU. ``generated``:
        the training images' generated variants, drawn into the batches."""
        runtime = runtime or RuntimeSettings()
        device, s = self.adapted.device, self.settings
        if device.type == "cpu":
            tune_cpu_allocator()
        memory = PeakMemory(device).start()
        workers = resolve_num_workers(runtime.num_workers, device)
        inputs = TrainingBatches(
            train_paths, train_labels, self.augmentation,
            EpochBatches(len(train_paths), s.batch_size, s.seed), device,
            InputSettings(workers, runtime.pixel_cache_mb), generated, self.ranks)
        val = Validation(self.adapted, val_paths, val_labels, eval_transform,
                         workers, runtime.pixel_cache_mb, ranks=self.ranks)
        # A method may take the last steps itself, after the loop (2SFS's second stage).
        loop_steps = self.adapted.settings.method.loop_steps(
            self.adapted.settings.method_settings, total_steps)
        scheduler = build_scheduler(self.optimizer, s, loop_steps,
                                    batches_per_epoch(len(train_paths), s.batch_size))
        store = CheckpointStore(checkpoint_dir / "last") if checkpoint_dir else None
        run = self._resume(store, scheduler)
        self.ranks.agree(run.step, "the step they resume from (several machines: is the "
                         "checkpoint folder on storage that all of them see?)")
        with deterministic_algorithms(runtime.deterministic):
            seconds = self._run(run, inputs, val, scheduler, store, loop_steps, quicker)
            self.adapted.eval()
            if s.select == "best_val":
                self.adapted.load_state(run.best)
            if loop_steps < total_steps:
                seconds += self._after_loop(run, inputs, val, total_steps)
        return self._result(run, seconds, memory)

    def _after_loop(self, run: Progress, inputs: TrainingBatches, val: Validation,
                    total_steps: int) -> float:
        """The method's own last steps (``BackboneMethod.after_loop``), then validation;
        deterministic, so not checkpointed: a resumed run takes them again."""
        start = time.perf_counter()
        rows, trained = self.adapted.settings.method.after_loop(
            self.adapted, inputs.steps(run.step, total_steps), total_steps - run.step)
        run.history.extend(rows)
        run.step, self.trainable_count = total_steps, self.trainable_count + trained
        if self.settings.eval_every:
            run.history[-1]["val_accuracy"] = accuracy = val.accuracy()
            run.observe(accuracy, self.adapted.state, None)
        return time.perf_counter() - start

    def _run(self, run: Progress, inputs: TrainingBatches, val: Validation, scheduler,
             store: CheckpointStore | None, total_steps: int, quicker: str | None) -> float:
        s, log, pace = self.settings, StepLog(run.history), Pace()
        start = time.perf_counter() - run.elapsed
        self.adapted.train()
        bar = tqdm(total=total_steps, initial=run.step, desc=f"Training {s.method}", unit="step",
                   disable=not self.ranks.writer)
        tick = time.perf_counter()
        for step, images, labels, *generated in inputs.steps(run.step, total_steps):
            size = inputs.batches.size(step)  # the global batch, of which labels are a share
            share = {"batch_size": size} if self.ranks.world > 1 else {}
            loss, correct = self._step(images, labels, *generated, **share)
            scheduler.step()
            run.step = step + 1
            if (per_step := pace.add(time.perf_counter() - tick)) is not None:
                self._announce(per_step, total_steps - run.step, quicker)
            log.add({"step": run.step, "loss": math.nan, "train_accuracy": math.nan,
                     "lr": scheduler.get_last_lr()[0], "val_accuracy": math.nan},
                    loss, correct, size)
            done = run.step == total_steps
            evaluating = bool(s.eval_every) and (run.step % s.eval_every == 0 or done)
            if evaluating:
                log.flush()["val_accuracy"] = accuracy = val.accuracy()
                run.observe(accuracy, self.adapted.state, s.patience)
            done = done or run.stopped_early
            saving = store is not None and (run.step % s.checkpoint_every == 0 or done)
            if saving or evaluating or run.step % LOG_EVERY == 0:
                last = log.flush()
                bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['train_accuracy']:.2f}")
            bar.update(1)
            if saving:
                run.elapsed = time.perf_counter() - start
                self._checkpoint(store, run, scheduler)
            if run.stopped_early:
                break
            tick = time.perf_counter()
        log.flush()
        bar.close()
        return time.perf_counter() - start

    def _announce(self, per_step: float, steps_left: int, quicker: str | None) -> None:
        device, left = self.adapted.device.type, per_step * steps_left
        validation = (f", plus validation every {self.settings.eval_every} steps"
                      if self.settings.eval_every else "")
        logger.info("Training %s: about %s for the %d steps left on %s (%.2f s a step%s).",
                    self.settings.method, duration(left), steps_left, device, per_step,
                    validation)
        if device == "cpu" and left > SLOW_SECONDS and quicker:
            logger.warning("Over an hour on CPU; for a quicker run, %s.", quicker)

    def _result(self, run: Progress, seconds: float, memory: PeakMemory) -> TrainResult:
        best_val = self.settings.select == "best_val"
        return TrainResult(
            history=pd.DataFrame(run.history),
            trainable_parameters=self.trainable_count,
            wall_seconds=seconds,
            peak_memory_mb=memory.peak_mb(),
            peak_memory_kind=memory.kind,
            best_step=run.best_step,
            best_val_accuracy=run.best_acc if run.best_acc >= 0 else math.nan,
            stopped_early=run.stopped_early,
            steps_done=run.step,
            selected="best_val" if best_val else "last",
            selected_step=run.best_step if best_val else run.step,
        )
