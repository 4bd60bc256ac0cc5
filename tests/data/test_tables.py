"""Labels from a .csv/.tsv table: columns by name or flag, ids by stem, split columns, skipped rows,
bad tables as one line, and a table through train, eval, predict, export, features and the API."""
import json
import logging

import numpy as np
import pytest

import tlearn
from tlearn.config import DataConfig
from tlearn.data._tables import read_table
from tlearn.data.sources import load_data, resolve_split
from tlearn.errors import DataError

from conftest import KILLER, TINY_MODEL, run_cli, write_image

CLASSES = ("cat", "dog", "fox")
TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "8", "--workers", "0"]


def make_images(root, count=24, suffix=".png", folder="imgs"):
    """root/folder/<i><suffix>, class i % 3; returns [(relative path, label)]."""
    items = []
    for i in range(count):
        relative = f"{folder}/{i}{suffix}"
        write_image(root / relative, i % 3, seed=i)
        items.append((relative, CLASSES[i % 3]))
    return items


def write_table(path, header, rows, delimiter=","):
    lines = [delimiter.join(header)] + [delimiter.join(str(cell) for cell in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def table_data(root, table, **options) -> DataConfig:
    return DataConfig(source=str(root), labels=str(table), **options)


def test_columns_found_by_header_name_in_any_case(tmp_path):
    items = make_images(tmp_path)
    table = write_table(tmp_path / "labels.csv", ["Notes", "FileName", "CLASS"],
                        [("x", path, label) for path, label in items])
    splits = load_data(table_data(tmp_path, table, val_split=0.25), seed=1)
    assert splits.class_names == list(CLASSES) and not splits.skipped
    assert len(splits.train) == 18 and len(splits.val) == 6
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2]  # stratified
    again = load_data(table_data(tmp_path, table, val_split=0.25), seed=1)
    other = load_data(table_data(tmp_path, table, val_split=0.25), seed=2)
    assert again.val.paths == splits.val.paths != other.val.paths  # seeded
    label_of = {str(tmp_path / path): label for path, label in items}
    assert all(label_of[p] == CLASSES[y] for p, y in zip(splits.train.paths, splits.train.labels))


def test_columns_named_by_flags_in_a_tsv(tmp_path):
    items = make_images(tmp_path, count=12)
    # "label" and "path" exist but hold something else: the flags win over the names
    table = write_table(tmp_path / "labels.tsv", ["path", "label", "fname", "breed"],
                        [("nothing", "x", path, f"{label} kind") for path, label in items], delimiter="\t")
    splits = load_data(table_data(tmp_path, table, path_col="FNAME", label_col="breed"), seed=0)
    assert splits.class_names == [f"{name} kind" for name in CLASSES]  # tab-separated: the space is kept
    assert len(splits.train) + len(splits.val) == 12 and not splits.skipped


def test_ids_without_extension_match_the_one_file_with_that_stem(tmp_path):
    make_images(tmp_path, count=6, suffix=".jpg", folder="a/b")
    write_image(tmp_path / "deep" / "er" / "loose.png", 1)
    write_image(tmp_path / "twin.png", 0)
    write_image(tmp_path / "twin.jpg", 0)
    rows = [(f"a/b/{i}", CLASSES[i % 3]) for i in range(6)]  # relative stems
    rows += [("loose", "dog"), ("a/b/0.jpg", "cat"), ("twin", "cat"), ("9", "fox")]
    table = write_table(tmp_path / "t.csv", ["id", "label"], rows)
    found = resolve_split(table_data(tmp_path, table), "all")
    assert sorted(found.samples.paths) == sorted([str(tmp_path / f"a/b/{i}.jpg") for i in range(6)]
                                                 + [str(tmp_path / "deep/er/loose.png")])
    reasons = dict(found.skipped)
    assert reasons[str(tmp_path / "a/b/0.jpg")] == "row 9: the same file as row 2"
    assert reasons[str(tmp_path / "twin")].startswith("row 10: ambiguous id: 2 image files")
    assert reasons[str(tmp_path / "9")].startswith("row 11: not found")


def test_split_and_is_valid_columns_are_honoured(tmp_path):
    items = make_images(tmp_path, count=18)
    words = ["train", "Train", "valid", "validation", "val", "test"]  # each for one cat, dog and fox
    split_table = write_table(tmp_path / "split.csv", ["image", "target", "split"],
                              [(path, label, words[i // 3]) for i, (path, label) in enumerate(items)])
    config = table_data(tmp_path, split_table, val_split=0.5)  # val_split is not used: val rows exist
    splits = load_data(config, seed=0)
    assert [len(splits.train), len(splits.val), len(resolve_split(config, "test").samples)] == [6, 9, 3]
    everything = resolve_split(config, "all")
    assert everything.split_names.count("test") == 3 and len(everything.samples) == 18
    flags = ["true", "0", "FALSE", "1", "false", "0"]
    valid_table = write_table(tmp_path / "valid.csv", ["file", "label", "is_valid"],
                              [(path, label, flags[i // 3]) for i, (path, label) in enumerate(items)])
    splits = load_data(table_data(tmp_path, valid_table), seed=0)
    assert sorted(splits.val.paths) == sorted(str(tmp_path / p) for i, (p, _) in enumerate(items) if i // 3 in (0, 3))
    assert len(splits.train) == 12


def test_missing_unreadable_and_unlabelled_rows_are_listed_with_row_numbers(tmp_path):
    items = make_images(tmp_path, count=12)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    rows = [(path, label) for path, label in items] + [("imgs/gone.png", "cat"), ("imgs/broken.png", "dog"),
                                                      ("imgs/0.png", "")]
    table = write_table(tmp_path / "t.csv", ["file", "label"], rows)
    splits = load_data(table_data(tmp_path, table), seed=0)
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in splits.skipped}
    assert reasons["gone.png"] == "row 14: not found"
    assert reasons["0.png"] == "row 16: no label"
    assert reasons["broken.png"].startswith("row 15: not an image")  # from train or val, whichever holds it
    assert len(splits.train) + len(splits.val) == 12 and len(splits.skipped) == 3
    with pytest.raises(DataError, match="row 14: not found.*--strict-images"):
        load_data(table_data(tmp_path, table, strict_images=True), seed=0)


BAD_TABLES = [
    ("file,label\n", "has a header but no rows"),
    ("", "is empty"),
    ("picture,label\n0.png,cat\n", "no path column"),
    ("file,what\n0.png,cat\n", "no label column"),
    ("file,label\nimgs/0.png,\nimgs/1.png,  \n", "label column 'label' of"),
    ("file,label,split\nimgs/0.png,cat,holdout\n", "row 2: 'holdout' is not a split"),
    # an unquoted comma in a path shifts the label column: refused, not read as made-up labels
    ("file,label\nimgs/0.png,cat\n\nimgs/a,b.png,dog\n", "row 4 has 3 cells where the header has 2 (quote"),
    ("file,label,split\nimgs/0.png,cat,train\nimgs/1.png,dog\n", "row 3 has 2 cells where the header has 3"),
    ("file,label,label\nimgs/0.png,cat,dog\n", "column 'label' appears 2 times in the header of"),
    ("file,Label,x,LABEL\nimgs/0.png,cat,1,dog\n", "(columns 2, 4, matched in any case)"),
    ("file label\nimgs/0.png cat\n", "the header is a single column: none of ',', ';', tab, '|' separates it"),
]


@pytest.mark.parametrize("text,message", BAD_TABLES, ids=[m for _, m in BAD_TABLES])
def test_bad_tables_are_one_line_and_exit_2(tmp_path, capsys, text, message):
    from tlearn.cli import main

    make_images(tmp_path, count=3)
    (tmp_path / "t.csv").write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--labels", str(tmp_path / "t.csv"), *TINY, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("name,delimiter,shown", [("semi.csv", ";", "';'"), ("tabs.csv", "\t", "tab"),
                                                   ("pipes.txt", "|", "'|'")])
def test_the_delimiter_is_detected_from_the_header_and_logged_once(tmp_path, caplog, name, delimiter, shown):
    items = make_images(tmp_path, count=12)
    # a quoted cell keeps its delimiter: the csv module still parses the rows
    write_image(tmp_path / f"odd{delimiter}name.png", 0)
    rows = [(path, label) for path, label in items] + [(f'"odd{delimiter}name.png"', "cat")]
    table = write_table(tmp_path / name, ["file", "label"], rows, delimiter=delimiter)
    caplog.set_level(logging.INFO, logger="tlearn")
    splits = load_data(table_data(tmp_path, table), seed=0)  # reads the table for train and for val
    assert splits.class_names == list(CLASSES) and not splits.skipped
    assert str(tmp_path / f"odd{delimiter}name.png") in splits.train.paths + splits.val.paths
    announced = [record.getMessage() for record in caplog.records
                 if record.levelno == logging.INFO and "separated by" in record.getMessage()]
    assert announced == [f"{name}: columns separated by {shown} (detected from the header)"]


def test_a_tie_goes_to_the_comma_and_a_tsv_is_always_tab_separated(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="tlearn")
    tie = tmp_path / "tie.csv"
    tie.write_text("file,label;kind\na.png,cat;x\n")  # ',' and ';' both make two cells
    assert read_table(tie, label_col="label;kind").rows[0].labels == ("cat;x",)
    tsv = tmp_path / "notes.tsv"
    tsv.write_text("file\tlabel\tnotes, free, text, more\na.png\tcat\tsome, text\n")  # more commas than tabs
    assert read_table(tsv).rows[0].labels == ("cat",)
    assert not [record for record in caplog.records if "separated by" in record.getMessage()]


def test_unknown_column_flag_and_missing_table_in_a_real_process(tmp_path):
    make_images(tmp_path, count=3)
    write_table(tmp_path / "t.csv", ["file", "label"], [("imgs/0.png", "cat")])
    for extra, message in ((["--labels", str(tmp_path / "t.csv"), "--path-col", "nope"], "--path-col 'nope' is not"),
                           (["--labels", str(tmp_path / "none.csv")], "labels table not found"),
                           (["--label-col", "label"], "need --labels")):
        result = run_cli("train", "--data", str(tmp_path), *extra, *TINY)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_a_table_through_train_resume_eval_predict_export_and_features(tmp_path, capsys):
    """Two-stage (L-BFGS probe on cached features, then fine-tuning), killed after its first commit
    and resumed, with its report; then every command that reads the run's data reads the same table."""
    import subprocess
    import sys

    from tlearn.cli import main

    items = make_images(tmp_path / "root", count=30)
    rows = [(path.removesuffix(".png"), label, "test" if i >= 24 else "train") for i, (path, label) in enumerate(items)]
    table = write_table(tmp_path / "t.csv", ["fname", "species", "split"], rows + [("imgs/lost", "cat", "train")])
    root, run = tmp_path / "root", tmp_path / "run"
    args = ["train", "--data", str(root), "--labels", str(table), "--path-col", "fname", "--label-col", "species",
            *TINY, "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "1", "--val-split", "0.25",
            "--out", str(run)]
    killer = KILLER
    killed = subprocess.run([sys.executable, str(killer), "commit:1", *args], capture_output=True, text=True,
                            timeout=300, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert main(["train", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["num_train"], summary["num_val"], summary["skipped_files"]) == (18, 6, 1)
    assert summary["class_names"] == list(CLASSES) and summary["epochs_completed"] == 2
    assert (run / "report.html").is_file()
    assert (run / "skipped_files.txt").read_text() == f"{root}/imgs/lost\trow 32: not found (no image file with " \
                                                      "this name or stem)\n"
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(root), "--json"]) == 0  # the table's test rows by default
    assert json.loads(capsys.readouterr().out)["count"] == 6
    assert tlearn.evaluate(run, root, split="val")["count"] == 6
    # another table of the same format: the run remembers its columns
    other = write_table(tmp_path / "other.csv", ["fname", "species"], [row[:2] for row in rows[:9]])
    assert main(["eval", str(run), "--data", str(root), "--labels", str(other), "--split", "all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 9
    assert main(["predict", str(run), str(root / "imgs" / "3.png")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] in CLASSES  # path, label, probability
    assert main(["export", str(run)]) == 0
    assert "parity on 6 validation images" in capsys.readouterr().out
    assert main(["features", str(run), "--data", str(root), "--out", str(tmp_path / "f.npz")]) == 0
    features = np.load(tmp_path / "f.npz")
    assert len(features["labels"]) == 30 and list(features["split"]).count("test") == 6


def test_fit_with_labels_in_the_python_api(tmp_path):
    items = make_images(tmp_path, count=12)
    table = write_table(tmp_path / "t.csv", ["file", "label"], items)
    model = tlearn.create_model(TINY_MODEL, num_classes=3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(tmp_path), out=tmp_path / "run", labels=str(table), strategy="linear-probe",
                         epochs=1, workers=0, report=False)
    assert summary["class_names"] == list(CLASSES) and summary["num_train"] + summary["num_val"] == 12
