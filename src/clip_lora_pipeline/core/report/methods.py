"""One line per method saying what it is, from its name and the settings it ran with,
so a reader of the report need not open the parameter files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Settings not given are the code's defaults; the line says so rather than guessing
# them here, where they could drift from the code.
DEFAULT = "default"


def _get(settings: Mapping[str, Any], *keys: str) -> Any:
    """A nested setting (``_get(s, "lora", "r")``), or ``DEFAULT`` when not given."""
    value: Any = settings
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return DEFAULT
        value = value[key]
    return value


def _encoders(value: Any) -> str:
    return {"both": "both encoders", "vision": "the image encoder", "text": "the text encoder",
            DEFAULT: "the default encoders"}.get(value, f"encoders: {value}")


def _grid(low: Any, high: Any, steps: Any = None) -> str:
    """' (among 13 values from 1e-3 to 1e3)' for a log-spaced search, or '' if not given."""
    if DEFAULT in (low, high) or not isinstance(low, (int, float)):
        return ""
    count = f"{steps} values " if steps not in (None, DEFAULT) else ""
    return f" (among {count}from 1e{low} to 1e{high})"


def _given(settings: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """'r=2, alpha=1' for the keys given; the rest are the code's defaults."""
    given = [f"{k}={settings[k]}" for k in keys if k in settings]
    if not given:
        return "default settings"
    return ", ".join(given + (["rest default"] if len(given) < len(keys) else []))


def _zero_shot(prompt_set: str, settings: Mapping[str, Any]) -> str:
    templates = settings.get("templates")
    count = f"{len(templates)} prompt template(s)" if templates else "its prompt templates"
    return (f"Zero-shot CLIP, nothing trained: each class is the averaged text embedding of "
            f"{count} from the prompt set '{prompt_set}'; the most similar class wins.")


def _linear_probe(settings: Mapping[str, Any]) -> str:
    search = _grid(*(settings.get(k, DEFAULT) for k in ("c_min_log10", "c_max_log10",
                                                             "c_steps")))
    return (f"Logistic regression on frozen CLIP image embeddings; C picked on val{search}, "
            "then refit on train + val.")


def _text_init_head(settings: Mapping[str, Any]) -> str:
    search = _grid(settings.get("strength_min_log10", DEFAULT),
                   settings.get("strength_max_log10", DEFAULT), settings.get("strength_steps"))
    return (f"Linear head on frozen image embeddings that starts from the zero-shot text "
            f"classifier (prompt set '{settings.get('prompt_set', DEFAULT)}') and is pulled "
            f"back towards it, strength picked on val{search}, then refit on train + val.")


# variant: (what it trains, the settings it uses)
_LORA_VARIANTS = {
    "lora": ("LoRA: low-rank updates", ("r", "alpha", "rslora", "dropout")),
    "dora": ("DoRA: low-rank updates of the direction and a trained magnitude per output",
             ("r", "alpha", "rslora", "dropout")),
    "vera": ("VeRA: trained scaling vectors around frozen random projections shared by all "
             "layers", ("r", "dropout")),
    "ia3": ("IA3: trained vectors rescaling the outputs (the MLP's hidden activations)", ()),
}


def _lora(settings: Mapping[str, Any]) -> str:
    lora = settings.get("lora") or {}
    matrices = lora.get("matrices", DEFAULT)
    matrices = "+".join(matrices) if isinstance(matrices, (list, tuple)) else matrices
    blocks = lora.get("blocks")
    what, keys = _LORA_VARIANTS.get(lora.get("variant", "lora"), _LORA_VARIANTS["lora"])
    shown = f" ({_given(lora, keys)})" if keys else ""
    return (f"{what}{shown} on "
            f"the {matrices} matrices of "
            f"{'all blocks' if blocks is None else f'blocks {blocks}'} of "
            f"{_encoders(lora.get('encoders', DEFAULT))}, CLIP frozen; "
            f"{_get(settings, 'head')} head, lr {_get(settings, 'lr')}.")


def _bitfit(settings: Mapping[str, Any]) -> str:
    layernorm = _get(settings, "bitfit", "layernorm")
    return (f"BitFit: only the biases{' and LayerNorm weights' if layernorm is True else ''} of "
            f"{_encoders(_get(settings, 'bitfit', 'encoders'))} train; "
            f"{_get(settings, 'head')} head, lr {_get(settings, 'lr')}.")


def _vpt(settings: Mapping[str, Any]) -> str:
    vpt = settings.get("vpt") or {}
    return (f"VPT: learned prompt tokens after the class token of the image encoder, at its "
            f"first block (shallow) or every block (deep) "
            f"({_given(vpt, ('depth', 'length', 'dropout'))}), CLIP frozen; "
            f"{_get(settings, 'head')} head, lr {_get(settings, 'lr')}.")


def _coop(settings: Mapping[str, Any]) -> str:
    per_class = _get(settings, "coop", "class_specific")
    kind = {True: "one set per class", False: "shared by all classes"}.get(per_class, DEFAULT)
    return (f"CoOp: {_get(settings, 'coop', 'context_length')} learned context vectors "
            f"({kind}) before each class name at the text encoder's input, CLIP frozen; "
            f"{_get(settings, 'optimizer')} optimizer, lr {_get(settings, 'lr')}.")


def _two_stage(settings: Mapping[str, Any]) -> str:
    fraction = _get(settings, "two_stage", "stage1_fraction")
    share = f"{fraction:.0%}" if isinstance(fraction, (int, float)) else fraction
    return (f"2SFS: the LayerNorms of {_encoders(_get(settings, 'two_stage', 'encoders'))} "
            f"train through the text head for the first {share} of the steps, then a cosine "
            f"classifier initialised from the class prompts trains on the frozen model's "
            f"features; lr {_get(settings, 'lr')}.")


ADAPTATIONS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "lora": _lora, "bitfit": _bitfit, "vpt": _vpt, "coop": _coop, "two_stage": _two_stage}


def _generated(settings: Mapping[str, Any]) -> str:
    """' With generated images: ...' for an entry that trains with them, else ''."""
    if not isinstance(settings.get("generated"), Mapping):
        return ""
    given = _given(settings["generated"], ("p", "preserving_weight", "breaking_weight", "scale"))
    return (f" With Stable Diffusion img2img variants of the training images (Zhang et al., "
            f"2024): label-preserving ones replace their source at times, label-breaking ones "
            f"enter a contrastive term ({given}).")


def method_description(method: str, settings: Mapping[str, Any] | None) -> str:
    """What ``method`` is, in one line. ``settings``: for zero_shot_<set> optionally
    ``{"templates": [...]}``; for a feature method its entry of ``feature_methods``
    (kind under ``method``; the registry's description for kinds without a line here); for an adaptation
    method its entry of ``adaptation_methods`` (kind under ``method``). Settings left out
    are written as 'default'."""
    settings = settings or {}
    if method.startswith("zero_shot_"):
        return _zero_shot(method.removeprefix("zero_shot_"), settings)
    kind = settings.get("method", method)
    if kind == "linear_probe":
        return _linear_probe(settings)
    if kind == "text_init_head":
        return _text_init_head(settings)
    if kind in ADAPTATIONS:
        return ADAPTATIONS[kind](settings) + _generated(settings)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()
                      if k != "method" and not isinstance(v, Mapping))
    # imported here: the registry brings torch, which the rest of the report does without
    from clip_lora_pipeline.core.methods.registry import FEATURE_METHODS

    if kind in FEATURE_METHODS:
        return f"{FEATURE_METHODS[kind].description}{' Settings: ' + shown if shown else ''}"
    return f"Adaptation method '{kind}' (fine-tunes part of CLIP){': ' + shown if shown else ''}."
