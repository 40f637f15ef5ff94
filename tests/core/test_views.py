"""Augmented-view features (core.views) on the tiny random model and generated images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clip_lora_pipeline.core.augment import crop_params, sample_seed
from clip_lora_pipeline.core.embed import embeddings_matrix
from clip_lora_pipeline.core.images import load_rgb
from clip_lora_pipeline.core.models import TINY_MODEL, ModelSpec, load_model
from clip_lora_pipeline.core.views import (
    ViewsError,
    ViewSettings,
    encode_views,
    views_array,
    views_table,
)
from tests.conftest import write_image
from tests.core.tiny import assert_close

CPU = torch.device("cpu")



@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec(TINY_MODEL))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(root, manifest): 5 images of mixed sizes; the last row repeats the first file."""
    root = tmp_path_factory.mktemp("views")
    sizes = [(64, 48), (48, 64), (40, 40), (56, 40)]
    paths = [write_image(root / f"c{i % 2}" / f"{i}.png", size=s, seed=i).relative_to(root).as_posix()
             for i, s in enumerate(sizes)]
    paths.append(paths[0])
    labels = [0, 1, 0, 1, 0]
    manifest = pd.DataFrame({"path": paths, "label": labels,
                             "class_name": [f"c{label}" for label in labels]})
    return root, manifest


def _encode(tiny, images, **kwargs):
    root, manifest = images
    kwargs.setdefault("n_views", 4)
    return encode_views(tiny.model, manifest, root, tiny.model.visual.preprocess_cfg, CPU,
                        **kwargs)


def test_shape_and_normalised(tiny, images):
    views = _encode(tiny, images)
    assert views.shape == (5, 4, 32) and views.dtype == np.float32
    assert_close(np.linalg.norm(views, axis=-1), np.ones((5, 4)))


def test_same_views_for_any_batch_size_threads_and_global_rng(tiny, images):
    reference = _encode(tiny, images, batch_size=64)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again = _encode(tiny, images, batch_size=64, threads=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    np.testing.assert_array_equal(again, reference)
    for batch_size in (1, 3, 8):  # below, across and above one image's views
        assert_close(_encode(tiny, images, batch_size=batch_size), reference)


def test_seeds_views_and_duplicate_rows_differ(tiny, images):
    views = _encode(tiny, images, seed=1)
    other = _encode(tiny, images, seed=2)
    assert not np.allclose(views, other, rtol=1e-3, atol=1e-4)
    for row in range(len(views)):
        for a in range(4):
            for b in range(a + 1, 4):
                assert not np.allclose(views[row, a], views[row, b], rtol=1e-3, atol=1e-4)
    # The last row is the first file again, but its own row: its own views.
    assert not np.allclose(views[0], views[4], rtol=1e-3, atol=1e-4)


def test_view_is_torchvisions_recipe_with_that_views_generator(tiny, images):
    """A view is exactly torchvision's RandomResizedCrop + flip + normalise run on the
    global RNG seeded with ``sample_seed``, encoded on its own."""
    from torchvision import transforms as T

    root, manifest = images
    cfg = tiny.model.visual.preprocess_cfg
    views = _encode(tiny, images, crop_scale=(0.5, 1.0), seed=7)
    transform = T.Compose([
        T.RandomResizedCrop(cfg["size"][0], scale=(0.5, 1.0),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])
    for row, view in [(0, 0), (1, 3), (3, 2), (4, 1)]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(7, row, view))
            pixels = transform(load_rgb(root / manifest["path"][row]))
        with torch.no_grad():
            expected = F.normalize(tiny.model.encode_image(pixels[None]).float(), dim=-1)
        assert_close(views[row, view], expected[0].numpy())


def test_crop_params_match_torchvision():
    from torchvision import transforms as T

    image = torch.zeros(3, 30, 200)  # extreme aspect: exercises the fallback too
    for scale in [(0.08, 1.0), (0.5, 1.0), (1.0, 1.0)]:
        for s in range(50):
            torch.manual_seed(s)
            expected = T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
            generator = torch.Generator().manual_seed(s)
            assert crop_params(200, 30, scale, generator) == expected


def test_bf16_autocast_is_close_to_fp32(tiny, images):
    fp32 = _encode(tiny, images)
    bf16 = _encode(tiny, images, dtype=torch.bfloat16)
    assert bf16.dtype == np.float32
    assert_close(np.linalg.norm(bf16, axis=-1), np.ones((5, 4)))
    assert float((fp32 * bf16).sum(-1).min()) > 0.98  # cosine of each view's two encodings


def test_table_round_trip_through_parquet(tiny, images, tmp_path):
    root, manifest = images
    views = _encode(tiny, images, n_views=3)
    table = views_table(manifest, views)
    assert list(table.columns) == ["image", "path", "label", "class_name", "view", "embedding"]
    assert len(table) == 15 and table["label"].tolist()[:4] == [0, 0, 0, 1]
    np.testing.assert_array_equal(embeddings_matrix(table), views.reshape(15, -1))
    table.to_parquet(tmp_path / "views.parquet")
    loaded = pd.read_parquet(tmp_path / "views.parquet")
    np.testing.assert_array_equal(views_array(loaded), views)
    np.testing.assert_array_equal(views_array(loaded.iloc[::-1]), views)  # any row order
    with pytest.raises(ViewsError, match="incomplete"):
        views_array(loaded.drop(index=4))


def test_settings_and_inputs_are_validated(tiny, images):
    assert ViewSettings() == ViewSettings(10, (0.5, 1.0))
    assert ViewSettings.from_params({"crop_scale": [0.3, 1]}).crop_scale == (0.3, 1.0)
    for bad in [{"n_views": 0}, {"n_views": 2.0}, {"crop_scale": (0.0, 1.0)},
                {"crop_scale": (0.9, 0.5)}, {"crop_scale": (0.5, 1.5)}, {"crop_scale": (0.5,)}]:
        with pytest.raises(ViewsError):
            ViewSettings(**bad)
    with pytest.raises(ViewsError, match="unknown"):
        ViewSettings.from_params({"views": 3})
    with pytest.raises(ViewsError, match="seed"):
        _encode(tiny, images, seed=-1)
    root, manifest = images
    with pytest.raises(ViewsError, match="empty"):
        encode_views(tiny.model, manifest.iloc[:0], root, (32, (0.5,) * 3, (0.5,) * 3), CPU)
