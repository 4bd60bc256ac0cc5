"""A scraped-together dataset trains; every skipped file is named once; unsafe files never run code."""
import io
import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

import tlearn
from tlearn.data.images import open_rgb

from conftest import TINY_MODEL, run_cli, write_image


def _jpeg_bytes(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def build_messy(root):
    """Three classes with every kind of trouble; returns the expected skipped names."""
    cats, dogs, birds = root / "cats and kittens", root / "chiens_ñandú", root / "birds"
    for folder, label in ((cats, 0), (dogs, 1), (birds, 2)):
        for i in range(6):
            write_image(folder / "nested" / f"ok_{i}.png" if i % 2 else folder / f"ok_{i}.jpg", label, seed=i)
    base = Image.open(cats / "ok_0.jpg").convert("RGB")
    good = _jpeg_bytes(base)
    (cats / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "text.jpg").write_text("this is not an image")
    frames = [Image.new("P", (30, 30), i * 40) for i in range(3)]
    frames[0].save(dogs / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    base.convert("CMYK").save(dogs / "cmyk.jpg")
    Image.fromarray(np.arange(900, dtype=np.uint16).reshape(30, 30) * 70).save(dogs / "deep16.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(birds / "alpha.png")
    palette = base.convert("P")
    palette.info["transparency"] = 0
    palette.save(birds / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20), (200, 0, 0)).save(birds / "rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (1, 1), (0, 0, 200)).save(birds / "tiny.png")
    Image.new("1", (12_000, 12_000)).save(birds / "bomb.png")  # 144 Mpx: refused
    (birds / ".DS_Store").write_bytes(b"\0\1\2")
    (birds / "notes.txt").write_text("labels are fine")
    (root / "only_junk").mkdir()
    (root / "only_junk" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    return {"truncated.jpg", "empty.jpg", "text.jpg", "bomb.png", ".DS_Store", "notes.txt"}


def test_exif_orientation_is_honoured(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_messy_folder_trains_and_reports_skips(tmp_path):
    root = tmp_path / "messy"
    expected = build_messy(root)
    out = tmp_path / "run"
    args = ["train", "--data", str(root), "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
            "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "1", "--out", str(out)]
    failed = run_cli(*args)
    assert failed.returncode == 2 and "no usable images" in failed.stderr and "only_junk" in failed.stderr
    assert not out.exists(), "the error must come before training starts"
    (root / "only_junk" / "broken.png").unlink()
    (root / "only_junk").rmdir()
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout
    lines = (out / "skipped_files.txt").read_text().strip().splitlines()
    names = [line.split("\t")[0].rsplit("/", 1)[-1] for line in lines]
    assert sorted(names) == sorted(expected) and all("\t" in line for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] == len(expected)
    assert summary["num_train"] + summary["num_val"] == 18 + 3 + 4  # ok + gif/cmyk/16-bit + alpha/palette/rotated/1x1
    assert summary["class_names"] == ["birds", "cats and kittens", "chiens_ñandú"]


def test_tampered_run_files_are_one_line_errors_and_never_run_code(tmp_path):
    out = tmp_path / "run"
    from conftest import make_folder

    data = make_folder(tmp_path / "data", per_class=4)
    from tlearn.cli import main  # the run to tamper with, made in-process: the subprocesses below are the test

    assert main(["train", "--data", str(data), "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
                 "--strategy", "linear-probe", "--epochs", "1", "--no-report", "--out", str(out)]) == 0
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    (out / "model.safetensors").write_bytes(pickle.dumps({"weight": Exploit()}))
    for args in (["eval", str(out), "--data", str(data)], ["predict", str(out), str(data)]):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "model.safetensors" in result.stderr
    with pytest.raises(tlearn.UserError, match="model.safetensors"):
        tlearn.load(out)
    from tlearn.infer.export import export_run

    with pytest.raises(tlearn.UserError, match="model.safetensors"):
        export_run(out, "onnx")
    (out / "model.json").write_text("{ truncated")
    with pytest.raises(tlearn.UserError, match="model.json"):
        tlearn.load(out)
    assert not marker.exists()


def test_non_finite_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path):
    from conftest import make_folder

    data = make_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(data), "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
                     "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "2", "--optimizer", "sgd",
                     "--lr", "1e30", "--out", str(out))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert re.search(r"non-finite loss .* finetune epoch \d/2, step \d+", message) and "--lr" in message
    assert tlearn.load(out).class_names == ["cat", "dog", "fox"]  # the probe's checkpoint survives
