"""Decoding at the size needed, once: JPEG draft scaling, presizing and the decoded-image cache."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

import tlearn
from tlearn.data.image_cache import CachedImages, cache_images
from tlearn.data.images import open_rgb
from tlearn.data.preprocessing import Preprocessing
from tlearn.data.samples import FileSamples
from tlearn.data.transforms import eval_transform, presize_transform, train_transform

from conftest import TINY_MODEL

PREP = Preprocessing(resize_size=72, crop_size=64, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def _photos(folder, sizes, quality=90):
    """Smooth gradients with a class colour: JPEG keeps them, so decoders can be compared."""
    paths = []
    for i, (width, height) in enumerate(sizes):
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 40 * (i % 5))], axis=-1)
        path = folder / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, quality=quality)
        paths.append(str(path))
    return FileSamples(paths, [i % 2 for i in range(len(paths))])


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_never_below_the_size_needed(tmp_path):
    path = _photos(tmp_path, [(1200, 900)]).paths[0]
    draft = open_rgb(path, decode_size=72)
    assert draft.size == (150, 113)  # 1/8 scale: the smallest DCT scale that still covers 72 x 72
    assert open_rgb(path, decode_size=300).size == (600, 450)  # 1/2: 1/4 would give 225 < 300
    assert open_rgb(path).size == (1200, 900)
    full = eval_transform(PREP)(open_rgb(path))
    scaled = eval_transform(PREP)(draft)
    assert full.shape == scaled.shape == (3, 64, 64)
    assert (full - scaled).abs().max() * 0.5 * 255 < 6  # within a few grey levels of the full decode


def test_presizing_changes_no_evaluation_pixel(tmp_path):
    samples = _photos(tmp_path, [(300, 200), (50, 40), (200, 500)])
    plain = eval_transform(PREP).transforms
    without_presize = [t for t in plain if type(t).__name__ != "Presize"]
    for index in range(len(samples)):
        image = samples.load(index)
        expected = image
        for step in without_presize:
            expected = step(expected)
        assert torch.equal(eval_transform(PREP)(image), expected)


def test_cached_images_give_the_pipelines_the_same_pixels(tmp_path, caplog):
    samples = _photos(tmp_path / "photos", [(300, 200), (640, 480), (50, 40), (200, 500)])
    with caplog.at_level(logging.INFO, logger="tlearn"):
        cached = cache_images(samples, PREP, tmp_path / "cache", 1.0, workers=0, description="train images")
    assert isinstance(cached, CachedImages) and "decoded 4 images once" in caplog.text
    for index in range(len(samples)):
        decoded = samples.load(index, PREP.resize_size)
        assert torch.equal(eval_transform(PREP)(cached.load(index)), eval_transform(PREP)(decoded))
        torch.manual_seed(index)
        augmented = train_transform(PREP, "default")(cached.load(index))
        torch.manual_seed(index)
        assert torch.equal(augmented, train_transform(PREP, "default")(decoded))
    stored = presize_transform(PREP)(cached.load(1))
    assert stored.shape == (3, 72, 96)  # the shorter side at the resize size: what evaluation needs
    assert cached.fingerprint() == samples.fingerprint() and cached.describe(2) == samples.describe(2)
    assert cached.subset([3, 0]).labels == [samples.labels[3], samples.labels[0]]
    assert torch.equal(presize_transform(PREP)(cached.subset([3, 0]).load(1)),
                       presize_transform(PREP)(cached.load(0)))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlearn"):
        again = cache_images(samples, PREP, tmp_path / "cache", 1.0, workers=0, description="train images")
    assert isinstance(again, CachedImages) and "decoded images from" in caplog.text


def test_a_data_set_over_the_budget_or_a_damaged_entry_is_not_served_from_the_cache(tmp_path):
    samples = _photos(tmp_path / "photos", [(300, 200), (300, 200)])
    assert cache_images(samples, PREP, tmp_path / "cache", 1e-5, workers=0, description="x") is samples
    assert not list((tmp_path / "cache").glob("images/*"))  # the estimate stopped it before decoding
    cached = cache_images(samples, PREP, tmp_path / "cache", 1.0, workers=0, description="x")
    pixels = cached.pixels_path
    pixels.write_bytes(pixels.read_bytes()[:-10])  # truncated: rebuilt, never trusted
    rebuilt = cache_images(samples, PREP, tmp_path / "cache", 1.0, workers=0, description="x")
    assert isinstance(rebuilt, CachedImages) and pixels.stat().st_size == 2 * 72 * 108 * 3
    assert cache_images(samples, PREP, tmp_path / "other", 1.0, workers=0, description="x", build=False) is samples


@pytest.mark.parametrize("workers", [0, 2])
def test_fine_tuning_with_the_image_cache_equals_fine_tuning_without_it(tmp_path, workers):
    folder = tmp_path / "photos"
    for split, count in (("train", 12), ("val", 6)):
        for label in (0, 1):
            _photos(folder / split / f"class{label}", [(120 + 9 * i, 90 + 4 * i) for i in range(count // 2)])
    runs = {}
    for budget in (1.0, 0.0):
        torch.manual_seed(0)  # the same random init
        model = tlearn.create_model(TINY_MODEL, num_classes=2, weights="none")
        out = tmp_path / f"run{budget}"
        summary = tlearn.fit(model, str(folder), out=out, strategy="two-stage", head_epochs=1, epochs=2,
                             image_size=64, batch_size=4, deterministic=True, workers=workers,
                             image_cache_gb=budget, report=False, cache_dir=str(tmp_path / f"cache{budget}"))
        runs[budget] = (summary, tlearn.load(out).model.state_dict())
    assert list((tmp_path / "cache1.0" / "images").glob("*.u8"))
    assert not (tmp_path / "cache0.0" / "images").exists()
    (cached_summary, cached_weights), (plain_summary, plain_weights) = runs[1.0], runs[0.0]
    assert cached_summary["val_top1"] == plain_summary["val_top1"]
    assert all(torch.equal(cached_weights[k], plain_weights[k]) for k in plain_weights)
