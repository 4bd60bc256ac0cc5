"""Test-time augmentation: flipped logits averaged by hand, 5 and 10 views, the onnxruntime engine
agreeing with eager, and `eval --json --tta` / `predict --tta` on a tiny run."""
import json

import pytest
import torch
from PIL import Image

from conftest import TINY_MODEL, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained():
    """A random test_resnet at 32 px as a TrainedModel (no training needed for the arithmetic)."""
    from tlearn.api import TrainedModel
    from tlearn.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(TINY_MODEL, 3, "none", image_size=32).eval()
    return TrainedModel(model, model.info.preprocessing, ["a", "b", "c"])


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror(trained, tmp_path):
    make_folder(tmp_path / "images", per_class=1)
    path = tmp_path / "images" / "dog" / "0.png"
    plain = trained.prepare(path)  # (C, H, W), normalised
    with torch.inference_mode():
        logits = trained.model(torch.stack([plain, plain.flip(-1)])).float()
    by_hand = logits.mean(0).softmax(0)
    result = trained.predict(path, top_k=3, tta=True)[0]
    assert result["probs"] == pytest.approx(by_hand.sort(descending=True).values.tolist(), abs=1e-6)
    assert result["label"] == ["a", "b", "c"][int(by_hand.argmax())]
    # the mirror changes the answer's probabilities: the test could tell an unflipped second view
    plain_probs = trained.predict(path, top_k=3)[0]["probs"]
    assert plain_probs == pytest.approx(logits[0].softmax(0).sort(descending=True).values.tolist(), abs=1e-6)
    assert plain_probs != pytest.approx(result["probs"], abs=1e-6)


@pytest.mark.parametrize("tta,crops,count", [(True, 1, 2), (False, 5, 5), (True, 5, 10)])
def test_views_per_image(trained, tta, crops, count):
    from tlearn.data.preprocessing import Preprocessing
    from tlearn.infer._tta import views_for, views_transform

    image = Image.new("RGB", (50, 40), (10, 200, 30))
    views = views_for(tta, crops)
    assert views.count == count
    for prep in (trained.preprocessing, Preprocessing(40, 32, "bilinear", (0.5,) * 3, (0.5,) * 3)):
        stack = views_transform(prep, views)(image)
        assert stack.shape == (count, 3, 32, 32)
    assert views_for(False, 1) is None  # the plain image alone


def test_views_and_the_plain_view_in_the_eager_and_onnx_engines(trained, tmp_path, monkeypatch):
    """classify's views: the plain view equals plain evaluation, the flip is the mirror's logits, and
    the onnxruntime engine (used for many images on CPU) gives the eager engine's logits."""
    from tlearn.data._folders import list_class_folders
    from tlearn.infer import engine as inference
    from tlearn.infer._tta import Views
    from tlearn.runtime import setup_runtime

    folder = make_folder(tmp_path / "images", per_class=2)
    samples = list_class_folders(folder)[0]
    runtime = setup_runtime("cpu")
    plain, _ = inference.classify(trained.model, samples, runtime)
    views = Views(flip=True, crops=5)
    eager, _ = inference.classify(trained.model, samples, runtime, views=views)
    assert eager.shape == (len(samples), 10, 3)
    assert not trained.preprocessing.whole_image  # so FiveCrop's centre crop is the plain image
    # The views run in larger batches than plain evaluation, and oneDNN may pick other kernels for
    # another batch shape (AVX-512 Xeons do: 2e-9 apart); a wrong view would differ by far more.
    torch.testing.assert_close(eager[:, views.plain_index(trained.preprocessing)], plain, rtol=1e-5, atol=1e-5)
    flip_only, _ = inference.classify(trained.model, samples, runtime, views=Views(flip=True))
    torch.testing.assert_close(flip_only[:, 0], plain, rtol=1e-5, atol=1e-5)
    mirrored = torch.stack([trained.prepare(samples.paths[i]).flip(-1) for i in range(len(samples))])
    with torch.inference_mode():
        assert torch.allclose(flip_only[:, 1], trained.model(mirrored).float(), atol=1e-5)
    monkeypatch.setattr(inference, "ENGINE_MIN_IMAGES", 0)  # the onnxruntime engine, as for >= 256 images
    engine, _ = inference.classify(trained.model, samples, runtime, views=views, cache_dir=tmp_path / "cache")
    assert torch.allclose(engine, eager, atol=1e-3)


def test_eval_json_tta_and_predict_tta(tmp_path, capsys):
    from tlearn import api
    from tlearn.cli import main

    data = make_folder(tmp_path / "split", split_dirs=True)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--strategy", "linear-probe", "--epochs", "1", "--no-report",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), "--json", "--tta", "--tta-crops", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tta_views"] == 10 and 0.0 <= report["top1_tta"] <= 1.0 and "top5_tta" in report
    plain = api.evaluate(run, data)
    assert report["top1"] == plain["top1"] and "top1_tta" not in plain  # top1 stays the plain figure
    flipped = api.evaluate(run, data, tta=True)
    assert flipped["tta_views"] == 2 and flipped["top1"] == plain["top1"]
    assert main(["predict", str(run), str(data / "val"), "--tta", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 6 and all(len(line.split()) == 5 for line in lines[1:])  # path, 2 labels, 2 probs


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_bad_tta_crops_is_one_line_and_exit_2(command, tmp_path):
    args = [command, str(tmp_path), *(["--data", str(tmp_path)] if command == "eval" else [str(tmp_path)])]
    result = run_cli(*args, "--tta-crops", "3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tta-crops must be 1 or 5, got 3" in lines[0], result.stderr


def test_tlearn_predict_stays_the_function_after_the_cli_imports_its_module():
    """The API's `tlearn.predict` and the command's module must not share a name: importing the
    module would replace the function on the package."""
    import tlearn
    import tlearn.cli  # noqa: F401
    import tlearn.infer.prediction  # noqa: F401
    import tlearn.training.runner  # noqa: F401  (a package named like an API function would shadow it)

    assert callable(tlearn.predict) and callable(tlearn.train)
