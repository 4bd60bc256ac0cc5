"""The command line through a real subprocess: demo wiring, eval, resume, and bad input."""
import json

import pytest

from conftest import TINY_MODEL, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def test_demo_wiring_shortened(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), "--epochs", "1", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    assert "linear-probe" in result.stdout and "finetune" in result.stdout and "val top-1" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["linear-probe", "finetune"]
    assert summary["stages"][0]["val_top1"] > 0.5  # real Lite0 features separate digits even at 32 px
    assert (out / "model.safetensors").is_file()


def test_train_then_eval_json(tmp_path, split_folder, capsys):
    out = tmp_path / "run"
    result = run_cli("train", "--data", str(split_folder), *TINY, "--strategy", "linear-probe",
                     "--epochs", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "trainable params" in result.stdout and "frozen params" in result.stdout
    result = run_cli("eval", str(out), "--data", str(split_folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"top1", "top5", "per_class", "confusion"} <= set(report)
    assert set(report["per_class"]) == {"cat", "dog", "fox"} and len(report["confusion"]) == 3
    from tlearn.cli import main  # the text table, in-process (the subprocess path is proven above)

    assert main(["eval", str(out), "--data", str(split_folder / "val")]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" in text and "top-5" in text and "per-class accuracy" in text


BAD_INPUTS = [
    (["train", "--data", "no/such/folder", *TINY], "not found"),
    (["train", "--data", "{empty_class}", *TINY], "no usable images"),
    (["train", "--data", "{no_images}", *TINY], "no class folders"),
    (["train", "--data", "{one_class}", *TINY], "at least 2 classes"),
    (["train", "--data", "{mismatch}", *TINY], "classes differ"),
    (["train", "--data", "{images}", "--model", "resnet51", "--weights", "none"], "did you mean resnet50"),
    (["train", "--data", "{images}", "--model", "resnet18", "--weights", "{bad_weights}"], "do not fit"),
    (["train", "--data", "{images}", *TINY, "--strategy", "wiggle"], "invalid choice"),
    (["train", "--data", "{images}", *TINY, "--epochs", "-1"], "--epochs"),
    (["train", "--data", "{images}", *TINY, "--lr", "0"], "--lr"),
    (["train", "--data", "{images}", *TINY, "--val-split", "1.5"], "--val-split"),
    (["train", "--data", "{images}", "--model", TINY_MODEL, "--image-size", "8"], "--image-size"),
    (["train", "--data", "{images}", "--model", TINY_MODEL, "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "{images}", *TINY, "--amp", "--device", "cpu"], "--amp"),
    (["train", "--data", "{images}", *TINY, "--epochs", "many"], "invalid int"),
    (["eval", "no/such/run", "--data", "{images}"], "run folder not found"),
    (["train", "--resume", "no/such/run"], "run folder not found"),
    (["models", "zzz-no-such-model-zzz"], "no model matches"),
    (["train", "--data", "{images}", *TINY, "--strict-images"], "broken.jpg"),
    (["train", "--data", "{images}", *TINY, "--head-epochs", "-2"], "--head-epochs"),
    (["train", "--data", "{images}", *TINY, "--backbone-lr-mult", "0"], "--backbone-lr-mult"),
    (["train", "--data", "{images}", *TINY, "--label-smoothing", "1.5"], "--label-smoothing"),
    (["train", "--data", "{images}", *TINY, "--weight-decay", "-1"], "--weight-decay"),
    (["train", "--data", "{images}", *TINY, "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["train", "--data", "{images}", *TINY, "--workers", "-1"], "--workers"),
    (["train", "--data", "{images}", *TINY, "--device", "tpu"], "invalid choice"),
    (["train", *TINY], "needs --data"),
    (["predict", "no/such/run", "{images}"], "run folder not found"),
    (["export", "no/such/run"], "run folder not found"),
    (["export", "no/such/run", "--format", "tflite"], "invalid choice"),
    (["features", "--data", "{images}", "--out", "x.npz"], "run folder or --model"),
]


@pytest.fixture
def bad_data(tmp_path):
    images = make_folder(tmp_path / "images", per_class=4)
    empty = make_folder(tmp_path / "empty_class", per_class=4)
    (empty / "owl").mkdir()
    no_images = tmp_path / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("nothing")
    one = make_folder(tmp_path / "one_class", classes=("cat",), per_class=4)
    mismatch = make_folder(tmp_path / "mismatch", per_class=8, split_dirs=True)
    (mismatch / "val" / "fox").rename(mismatch / "val" / "wolf")
    bad_weights = tmp_path / "bad.pth"
    import torch
    torch.save({"conv.weight": torch.zeros(3)}, bad_weights)
    strict = make_folder(tmp_path / "strict", per_class=4)
    (strict / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return {"images": images, "empty_class": empty, "no_images": no_images, "one_class": one,
            "mismatch": mismatch, "bad_weights": bad_weights, "strict": strict}


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a[:1] + a[2:3]) + " " + m for a, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, message, bad_data, tmp_path):
    if "--strict-images" in args:
        args = [a.replace("{images}", "{strict}") for a in args]
    args = [a.format(**bad_data) if "{" in a else a for a in args]
    result = run_cli(*args, "--out", str(tmp_path / "out")) if args[0] == "train" and "--resume" not in args \
        else run_cli(*args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
