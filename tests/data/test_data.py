"""Folder layouts, splits, real-world image files, transforms from the weights."""
import numpy as np
import pytest
from PIL import Image

from tlearn.data import eval_transform, load_splits
from tlearn.data.images import open_rgb, unusable_reason
from tlearn.data.preprocessing import Preprocessing
from tlearn.errors import DataError

from conftest import make_folder, write_image


def test_single_folder_is_split_stratified_and_seeded(image_folder):
    a = load_splits(str(image_folder), val_split=0.25, seed=3)
    b = load_splits(str(image_folder), val_split=0.25, seed=3)
    c = load_splits(str(image_folder), val_split=0.25, seed=4)
    assert a.class_names == ["cat", "dog", "fox"]
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert np.bincount(a.val.labels).tolist() == [2, 2, 2]
    assert not set(a.train.paths) & set(a.val.paths)


def test_train_and_val_folders_are_used_as_given(split_folder):
    splits = load_splits(str(split_folder), val_split=0.1, seed=0)
    assert all("/val/" in p for p in splits.val.paths) and len(splits.val) == 6


def test_class_mismatch_between_train_and_val_is_an_error(split_folder):
    (split_folder / "val" / "fox").rename(split_folder / "val" / "wolf")
    with pytest.raises(DataError, match="classes differ.*fox.*wolf"):
        load_splits(str(split_folder), val_split=0.1, seed=0)


@pytest.mark.parametrize("setup,message", [
    (lambda root: None, "not found"),
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: make_folder(root, classes=("only",)), "at least 2 classes"),
])
def test_unusable_folders_are_clear_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        load_splits(str(root), val_split=0.2, seed=0)


def test_empty_class_folder_is_an_error(image_folder):
    (image_folder / "empty").mkdir()
    (image_folder / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no usable images.*empty"):
        load_splits(str(image_folder), val_split=0.2, seed=0)


def test_every_image_mode_and_format_becomes_rgb(tmp_path):
    write_image(tmp_path / "src.png", 1, size=(50, 20))
    source = Image.open(tmp_path / "src.png")
    variants = {
        "gray.JPG": source.convert("L"), "rgba.png": source.convert("RGBA"), "pal.gif": source.convert("P"),
        "cmyk.jpg": source.convert("CMYK"), "pic.bmp": source, "pic.webp": source, "pic.TIFF": source,
        "wide16.png": Image.fromarray(np.asarray(source.convert("L"), dtype=np.uint16) * 257),
    }
    for name, image in variants.items():
        image.save(tmp_path / name)
        loaded = open_rgb(tmp_path / name)
        assert loaded.mode == "RGB" and loaded.size == (50, 20), name
        assert unusable_reason(tmp_path / name) is None
    tensor = eval_transform(Preprocessing(36, 32, "bicubic", (0.5,) * 3, (0.5,) * 3))(open_rgb(tmp_path / "cmyk.jpg"))
    assert tuple(tensor.shape) == (3, 32, 32)


def test_unreadable_files_are_skipped_and_named(image_folder):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = (image_folder / "dog" / "0.png").read_bytes()
    (image_folder / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    (image_folder / "dog" / ".DS_Store").write_bytes(b"\0\0")
    splits = load_splits(str(image_folder), val_split=0.2, seed=0)
    skipped = {p.split("/")[-1]: reason for p, reason in splits.skipped}
    assert set(skipped) == {"broken.jpg", "cut.png", ".DS_Store"}
    assert len(splits.train) + len(splits.val) == 24
    with pytest.raises(DataError, match="broken.jpg"):
        load_splits(str(image_folder), val_split=0.2, seed=0, strict_images=True)


def test_digits_split_is_stratified():
    splits = load_splits("digits", val_split=0.1, seed=0)
    assert len(splits.train) + len(splits.val) == 1797 and len(splits.class_names) == 10
    assert min(np.bincount(splits.val.labels)) >= 17
    assert splits.train.load(0).mode == "RGB"
