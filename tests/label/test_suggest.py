"""`tlearn suggest`: ProbCover's and TypiClust's picks, margins, self-training, the command end to end, bad input."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from tlearn.cli.main import main
from tlearn.features import self_train
from tlearn.label._choice import cover_picks, margin_picks, typical_picks

from conftest import TINY_MODEL, make_folder, run_cli

TINY = ("--model", TINY_MODEL, "--weights", "none")


def blobs(centres: int = 4, per_blob: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs in 16 dimensions, and each point's blob."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 10, (centres, 16))
    labels = np.repeat(np.arange(centres), per_blob)
    return means[labels] + rng.normal(0, 1, (len(labels), 16)), labels


def test_cold_start_takes_one_typical_image_from_each_cluster():
    features, blob = blobs()
    picks = typical_picks(features, np.zeros(len(features), dtype=bool), 4)
    assert sorted(blob[[index for index, _, _ in picks]]) == [0, 1, 2, 3]
    for index, score, why in picks:  # the most typical: close to its blob's centre, not an outlier
        members = features[blob == blob[index]]
        distance = np.linalg.norm(features[index] - members.mean(axis=0))
        assert distance < np.median(np.linalg.norm(members - members.mean(axis=0), axis=1))
        assert score > 0 and "no label yet" in why


def test_later_rounds_go_to_clusters_no_label_covers():
    features, blob = blobs()
    labelled = np.isin(np.arange(len(features)), np.flatnonzero(blob == 0)[:3])
    picks = [index for index, _, _ in typical_picks(features, labelled, 3)]
    assert sorted(blob[picks]) == [1, 2, 3]
    assert not labelled[picks].any()


def test_a_refused_candidate_gives_way_to_the_next_and_refusing_all_ends():
    features, blob = blobs()
    none = np.zeros(len(features), dtype=bool)
    first = [index for index, _, _ in typical_picks(features, none, 4)]
    refused = first[0]
    again = [index for index, _, _ in typical_picks(features, none, 4, accept=lambda i, picks: i != refused)]
    assert refused not in again and len(again) == 4 and blob[refused] in blob[again]
    assert typical_picks(features, none, 4, accept=lambda i, picks: False) == []


def test_cover_takes_one_image_of_every_separated_cluster_before_a_second_in_any():
    features, blob = blobs(per_blob=12)  # a ball (10th neighbour's distance) then holds most of a blob
    picks = cover_picks(features, np.zeros(len(features), dtype=bool), 4, until=1.0)
    assert sorted(blob[[index for index, _, _ in picks]]) == [0, 1, 2, 3]
    gains = [score for _, score, _ in picks]
    assert gains == sorted(gains, reverse=True) and gains[-1] > 0  # greedy: each covers no more than the last
    assert all(why.startswith("covers ") for _, _, why in picks)
    again = cover_picks(features, np.zeros(len(features), dtype=bool), 4, seed=3, until=1.0)
    assert again == picks  # no randomness in the coverage


def test_cover_searches_a_pool_once_and_again_when_its_features_change(monkeypatch):
    from tlearn.label import _choice

    searched = []
    search = _choice.cover_radius
    monkeypatch.setattr(_choice, "cover_radius", lambda unit: searched.append(len(unit)) or search(unit))
    features, _ = blobs(per_blob=12)
    features = features + 1e-3 * np.random.default_rng(7).standard_normal(features.shape)  # a pool of its own
    nothing = np.zeros(len(features), dtype=bool)
    first = cover_picks(features, nothing, 4, until=1.0)
    assert cover_picks(features.copy(), nothing, 4, until=1.0) == first and len(searched) == 1  # the same content
    changed = features.copy()
    changed[0] += 1.0
    cover_picks(changed, nothing, 4, until=1.0)
    assert len(searched) == 2


def test_cover_counts_labelled_images_as_covered_and_a_refused_candidate_gives_way():
    features, blob = blobs(per_blob=12)
    labelled = np.isin(np.arange(len(features)), np.flatnonzero(blob == 0)[:5])
    picks = [index for index, _, _ in cover_picks(features, labelled, 3, until=1.0)]
    assert sorted(blob[picks]) == [1, 2, 3] and not labelled[picks].any()
    refused = picks[0]
    others = [index for index, _, _ in cover_picks(features, labelled, 3, until=1.0,
                                                    accept=lambda index, chosen: index != refused)]
    assert refused not in others and len(others) == 3 and blob[refused] in blob[others]


def test_cover_hands_over_to_typiclust_once_the_share_is_covered():
    features, blob = blobs(per_blob=12)
    picks = cover_picks(features, np.zeros(len(features), dtype=bool), 8, until=0.3)
    reasons = [why for _, _, why in picks]
    assert reasons[0].startswith("covers ") and reasons[-1].startswith("most typical")
    assert len({index for index, _, _ in picks}) == 8
    everything = cover_picks(features, np.zeros(len(features), dtype=bool), len(features) - 1, until=1.0)
    assert len({index for index, _, _ in everything}) == len(features) - 1  # TypiClust once all is covered


def test_margin_picks_the_least_certain_unlabelled_images():
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.5, 0.5], [0.7, 0.3]])
    assert margin_picks(probabilities, np.array([False, False, True, False]), 2) == [1, 3]


def test_self_training_adds_a_share_of_each_predicted_class_mostly_right():
    features, blob = blobs(centres=3, per_blob=100)
    labelled = np.concatenate([np.flatnonzero(blob == name)[:2] for name in range(3)])
    rest = np.setdiff1d(np.arange(len(features)), labelled)
    result = self_train(features[labelled], blob[labelled], features[rest], 3, share=0.2, rounds=2)
    counts = np.bincount(result.pseudo_labels, minlength=3)
    assert all(15 <= count <= 25 for count in counts), counts  # 20 % of each predicted class (~98)
    assert (blob[rest][result.pseudo_indices] == result.pseudo_labels).mean() > 0.95
    assert (result.probe.probabilities(features[rest]).argmax(axis=1) == blob[rest]).mean() > 0.95


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_suggest_cold_then_with_labels_from_the_cache(tmp_path):
    pool = make_folder(tmp_path / "pool", per_class=6)
    out = tmp_path / "next.csv"
    cold = run_cli("suggest", "--pool", str(pool), "--n", "4", "--out", str(out), *TINY)
    assert cold.returncode == 0, cold.stderr
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "rank", "score", "guess", "guess_prob", "reason"]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert all((pool / row["path"]).is_file() and row["guess"] == "" for row in rows)
    assert all(row["reason"].startswith("cold start") for row in rows)

    labels = tmp_path / "labels.csv"  # one per class, and one answered with no label (skipped)
    labels.write_text("path,label\ncat/0.png,cat\ndog/0.png,dog\nfox/0.png,fox\ncat/1.png,\n")
    again = run_cli("suggest", "--pool", str(pool), "--n", "5", "--out", str(out), "--labels", str(labels), *TINY)
    assert again.returncode == 0, again.stderr
    assert "cached features loaded" in again.stdout and "through the backbone" not in again.stdout
    rows = read_rows(out)
    assert len(rows) == 5
    assert not {row["path"] for row in rows} & {"cat/0.png", "dog/0.png", "fox/0.png", "cat/1.png"}
    assert all(row["guess"] in ("cat", "dog", "fox") and 0 < float(row["guess_prob"]) <= 1 for row in rows)


def test_near_copies_never_share_a_round(tmp_path):
    source = make_folder(tmp_path / "source", classes=("a", "b", "c"), per_class=1)
    pool = tmp_path / "pool"
    for image in source.rglob("*.png"):
        for copy in range(3):  # each image three times, under other names
            target = pool / image.parent.name / f"{copy}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target)
    out = tmp_path / "next.csv"
    assert main(["suggest", "--pool", str(pool), "--n", "5", "--out", str(out), *TINY]) == 0
    folders = [row["path"].split("/")[0] for row in read_rows(out)]
    assert sorted(folders) == ["a", "b", "c"]  # three distinct pictures: no more to suggest


@pytest.mark.parametrize("case, message", [
    ("empty", "has no images"),
    ("outside", "is not an image of the pool"),
    ("n", "--n must be at least 1"),
    ("both", "not both"),
    ("out", "--out must end in .csv"),
    ("missing-labels", "--labels not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, message):
    pool = make_folder(tmp_path / "pool", per_class=2) if case != "empty" else tmp_path / "empty"
    if case == "empty":
        (pool / "notes").mkdir(parents=True)
        (pool / "notes" / "readme.txt").write_text("no images here")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncat/0.png,cat\n../elsewhere/x.png,dog\n")
    args = {"n": ["--n", "0"], "both": ["--run", str(tmp_path), "--model", "x"], "out": ["--out", "x.txt"],
            "outside": ["--labels", str(labels)], "missing-labels": ["--labels", str(tmp_path / "no.csv")]}
    model = [] if case == "both" else list(TINY)
    argv = ["suggest", "--pool", str(pool), "--out", str(tmp_path / "next.csv"), *model, *args.get(case, [])]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("tlearn: error:") and "\n" not in error and message in error, error


def test_labels_table_rows_match_pool_images_by_path_or_stem(tmp_path):
    from tlearn.label import read_pool_labels, scan_pool

    pool = scan_pool(make_folder(tmp_path / "pool", per_class=2))
    labels = tmp_path / "labels.csv"
    labels.write_text("path\n")  # a header alone: nothing answered yet
    assert read_pool_labels(pool, labels).answered == set()
    labels.write_text("image,class\ncat/0,cat\ndog/1.png,dog\nfox/0.png,\n")
    known = read_pool_labels(pool, labels)
    assert {pool.paths[i]: name for i, name in known.by_index.items()} == {"cat/0.png": "cat", "dog/1.png": "dog"}
    assert {pool.paths[i] for i in known.answered} == {"cat/0.png", "dog/1.png", "fox/0.png"}
    assert known.class_names == ["cat", "dog"]
