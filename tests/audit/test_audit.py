"""`tlearn audit`: hashes, duplicates across splits, label-issue ranking, odd images, outputs, errors."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlearn.audit._hashing import hamming_block, perceptual_hash_bits
from tlearn.audit._label_issues import find_label_issues

from conftest import TINY_MODEL, run_cli


def smooth_image(seed: int, size: int = 48) -> Image.Image:
    """A picture-like image: random colours at 6x6, enlarged smoothly (pHash sees its shapes)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    return small.resize((size, size), Image.Resampling.BICUBIC)


def jpeg_copy(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def distance(a: Image.Image, b: Image.Image) -> int:
    return int(hamming_block(perceptual_hash_bits(a)[None], perceptual_hash_bits(b)[None])[0, 0])


def test_phash_is_close_for_copies_and_far_for_other_images():
    image = smooth_image(0)
    resized = image.resize((24, 24), Image.Resampling.BILINEAR).resize((48, 48), Image.Resampling.BICUBIC)
    assert distance(image, jpeg_copy(image)) <= 4
    assert distance(image, jpeg_copy(resized)) <= 6
    assert min(distance(image, smooth_image(seed)) for seed in range(1, 6)) >= 12


def test_label_issue_ranking_puts_flipped_labels_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, 16))
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + rng.normal(0, 1, (len(labels), 16))
    flipped = [3, 50, 90, 117]
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 3
    issues = find_label_issues(features.astype(np.float32), given.tolist(), 3)
    assert sorted(issue.index for issue in issues[:4]) == flipped
    assert all(issue.suggested == labels[issue.index] for issue in issues[:4])
    assert [issue.score for issue in issues] == sorted(issue.score for issue in issues)


def _planted_folder(root: Path) -> Path:
    """train/val class folders of smooth images, with an exact copy under another name (PNG),
    a re-encoded resized copy of a training image in val, and odd images in one class."""
    for split, count in (("train", 8), ("val", 3)):
        for label, name in enumerate(("ant", "bee")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                smooth_image(1000 * label + 100 * (split == "val") + i).save(folder / f"{i}.jpg", quality=95)
    original = Image.open(root / "train/ant/0.jpg")
    original.save(root / "train/ant/copy.png")  # the same pixels, another name and format
    original.resize((30, 30)).resize((48, 48)).save(root / "val/ant/leak.jpg", quality=60)
    smooth_image(7, 20).save(root / "train/bee/tiny.png")
    smooth_image(8).resize((192, 32)).save(root / "train/bee/wide.png")
    smooth_image(9).convert("L").save(root / "train/bee/gray.png")
    (root / "train/bee/broken.jpg").write_bytes(b"not really a jpeg")
    return root


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    data = _planted_folder(root / "data")
    out = root / "out"
    result = run_cli("audit", "--data", str(data), "--out", str(out), "--model", TINY_MODEL, "--weights", "none",
                     env={"TLEARN_CACHE": str(root / "cache")})
    assert result.returncode == 0, result.stderr
    return data, out, result.stdout


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_audit_finds_exact_and_cross_split_near_copies(audited):
    data, out, stdout = audited
    columns, rows = _rows(out / "duplicates.csv")
    assert columns == ["path_a", "path_b", "similarity", "kind", "cross_split"]
    pairs = {(Path(r["path_a"]).relative_to(data).as_posix(), Path(r["path_b"]).relative_to(data).as_posix()):
             (r["kind"], r["cross_split"]) for r in rows}
    assert pairs[("train/ant/0.jpg", "train/ant/copy.png")] == ("exact", "false")
    leak = [value for key, value in pairs.items() if set(key) == {"train/ant/0.jpg", "val/ant/leak.jpg"}]
    assert leak == [("near", "true")]
    assert "pairs across splits (leakage): 1" in stdout


def test_audit_finds_odd_images_and_writes_a_self_contained_page(audited):
    data, out, stdout = audited
    page = (out / "audit.html").read_text()
    for name, reason in (("tiny.png", "tiny"), ("wide.png", "extreme aspect ratio 6.0:1"),
                         ("gray.png", "grayscale among colour"), ("broken.jpg", "cannot identify")):
        assert name in page and reason in page, name
    assert "http://" not in page and "https://" not in page and "data:image/png;base64," in page
    columns, _ = _rows(out / "label_issues.csv")
    assert columns == ["path", "given", "suggested", "score"]
    assert "odd images: 4" in stdout


@pytest.mark.parametrize("args, message", [(["--data", "/no/such/folder"], "--data not found"),
                                           (["--data", "{file}"], "is a file")])
def test_audit_bad_input_exits_2_with_one_line(tmp_path, args, message):
    (tmp_path / "file.txt").write_text("x")
    args = [a.format(file=tmp_path / "file.txt") for a in args]
    result = run_cli("audit", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_audit_skips_label_issues_for_multi_label_tables(tmp_path):
    rows = ["file,tags"]
    for i in range(8):
        smooth_image(i).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ant bee' if i % 2 else 'ant'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run_cli("audit", "--data", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--label-delim", " ",
                     "--out", str(out), "--model", TINY_MODEL, "--weights", "none")
    assert result.returncode == 0, result.stderr
    assert "likely label errors: skipped: multi-label" in result.stdout
    assert (out / "label_issues.csv").read_text().strip() == "path,given,suggested,score"
