"""Generated-image augmentation: Stable Diffusion img2img variants of a few-shot sample's
training images (``kedro run --pipeline augment``; needs the ``[augment]`` extra)."""
