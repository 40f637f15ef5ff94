"""Prompt sets and the text classifier, with text encoding trimmed to the prompts' length."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from tqdm.auto import tqdm

from clip_lora_pipeline.core.attention import is_marked_causal
from clip_lora_pipeline.core.errors import SettingsError

SIMPLE_TEMPLATES = ("a photo of a {}.",)

# Per-dataset templates in the style of the CLIP paper's prompt engineering; for the
# datasets added with CoOp's protocol, the per-dataset templates of CoOp / Tip-Adapter
# (ImageNet: Tip-Adapter's 7-template ensemble). CLIP-LoRA itself prompts every dataset
# with "a photo of a {}." (the 'simple' set).
DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "imagenet": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                 "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                 "a photo of the small {}."),
    "sun397": ("a photo of a {}.",),
    "stanford_cars": ("a photo of a {}.",),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.",),
    "ucf101": ("a photo of a person doing {}.",),
    "flowers102": ("a photo of a {}, a type of flower.",),
    "eurosat": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."),
    "dtd": ("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
            "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
            "a photo of the {} thing.", "a photo of the {} object."),
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "food101": ("a photo of {}, a type of food.",),
    "cub200": ("a photo of a {}, a type of bird.",),
    "circuits": ("a circuit diagram of {}",),  # the low-resource paper's zero-shot/circuit.py
    "caltech101": ("a photo of a {}.", "a painting of a {}.", "a plastic {}.",
                   "a sculpture of a {}.", "a sketch of a {}.", "a tattoo of a {}.",
                   "a toy {}.", "a rendition of a {}.", "a embroidered {}.",
                   "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
                   "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
                   "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.",
                   "the plastic {}.", "a sculpture of the {}.", "a sketch of the {}.",
                   "a tattoo of the {}.", "the toy {}.", "a rendition of the {}.",
                   "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
                   "the plushie {}.", "the origami {}.", "art of the {}.",
                   "graffiti of the {}.", "a drawing of the {}.", "a doodle of the {}."),
    "imagenette": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
    "synthetic": ("a picture of a {}.", "a drawing of a {}."),
}


class PromptError(SettingsError):
    """A prompt set is unknown or malformed."""


def has_dataset_templates(source: str | None) -> bool:
    """Whether the ``dataset`` prompt set has templates of its own for ``source``."""
    return source in DATASET_TEMPLATES


def templates_for(prompt_set: str | Sequence[str], source: str) -> list[str]:
    """Templates for a prompt set name ('simple', 'ensemble', 'dataset') or a custom list."""
    if not isinstance(prompt_set, str):
        templates = list(prompt_set)
        bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
        if not templates or bad:
            raise PromptError(
                f"a custom prompt set is a list of templates with one '{{}}' each; bad: {bad}"
            )
        return templates
    if prompt_set == "simple":
        return list(SIMPLE_TEMPLATES)
    if prompt_set == "ensemble":
        return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    if prompt_set == "dataset":
        return list(DATASET_TEMPLATES.get(source, SIMPLE_TEMPLATES))
    raise PromptError(
        f"unknown prompt set {prompt_set!r}: use simple, ensemble, dataset, or a list of "
        "templates such as ['a photo of a {}.']"
    )


def can_trim(model: torch.nn.Module) -> bool:
    """Trimming is exact for open_clip's CLIP text tower: causal mask, pooling at EOT."""
    return (
        isinstance(model, open_clip.CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def end_of_text_lengths(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per prompt: its tokens up to and including its end-of-text token."""
    if model.text_pool_type == "argmax":
        eot = tokens.argmax(dim=-1)
    else:
        eot = (tokens == model.text_eos_id).int().argmax(dim=-1)
    return eot + 1


# A group of prompts costs a pass of the tower's kernels on top of its tokens, and small
# groups run inefficient matmuls: count it as this many tokens. Set from LoRA training
# steps on CPU (benchmarks/lora_throughput.py): at 16, ten class names were split 9 + 1
# and training got slower; at 64 they stay one group and 102 names become two.
GROUP_OVERHEAD_TOKENS = 64
MAX_LENGTH_GROUPS = 3


def length_groups(lengths: Sequence[int], max_groups: int = MAX_LENGTH_GROUPS,
                  overhead: int = GROUP_OVERHEAD_TOKENS) -> list[tuple[np.ndarray, int]]:
    """Split prompts into at most ``max_groups`` groups of similar length, each trimmed
    to its own longest prompt, so that the fewest positions are computed.

    Returns (indices, length) per group, shortest first. Exhaustive over cut points
    between the distinct lengths: prompts have few distinct lengths.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    ordered = lengths[order]
    distinct = np.unique(ordered)
    best_cost, best_cuts = None, ()
    for n_cuts in range(min(max_groups, len(distinct))):
        for cuts in combinations(distinct[:-1].tolist(), n_cuts):
            bounds = [*cuts, int(distinct[-1])]
            counts = np.diff([0, *np.searchsorted(ordered, bounds, side="right")])
            cost = int((counts * np.asarray(bounds)).sum()) + overhead * len(bounds)
            if best_cost is None or cost < best_cost:
                best_cost, best_cuts = cost, tuple(bounds)
    ends = np.searchsorted(ordered, best_cuts, side="right")
    starts = np.concatenate([[0], ends[:-1]])
    return [(order[a:b], int(bound)) for a, b, bound in zip(starts, ends, best_cuts) if b > a]


@dataclass(frozen=True)
class TextPlan:
    """How ``encode_text_trimmed`` groups a fixed batch of prompts (``text_plan``).

    ``groups``: per group, its rows of the batch and the length they are trimmed to;
    the rows are None where one group holds every prompt in order. ``restore`` puts the
    concatenated groups back in prompt order (None with one group). ``size``: prompts.
    """

    groups: tuple[tuple[torch.Tensor | None, int], ...]
    restore: torch.Tensor | None
    size: int

    def to(self, device: torch.device | str) -> TextPlan:
        """The plan with its index tensors on ``device``, where the tokens will be."""
        def move(index: torch.Tensor | None) -> torch.Tensor | None:
            return None if index is None else index.to(device)
        return TextPlan(tuple((move(rows), n) for rows, n in self.groups),
                        move(self.restore), self.size)


def text_plan(model: torch.nn.Module, tokens: torch.Tensor) -> TextPlan:
    """The length groups of ``tokens`` for ``encode_text_trimmed(..., plan=)``.

    Reads the tokens on the host: compute it once, from CPU tokens, for prompts that are
    encoded again and again (the class prompts of every training step), and move it
    with ``.to(device)``. Models that take the full path get a plan without groups.
    """
    if not can_trim(model):
        return TextPlan((), None, len(tokens))
    groups = length_groups(end_of_text_lengths(model, tokens).tolist())
    if len(groups) == 1:
        return TextPlan(((None, groups[0][1]),), None, len(tokens))
    order = np.concatenate([indices for indices, _ in groups])
    return TextPlan(
        tuple((torch.as_tensor(indices, device=tokens.device), n) for indices, n in groups),
        torch.as_tensor(np.argsort(order), device=tokens.device),
        len(tokens),
    )


def _encode_prefix(model: torch.nn.Module, tokens: torch.Tensor, length: int) -> torch.Tensor:
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    # A tower marked causal masks with SDPA's is_causal and would ignore the mask.
    mask = None if is_marked_causal(model.transformer) else model.attn_mask[:length, :length]
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return x


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor,
                        normalize: bool = False, plan: TextPlan | None = None
                        ) -> torch.Tensor:
    """``model.encode_text`` over only the positions up to each prompt's end.

    With a causal mask no position attends to later ones, and the feature is pooled at
    the end-of-text token, so the padding after it cannot change the result. Prompts
    are grouped by length (``length_groups``) and each group runs trimmed to its own
    longest prompt: 18 positions instead of 77 cut the text tower's cost several-fold,
    and groups save another fifth on class names of mixed length. Models that do not
    qualify (see ``can_trim``) take the full path.

    Without ``plan`` the groups are read from ``tokens``, which waits for the device on
    a GPU; with ``text_plan(model, tokens)`` made beforehand (ideally already on the
    tokens' device) the call reads nothing back to the host.
    """
    if not can_trim(model):
        return model.encode_text(tokens, normalize=normalize)
    if plan is None:
        plan = text_plan(model, tokens)
    elif plan.size != len(tokens):
        raise ValueError(f"the plan is for {plan.size} prompts, the tokens hold {len(tokens)}")
    plan = plan.to(tokens.device)  # no copy where it already is there
    parts = [_encode_prefix(model, tokens if rows is None else tokens[rows], n)
             for rows, n in plan.groups]
    x = parts[0] if plan.restore is None else torch.cat(parts)[plan.restore]
    return F.normalize(x, dim=-1) if normalize else x


def build_text_classifier(
    model: torch.nn.Module,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    trim: bool = True,
) -> torch.Tensor:
    """One L2-normalised embedding per class: the normalised mean of its normalised
    template embeddings. Returns a float32 tensor of shape (classes, dim)."""
    prompts = [template.format(name) for name in class_names for template in templates]
    tokens = tokenizer(prompts)
    encode = encode_text_trimmed if trim else type(model).encode_text
    order = torch.arange(len(prompts))
    if trim and can_trim(model):  # batches of similar length trim the most
        order = torch.argsort(end_of_text_lengths(model, tokens), stable=True)
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), desc="Encoding prompts",
                          unit="batch", disable=len(prompts) <= batch_size):
            batch = tokens[order[start:start + batch_size]].to(device)
            chunks.append(F.normalize(encode(model, batch).float(), dim=-1))
    per_prompt = torch.cat(chunks)[torch.argsort(order)].reshape(
        len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).cpu()
