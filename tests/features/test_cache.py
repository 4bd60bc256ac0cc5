"""Feature cache keys, the onnxruntime backend's parity, the L-BFGS head vs scikit-learn."""
import os

import numpy as np
import pytest
import torch

import tlearn
import tlearn.features.extractor as features_mod
from tlearn.data import load_splits
from tlearn.features.extractor import FeatureExtractor, cache_key
from tlearn.features.head_solver import fit_linear_head_lbfgs
from tlearn.runtime import setup_runtime

from conftest import TINY_MODEL, run_cli


@pytest.fixture
def tiny(image_folder):
    torch.manual_seed(0)
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    return model, load_splits(str(image_folder), val_split=0.25, seed=0)


def test_cache_key_follows_model_weights_preprocessing_and_files(tiny, image_folder):
    model, data = tiny
    prep = model.info.preprocessing
    key = cache_key(model, prep, data.train)
    assert cache_key(model, prep, load_splits(str(image_folder), val_split=0.25, seed=0).train) == key
    torch.manual_seed(1)
    other_weights = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    assert cache_key(other_weights, prep, data.train) != key
    other_model = tlearn.create_model("timm:test_efficientnet", 3, weights="none", image_size=32)
    assert cache_key(other_model, other_model.info.preprocessing, data.train) != key
    assert cache_key(model, prep.with_image_size(48), data.train) != key
    assert cache_key(model, prep, data.train, precision="bfloat16") != key
    with torch.no_grad():
        model.head.weight.add_(1)  # the head is not part of the features
    assert cache_key(model, prep, data.train) == key
    path = data.train.paths[0]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert cache_key(model, prep, data.train) != key


def test_second_run_reads_the_cache_without_the_backbone(tiny, tmp_path, monkeypatch):
    model, data = tiny
    runtime = setup_runtime("cpu")
    extractor = FeatureExtractor(runtime, cache_dir=tmp_path)
    first = extractor.cached(model, data.train)

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although the cache was valid")

    monkeypatch.setattr(features_mod, "make_backend", no_backbone)
    second = extractor.cached(model, data.train)
    assert torch.equal(first, second)
    (next(tmp_path.glob("features/*.npy"))).write_bytes(b"damaged")
    monkeypatch.undo()
    third = extractor.cached(model, data.train)
    assert torch.allclose(first, third, atol=1e-4)


def test_onnxruntime_features_match_pytorch_and_leave_the_model_alone(tmp_path, caplog):
    caplog.set_level("INFO", logger="tlearn")
    # Every row is compared, so the zero-padded last batch must give the same features as PyTorch.
    data = load_splits("digits", val_split=0.1, seed=0)
    model = tlearn.create_model("efficientnet_lite0", 10, image_size=64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runtime = setup_runtime("cpu")
    assert len(data.val) % 64  # the graph's batch is fixed at 64: the short last batch is padded
    fast = FeatureExtractor(runtime, batch_size=64, cache_dir=tmp_path).extract(model, data.val)
    assert "onnxruntime" in caplog.messages[-1]
    reference = FeatureExtractor(runtime, backend="torch").extract(model, data.val)
    assert (fast - reference).abs().max().item() <= 1e-3
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_graph_that_disagrees_with_pytorch_falls_back_to_pytorch(tiny, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="tlearn")
    import tlearn.features.backends as extraction

    model, data = tiny
    runtime = setup_runtime("cpu")

    class WrongSession:  # stands in for a graph onnxruntime computes differently
        def run(self, outputs, feeds):
            return [np.zeros((len(feeds["images"]), model.info.num_features), dtype=np.float32)]

    monkeypatch.setattr(extraction, "_session", lambda path, threads: WrongSession())
    monkeypatch.setattr(extraction, "_VERIFIED", set())
    features = FeatureExtractor(runtime, cache_dir=tmp_path).extract(model, data.train)
    reference = FeatureExtractor(runtime, backend="torch").extract(model, data.train)
    assert any("differ from PyTorch" in m for m in caplog.messages) and "(torch," in caplog.messages[-2]
    assert torch.allclose(features, reference, atol=1e-5)
    assert not extraction._VERIFIED  # a failed check is not remembered as a pass


def test_lbfgs_head_matches_scikit_learn():
    """The default sweep against scikit-learn's default LogisticRegression on the same features.

    64 px as in the demo: the 32 px features are so ill-conditioned that both solvers took minutes.
    Half the digits held out: half the fitting, and twice the images to compare on.
    """
    from sklearn.linear_model import LogisticRegression

    data = load_splits("digits", val_split=0.5, seed=0)
    model = tlearn.create_model("efficientnet_lite0", 10, image_size=64)
    runtime = setup_runtime("cpu")
    # the backend does not matter here (its parity with PyTorch is tested above): the fast one
    extractor = FeatureExtractor(runtime)
    train, val = extractor.extract(model, data.train), extractor.extract(model, data.val)
    train_y, val_y = torch.tensor(data.train.labels), torch.tensor(data.val.labels)
    ours = fit_linear_head_lbfgs(model.head, train, train_y, val, val_y).val_top1
    head_top1 = (model.head(val).argmax(1) == val_y).float().mean().item()
    reference = LogisticRegression(max_iter=3000).fit(train.numpy(), train_y.numpy()).score(val.numpy(), val_y.numpy())
    assert abs(ours - head_top1) < 1e-6
    assert ours >= reference - 0.01, (ours, reference)


def test_features_command_writes_npz(split_folder, tmp_path):
    out = tmp_path / "feats.npz"
    result = run_cli("features", "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
                     "--data", str(split_folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    arrays = np.load(out, allow_pickle=False)
    assert arrays["embeddings"].shape[0] == len(arrays["labels"]) == len(arrays["paths"]) == 24
    assert list(arrays["class_names"]) == ["cat", "dog", "fox"] and set(arrays["split"]) == {"train", "val"}


def test_a_large_entry_is_memory_mapped_and_streams_into_the_solver(tmp_path, monkeypatch):
    monkeypatch.setattr(features_mod, "map_above_bytes", lambda: 0)  # every entry counts as large
    data = load_splits("digits", val_split=0.1, seed=0)
    model = tlearn.create_model(TINY_MODEL, 10, weights="none", image_size=32)
    extractor = FeatureExtractor(setup_runtime("cpu"), batch_size=64, cache_dir=tmp_path)
    written = extractor.cached(model, data.train)  # streamed into the file batch by batch, then mapped
    read = extractor.cached(model, data.train)
    entry = str(next(tmp_path.glob("features/*.npy")))
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            assert sum(entry in line for line in maps) >= 2  # both tensors are views of the mapped file
    assert torch.equal(written, read) and torch.equal(written, extractor.extract(model, data.train))


def test_a_rerun_on_the_same_features_loads_the_solved_head(image_folder, tmp_path, caplog):
    import logging

    runs = []
    for name in ("first", "second"):
        torch.manual_seed(0)
        model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
        with caplog.at_level(logging.INFO, logger="tlearn"):
            tlearn.fit(model, str(image_folder), out=tmp_path / name, strategy="linear-probe", val_split=0.25,
                       cache_dir=str(tmp_path / "cache"), report=False)
        runs.append(tlearn.load(tmp_path / name).model.head.state_dict())
    assert caplog.text.count("loaded from") >= 1 and "the same features were solved before" in caplog.text
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    stored = next((tmp_path / "cache" / "heads").glob("*.safetensors"))
    stored.write_bytes(b"damaged")  # solved again, never trusted
    caplog.clear()
    torch.manual_seed(0)
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    with caplog.at_level(logging.INFO, logger="tlearn"):
        tlearn.fit(model, str(image_folder), out=tmp_path / "third", strategy="linear-probe", val_split=0.25,
                   cache_dir=str(tmp_path / "cache"), report=False)
    assert "the same features were solved before" not in caplog.text
    third = tlearn.load(tmp_path / "third").model.head.state_dict()
    assert all(torch.equal(runs[0][k], third[k]) for k in third)
