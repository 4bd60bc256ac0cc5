"""Images smaller than the input are resized whole (bilinear), and the choice travels with the run."""
import numpy as np
import pytest
from PIL import Image

import tlearn
from tlearn.data.preprocessing import Preprocessing
from tlearn.data.samples import ArraySamples, FileSamples
from tlearn.data.small_images import adapt_preprocessing, typical_shorter_side
from tlearn.data.transforms import eval_transform
from tlearn.errors import ConfigError

from conftest import TINY_MODEL, write_image

WEIGHTS_RECIPE = Preprocessing(resize_size=256, crop_size=224, interpolation="bicubic",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _files(tmp_path, sizes) -> FileSamples:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        write_image(path, i % 3, size=size, seed=i)
        paths.append(str(path))
    return FileSamples(paths, [i % 3 for i in range(len(paths))])


def test_small_files_are_resized_whole_with_bilinear(tmp_path, caplog):
    caplog.set_level("INFO", logger="tlearn")
    samples = _files(tmp_path, [(32, 32), (40, 30), (30, 48), (600, 400)])
    assert typical_shorter_side(samples) == 31  # median of 32, 30, 30, 400
    prep = adapt_preprocessing(WEIGHTS_RECIPE, samples, "auto")
    lines = list(caplog.messages)
    assert (prep.resize_size, prep.crop_size, prep.interpolation) == (224, 224, "bilinear")
    assert prep.mean == WEIGHTS_RECIPE.mean and prep.std == WEIGHTS_RECIPE.std
    assert len(lines) == 1 and "31 px" in lines[0] and "--small-images weights" in lines[0]
    assert adapt_preprocessing(prep, samples, "auto") == prep  # idempotent: resume
    assert caplog.messages == lines


def test_large_images_and_the_weights_policy_keep_the_weights_recipe(tmp_path):
    large = _files(tmp_path / "large", [(300, 260), (400, 300), (20, 20)])
    assert adapt_preprocessing(WEIGHTS_RECIPE, large, "auto") == WEIGHTS_RECIPE
    small = _files(tmp_path / "small", [(32, 32)] * 3)
    assert adapt_preprocessing(WEIGHTS_RECIPE, small, "weights") == WEIGHTS_RECIPE


def test_array_samples_report_their_size_without_decoding():
    samples = ArraySamples("digits", np.zeros((5, 8, 8), dtype=np.uint8), [0] * 5)
    assert samples.image_size(0) == (8, 8)
    assert adapt_preprocessing(WEIGHTS_RECIPE, samples).resize_size == 224


def test_whole_image_resize_keeps_the_border_that_center_crop_drops():
    pixels = np.full((32, 32, 3), 128, dtype=np.uint8)
    pixels[:, :1] = (255, 0, 0)  # a red stripe along the left edge
    image = Image.fromarray(pixels)
    cropped = eval_transform(WEIGHTS_RECIPE)(image)
    whole = eval_transform(WEIGHTS_RECIPE.for_small_images())(image)
    assert whole.shape == cropped.shape == (3, 224, 224)
    assert whole[0, :, 0].mean() > 0.9 and whole[1, :, 0].mean() < -0.9  # red at the left border
    assert abs(cropped[0, :, :8].mean()) < 0.1  # grey: the crop cut the stripe off


def test_a_run_stores_the_recipe_it_trained_with(image_folder, tmp_path):
    stored = {}
    for policy in ("auto", "weights"):  # the folder's images are 40-54 x 30-35 px: smaller than 64
        model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=64)
        recipe = model.info.preprocessing
        tlearn.fit(model, str(image_folder), out=tmp_path / policy, strategy="linear-probe", epochs=1,
                   val_split=0.25, small_images=policy, report=False)
        stored[policy] = tlearn.load(tmp_path / policy).preprocessing  # what eval/predict/export use
    assert recipe.resize_size == 67
    assert stored["auto"] == recipe.for_small_images() and stored["auto"].resize_size == 64
    assert stored["weights"] == recipe


def test_an_unknown_policy_is_a_config_error(image_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    with pytest.raises(ConfigError, match="--small-images"):
        tlearn.fit(model, str(image_folder), out=tmp_path / "run", small_images="crop", report=False)


def test_whole_means_whole_for_non_square_images():
    pixels = np.full((20, 40, 3), 128, dtype=np.uint8)  # 40 x 20: wider than tall
    pixels[:, :2] = (255, 0, 0)  # red along the left edge
    pixels[:, -2:] = (0, 0, 255)  # blue along the right edge
    whole = eval_transform(WEIGHTS_RECIPE.for_small_images())(Image.fromarray(pixels))
    assert whole.shape == (3, 224, 224)
    assert whole[0, :, 0].mean() > 0.9 and whole[2, :, -1].mean() > 0.9  # both edges kept
    recipe = WEIGHTS_RECIPE.for_small_images()
    assert Preprocessing.from_dict(recipe.to_dict()) == recipe and recipe.whole_image
    assert recipe.with_image_size(96).whole_image and recipe.with_image_size(96).resize_size == 96
