"""The text tower attends with SDPA's is_causal where its mask is the causal one, with
the features of the masked path; and a precomputed ``TextPlan`` encodes without reading
device tensors back to the host."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import TextTransformer
from torch import nn

from clip_lora_pipeline.core import attention
from clip_lora_pipeline.core.attention import (
    UnfusedMultiheadAttention,
    fuse_attention,
    is_marked_causal,
    mark_causal_text_attention,
    unfuse_attention,
)
from clip_lora_pipeline.core.model_id import ModelSpec
from clip_lora_pipeline.core.models import TINY_MODEL, load_model
from clip_lora_pipeline.core.prompts import encode_text_trimmed, text_plan
from tests.core.tiny import assert_close, fresh_tiny

# Mixed lengths, so that the trimmed path runs several length groups.
PROMPTS = [f"a {adjective} photo of a {name}."
           for adjective in ("", "blurry", "bright, close-up and slightly out-of-focus")
           for name in ("x", "hard-leaved pocket orchid", "pink primrose")]


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec(TINY_MODEL))


def _text_attention(model):
    return [block.attn for block in model.transformer.resblocks]


def _unmarked(model):
    plain = copy.deepcopy(model)
    for attn in _text_attention(plain):
        attn.causal = False
    return plain


def test_load_model_marks_only_the_text_tower_causal(tiny):
    assert [a.causal for a in _text_attention(tiny.model)] == [True, True]
    assert is_marked_causal(tiny.model.transformer)
    vision = [m for m in tiny.model.visual.modules() if isinstance(m, UnfusedMultiheadAttention)]
    assert vision and not any(m.causal for m in vision)


def test_is_causal_features_equal_the_masked_ones(tiny):
    tokens = tiny.tokenizer(PROMPTS)
    plan = text_plan(tiny.model, tokens)
    assert len(plan.groups) > 1
    masked, _ = fresh_tiny()  # open_clip's own fused modules and additive mask
    unmarked = _unmarked(tiny.model)
    with torch.no_grad():
        expected = masked.encode_text(tokens)
        for model in (tiny.model, unmarked):
            assert_close(model.encode_text(tokens), expected)
            assert_close(encode_text_trimmed(model, tokens), expected)
            assert_close(encode_text_trimmed(model, tokens, plan=plan), expected)


def test_marked_modules_call_sdpa_with_is_causal(tiny, monkeypatch):
    calls = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    tokens = tiny.tokenizer(PROMPTS)
    with torch.no_grad():
        for encode in (type(tiny.model).encode_text, encode_text_trimmed):
            calls.clear()
            encode(tiny.model, tokens)
            assert calls and all(kwargs == {"is_causal": True} for kwargs in calls)
        calls.clear()
        _unmarked(tiny.model).encode_text(tokens)
        assert calls and all("is_causal" not in kwargs for kwargs in calls)


def test_fusing_a_marked_model_keeps_its_features(tiny):
    tokens = tiny.tokenizer(PROMPTS)
    fused = copy.deepcopy(tiny.model)
    assert fuse_attention(fused) == 4
    with torch.no_grad():
        assert_close(fused.encode_text(tokens), tiny.model.encode_text(tokens))


def test_other_masks_are_not_marked():
    model, _ = fresh_tiny()
    unfuse_attention(model)
    model.attn_mask = torch.zeros_like(model.attn_mask)  # bidirectional, as a float mask
    assert mark_causal_text_attention(model) == 0
    model.attn_mask = None
    assert mark_causal_text_attention(model) == 0
    assert not is_marked_causal(model.transformer)
    assert mark_causal_text_attention(nn.Linear(2, 2)) == 0  # no text tower


@pytest.mark.parametrize("embed_cls, marked", [(False, 1), (True, 0)])
def test_custom_text_towers_are_marked_only_without_a_class_token(embed_cls, marked):
    # CoCa's class token adds a per-batch term to the causal mask
    holder = nn.Module()
    holder.text = TextTransformer(context_length=8, vocab_size=50, width=16, heads=2,
                                  layers=1, output_dim=8, embed_cls=embed_cls)
    unfuse_attention(holder)
    assert mark_causal_text_attention(holder) == marked


def test_plan_encodes_on_meta_tensors_so_it_reads_nothing_back(tiny):
    tokens = tiny.tokenizer(PROMPTS)
    plan = text_plan(tiny.model, tokens)
    assert len(plan.groups) > 1 and plan.restore is not None
    with torch.no_grad():
        assert torch.equal(encode_text_trimmed(tiny.model, tokens, plan=plan),
                           encode_text_trimmed(tiny.model, tokens))
        model = copy.deepcopy(tiny.model).to("meta")
        meta_tokens, meta_plan = tokens.to("meta"), plan.to("meta")
        for unmarked in (False, True):  # the masked path reads nothing back either
            if unmarked:
                model = _unmarked(model)
            features = encode_text_trimmed(model, meta_tokens, plan=meta_plan)
            assert features.device.type == "meta"
            assert features.shape == (len(PROMPTS), tiny.model.text_projection.shape[1])
        with pytest.raises(NotImplementedError, match="meta"):
            encode_text_trimmed(model, meta_tokens)  # without a plan it must read the tokens


def test_one_group_plan_and_wrong_size(tiny):
    tokens = tiny.tokenizer(["a photo of a x.", "a photo of a y."])
    plan = text_plan(tiny.model, tokens)
    assert plan.restore is None and plan.groups[0][0] is None
    with torch.no_grad():
        assert torch.equal(encode_text_trimmed(tiny.model, tokens, plan=plan),
                           encode_text_trimmed(tiny.model, tokens))
    with pytest.raises(ValueError, match="2 prompts"):
        encode_text_trimmed(tiny.model, tokens[:1], plan=plan)
