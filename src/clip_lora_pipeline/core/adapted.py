"""CLIP adapted by a backbone method (LoRA, BitFit): the open_clip model with the
method's trainable parts, and a head. Built from an ``adaptation_methods`` entry to be
trained (``core.train``), or from a stored adapter to be evaluated, to predict or to be
merged for the export. It holds no optimiser: predicting builds none."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clip_lora_pipeline.core.adaptation_settings import (
    AdaptationSettings,
    adaptation_settings,
)
from clip_lora_pipeline.core.backbone import check_names
from clip_lora_pipeline.core.embed import image_loader
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import LoadedModel, load_model
from clip_lora_pipeline.core.prompts import encode_text_trimmed, text_plan
from clip_lora_pipeline.core.runtime import (
    autocast,
    no_autocast,
    resolve_device,
    resolve_precision,
)

LOGIT_SCALE = 100.0  # CLIP-LoRA: logits = 100 x cosine
# The stored adapter's layout. 2: tensors named by the method (peft's adapter state dict
# for LoRA, the model's parameter names for BitFit), the whole entry in the config.
ADAPTER_FORMAT = 2
_HEAD = "linear."  # the linear head's tensors in the state


def load_clip(model_params: dict[str, Any], runtime: dict[str, Any]
              ) -> tuple[LoadedModel, torch.dtype]:
    """A freshly loaded model on the runtime's device, and the autocast dtype there."""
    device = resolve_device(runtime.get("device", "auto"))
    loaded = load_model(ModelSpec.from_params(model_params), device)
    return loaded, resolve_precision(device, runtime.get("precision", "auto"))


class AdaptedClip(nn.Module):
    """``backbone``: the open_clip model with the method's parts (for LoRA, peft's
    wrapper of it); ``clip``: the open_clip model inside. Head 'text' = 100 x cosine
    with the class prompts' embeddings (recomputed while the text tower trains),
    'linear' = a linear layer on the normalised image features, initialised from the
    text embeddings. Starts in eval mode."""

    def __init__(self, loaded: LoadedModel, class_names: Sequence[str],
                 settings: AdaptationSettings, dtype: torch.dtype):
        super().__init__()
        self.settings, self.dtype = settings, dtype
        self.class_names = list(class_names)
        self.spec, self.preprocess = loaded.spec, loaded.preprocess
        self.backbone = settings.method.attach(loaded.model, settings.method_settings)
        tokens = settings.method.class_tokens(self.backbone, self.class_names,
                                              settings.train.template, loaded.tokenizer)
        self.register_buffer("class_tokens", tokens.to(self.device), persistent=False)
        # Grouped by length once, from the CPU tokens: no host read in a training step.
        self._text_plan = text_plan(self.clip, tokens).to(self.device)
        # A frozen text tower gives the same class embeddings every step: computed once.
        self.text_trains = any(p.requires_grad for n, p in self.clip.named_parameters()
                               if not n.startswith("visual."))
        self._frozen_text: torch.Tensor | None = None
        self.linear = self._linear_head() if settings.train.head == "linear" else None
        self.eval()

    # Construction -------------------------------------------------------------------
    @classmethod
    def from_settings(cls, loaded: LoadedModel, class_names: Sequence[str],
                      settings: AdaptationSettings, seed: int,
                      dtype: torch.dtype = torch.float32) -> AdaptedClip:
        """To be trained: ``loaded.model`` (changed in place; load a fresh one each time)
        with the method's parts. ``seed``: the few-shot seed, which is the training
        seed unless the entry sets one (CLIP-LoRA draws the sample and trains from one)."""
        settings = settings.seeded(seed)
        torch.manual_seed(settings.train.seed)  # LoRA's initialisation draws from it
        adapted = cls(loaded, class_names, settings, dtype)
        if settings.method.fits_head_after_loop:  # 2SFS: the loop trains the text head
            adapted.linear = None
        return adapted

    @classmethod
    def from_artifact(cls, adapter: dict[str, Any], model_params: dict[str, Any],
                      runtime: dict[str, Any]) -> AdaptedClip:
        """The model as it ended training, from ``artifact()``'s tensors and config, in
        eval mode. Refuses an adapter trained on another model."""
        config = adapter["config"]
        if config.get("format") != ADAPTER_FORMAT:
            raise ValueError("the adapter was stored by an earlier version of this project, "
                             "in another layout; delete it and re-run training.")
        if config["model"] != model_params:
            raise ValueError(f"the adapter was trained on {config['model']}, but the model "
                             f"parameters now name {model_params}; re-run training for this "
                             "model.")
        settings = adaptation_settings(config["name"], config["method"])
        loaded, dtype = load_clip(model_params, runtime)
        # No seeding: the stored tensors replace what LoRA's initialisation drew.
        adapted = cls(loaded, config["classes"], settings, dtype)
        try:
            adapted.load_state(adapter["tensors"])
        except ValueError as exc:
            raise ValueError(f"{exc}; re-run training for this adapter.") from None
        return adapted

    def artifact(self, model_params: dict[str, Any]) -> dict[str, Any]:
        """What the catalog stores: the trainable tensors, and the config to rebuild."""
        return {"tensors": self.state(),
                "config": {"format": ADAPTER_FORMAT, "name": self.settings.name,
                           "method": self.settings.params(), "model": model_params,
                           "classes": self.class_names}}

    # The model ----------------------------------------------------------------------
    @property
    def clip(self) -> nn.Module:
        return self.settings.method.encoder(self.backbone)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _linear_head(self) -> nn.Linear:
        with torch.no_grad():
            text = self.text_features()
            linear = nn.Linear(text.shape[1], text.shape[0]).to(self.device)
            linear.weight.copy_(text * LOGIT_SCALE)
            linear.bias.zero_()
        return linear

    def _encode_classes(self) -> torch.Tensor:
        text = encode_text_trimmed(self.clip, self.class_tokens, plan=self._text_plan)
        return F.normalize(text.float(), dim=-1)

    def text_features(self) -> torch.Tensor:
        if self.text_trains:
            return self._encode_classes()
        if self._frozen_text is None:
            with torch.no_grad():
                self._frozen_text = self._encode_classes()
        return self._frozen_text

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head logits, plus (training the 'linear' head with an alignment weight) the
        text-alignment logits. ``text``: class embeddings already computed, for many
        batches without training. The heads run in fp32 with autocast off: under bf16
        autocast their matmul would round the logits, enough to tie or flip top-1."""
        return self.head(self.image_features(images), text)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The normalised image features the heads read (fp32)."""
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def head(self, features: torch.Tensor, text: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward`` on features already computed (a loss that also needs them)."""
        aligning = self.training and self.settings.train.text_alignment_weight > 0
        if self.linear is not None and not aligning:
            text = None  # the linear head alone: the text tower's output would go unused
        elif text is None:
            text = self.text_features()
        with no_autocast(features.device):
            text_logits = None if text is None else LOGIT_SCALE * features @ text.float().T
            if self.linear is None:
                return text_logits, None
            return self.linear(features), text_logits

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # Inference ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode without autograd, then the mode it was in. no_grad, not
        inference_mode: a tensor made here (the frozen text tower's cached class
        embeddings) is used by training afterwards, and autograd refuses to save
        inference tensors for backward."""
        training = self.training
        self.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.dtype):
                yield
        finally:
            self.train(training)

    def logits(self, images: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """Head logits of preprocessed images, as evaluation computes them."""
        with self._inference():
            return self(images.to(self.device, non_blocking=True), text)[0].float()

    def predict(self, paths: Sequence[str], transform, batch_size: int = 64,
                num_workers: int = 0) -> np.ndarray:
        """Head logits for image files, in order, decoded by ``num_workers`` loader
        processes (0: by threads here, between batches). Memory stays that of one batch
        however many images, and the class embeddings are computed once."""
        loader = image_loader(pd.DataFrame({"path": list(paths)}), "", transform,
                              self.device, batch_size, num_workers)
        return self.predict_batches(batch for batch, _ in loader)

    def predict_batches(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Head logits for batches of preprocessed images, concatenated."""
        out = []
        with self._inference():
            text = self.text_features() if self.linear is None else None
            for batch in batches:
                out.append(self.logits(batch.to(self.device, non_blocking=True), text))
        return torch.cat(out).cpu().numpy()

    # What is stored -----------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, copied to the CPU: what adapters and checkpoints hold."""
        tensors = dict(self.settings.method.state(self.backbone))
        if self.linear is not None:
            tensors.update({_HEAD + n: p for n, p in self.linear.named_parameters()})
        return {n: t.detach().to("cpu", copy=True).contiguous() for n, t in tensors.items()}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state()``'s tensors back in, onto the model's device."""
        head = {n: t for n, t in tensors.items() if n.startswith(_HEAD)}
        linear = dict(self.linear.named_parameters()) if self.linear is not None else {}
        check_names([_HEAD + n for n in linear], head)
        with torch.no_grad():
            for name, param in linear.items():
                param.copy_(head[_HEAD + name])
        self.settings.method.load_state(
            self.backbone, {n: t for n, t in tensors.items() if n not in head})

    def merged(self) -> nn.Module:
        """A plain open_clip model (a copy) with the adapter merged in, for the export."""
        return self.settings.method.merged(self.backbone)
