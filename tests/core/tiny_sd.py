"""A tiny randomly initialised Stable Diffusion img2img pipeline, saved in diffusers'
folder layout for ``core.generate`` to load like real weights. Built from configs as
diffusers' own img2img tests build theirs (a small UNet, VAE and CLIP text encoder);
no tokenizer can be downloaded here, so the test writes a character-level vocab and an
empty merges file and loads a CLIPTokenizer from them, as transformers' tests do."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
CHARACTERS = list(string.ascii_lowercase + string.digits + ".,'-")
IMAGE_SIZE = 32  # the VAE downsamples twice over: latents of 16 x 16


def tiny_tokenizer(folder: Path):
    """A CLIPTokenizer whose vocabulary is every character (alone and ending a word)."""
    from transformers import CLIPTokenizer

    vocab = CHARACTERS + [c + "</w>" for c in CHARACTERS] + SPECIALS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def save_tiny_sd(folder: Path) -> Path:
    """The pipeline under ``folder`` (model_index.json, unet/, vae/, ...); returns it."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-vocab")
    torch.manual_seed(0)
    # diffusers' test sizes (32, 64 channels) quartered: seconds count on a shared CPU
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, cross_attention_dim=16,
        attention_head_dim=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(
        block_out_channels=[8, 16], norm_num_groups=8, in_channels=3, out_channels=3,
        latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab[SPECIALS[0]], eos_token_id=vocab[SPECIALS[1]],
        pad_token_id=vocab[SPECIALS[1]], vocab_size=len(vocab), hidden_size=16,
        intermediate_size=24, num_attention_heads=2, num_hidden_layers=2))
    # Stable Diffusion v1's own scheduler config (the loader swaps in DDIM).
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
