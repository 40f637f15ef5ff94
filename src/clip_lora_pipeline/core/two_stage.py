"""Two-stage few-shot adaptation (2SFS; Farina et al., CVPR 2025), as its reference code
(github.com/FarinaMatteo/rethinking_fewshot_vlms, ``fs/twostage.py``) runs it:

1. for ``stage1_fraction`` of the steps, only the LayerNorms of the chosen towers train
   (peft's LN tuning), through the text head (100 x cosine with the class prompts), with
   the entry's AdamW and a cosine schedule over these steps: the training loop does this;
2. for the rest, everything is frozen and a cosine classifier, initialised from the
   class prompts' embeddings by the stage-1 text tower, trains on the stage-1 model's
   features of the same augmented batches the loop would have drawn, with a fresh AdamW
   (the entry's lr and weight decay) and a cosine schedule over these steps.

The classifier is stored as the linear head (100 x its normalised rows, bias 0: the
same logits), so evaluation, ``predict`` and the report use it as any linear head; the
LayerNorms merge into the model's own (the export). Stage 2's batches depend on the
step alone and nothing in it draws randomness: it is not checkpointed, and a resumed
run takes it again from stage 1's last checkpoint to the same result.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_lora_pipeline.core.backbone import SettingError, is_number
from clip_lora_pipeline.core.lora import ENCODERS
from clip_lora_pipeline.core.peft_backbone import PeftBackbone
from clip_lora_pipeline.core.runtime import autocast

_TOWER_PREFIXES = {"vision": ("visual.",), "text": ("transformer.", "ln_final")}


@dataclass(frozen=True)
class TwoStageSettings:
    """Defaults are 2SFS's: LayerNorms of both towers, 60% of the steps in stage 1."""

    encoders: str = "both"
    stage1_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.encoders not in ENCODERS:
            raise SettingError(f"encoders must be one of {ENCODERS}; got {self.encoders!r}.")
        if not (is_number(self.stage1_fraction) and 0 < self.stage1_fraction < 1):
            raise SettingError(f"stage1_fraction must be a number in (0, 1), the share of "
                               f"the steps that tune the LayerNorms; got "
                               f"{self.stage1_fraction!r}.")


def layernorm_names(model: nn.Module, encoders: str) -> list[str]:
    """Qualified names of the LayerNorms of the chosen towers (the reference's
    ``trainable_norm_params``: every one, from ln_pre to ln_post and ln_final)."""
    towers = ["vision", "text"] if encoders == "both" else [encoders]
    prefixes = tuple(p for t in towers for p in _TOWER_PREFIXES[t])
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.LayerNorm) and name.startswith(prefixes)]


class TwoStage(PeftBackbone):
    """2SFS: stage 1 in the training loop (peft's LN tuning), stage 2 in ``after_loop``;
    stored as peft's LN state plus the linear head, merged as the model's own LNs."""

    name = "two_stage"
    Settings = TwoStageSettings
    # The reference's budget and head: 300 iterations per shot, a linear classifier.
    train_defaults = {"iterations_per_shot": 300, "head": "linear"}
    fits_head_after_loop = True

    def peft_config(self, clip: nn.Module, settings: TwoStageSettings):
        from peft import LNTuningConfig

        names = layernorm_names(clip, settings.encoders)
        if not names:
            raise ValueError(f"two_stage: the {settings.encoders} encoder(s) of this model "
                             "have no nn.LayerNorm to tune; pick another method.")
        # A string is matched whole (re.fullmatch); a list would match by suffix, and
        # "transformer.resblocks.0.ln_1" would take the vision tower's block 0 as well.
        return LNTuningConfig(target_modules="|".join(re.escape(n) for n in names))

    def attach(self, clip: nn.Module, settings: TwoStageSettings) -> nn.Module:
        with warnings.catch_warnings():
            # peft cannot read a LayerNorm's in/out sizes and says so per layer; LN
            # tuning only keeps them, unused.
            warnings.filterwarnings("ignore", "Unsupported layer type", UserWarning)
            return super().attach(clip, settings)

    def check_train(self, train: Any) -> None:
        rules = {"head": ("linear", "linear (stage 2 fits the linear head)"),
                 "text_alignment_weight": (0, "0 (stage 1 trains the text head alone)"),
                 "select": ("last", "last (stage 2 fits its head on stage 1's last state)")}
        for key, (value, allowed) in rules.items():
            if getattr(train, key) != value:
                raise SettingError(f"{key} must be {allowed} with method two_stage; got "
                                   f"{getattr(train, key)!r}.")

    def loop_steps(self, settings: TwoStageSettings, total_steps: int) -> int:
        # The reference's int(total x fraction), at least one step for each stage.
        return min(max(int(total_steps * settings.stage1_fraction), 1), total_steps - 1)

    def after_loop(self, adapted: Any, batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]],
                   steps: int) -> tuple[list[dict[str, Any]], int]:
        classifier, rows = fit_classifier(adapted, batches, steps)
        adapted.linear = linear_head(classifier)
        return rows, classifier.numel()


def fit_classifier(adapted: Any, batches: Iterator[tuple[int, torch.Tensor, torch.Tensor]],
                   steps: int) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stage 2: the cosine classifier, from the stage-1 class embeddings, trained on the
    frozen stage-1 model's features of ``batches``; returns it and a history row a step."""
    # imported here: core.adapted imports this module (through the method registry)
    from clip_lora_pipeline.core.adapted import LOGIT_SCALE

    train = adapted.settings.train
    with torch.no_grad():
        classifier = nn.Parameter(adapted.text_features().detach().clone())
    optimizer = torch.optim.AdamW([classifier], lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps,
                                                           eta_min=train.min_lr)
    records, values = [], []
    adapted.eval()  # CLIP has no dropout; the reference's train mode changes nothing
    for step, images, labels in batches:
        with torch.no_grad(), autocast(adapted.device, adapted.dtype):
            features = adapted.clip.encode_image(images)
        features = F.normalize(features.float(), dim=-1)  # the head in fp32, as core.adapted
        logits = LOGIT_SCALE * features @ F.normalize(classifier, dim=-1).T
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        correct = (logits.argmax(1) == labels).sum().float() / len(labels)
        values.append(torch.stack([loss.detach(), correct]))  # read back once, at the end
        records.append({"step": step + 1, "loss": None, "train_accuracy": None,
                        "lr": scheduler.get_last_lr()[0], "val_accuracy": float("nan")})
    for record, (loss, accuracy) in zip(records, torch.stack(values).cpu().tolist()):
        record.update(loss=loss, train_accuracy=accuracy)
    return classifier.detach(), records


def linear_head(classifier: torch.Tensor) -> nn.Linear:
    """The cosine classifier as ``AdaptedClip``'s linear head: on normalised features,
    100 x the normalised rows with bias 0 give the same logits."""
    from clip_lora_pipeline.core.adapted import LOGIT_SCALE

    linear = nn.Linear(classifier.shape[1], classifier.shape[0]).to(classifier.device)
    with torch.no_grad():
        linear.weight.copy_(LOGIT_SCALE * F.normalize(classifier, dim=-1))
        linear.bias.zero_()
    return linear
