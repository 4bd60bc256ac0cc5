"""--weights PATH: state dicts with or without their head, prefixes, misfits, no code execution."""
import pickle

import pytest
import torch
from safetensors.torch import save_file

import tlearn
from tlearn.errors import ModelError
from tlearn.models.factory import create_model


def _source_state():
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


def test_full_state_dict_with_imagenet_head_loads(tmp_path):
    state = _source_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = create_model("resnet18", 5, str(path))
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert model.head.out_features == 5
    assert model.info.weights_id.startswith("file:sha256:")


def test_headless_prefixed_safetensors_loads(tmp_path):
    state = {f"module.{k}": v for k, v in _source_state().items() if not k.startswith("fc.")}
    path = tmp_path / "backbone.safetensors"
    save_file(state, str(path))
    model = create_model("resnet18", 3, str(path))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, state["module.layer1.0.conv1.weight"])


def test_wrapped_checkpoint_with_model_prefix_loads(tmp_path):
    state = {f"model.{k}": v for k, v in _source_state().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = create_model("resnet18", 3, str(path))
    # unwrapped and unprefixed: every backbone tensor is the file's, down to the last BatchNorm
    backbone = model.backbone.state_dict()
    assert backbone and all(torch.equal(v, state[f"model.{k}"]) for k, v in backbone.items())
    assert model.head.out_features == 3 and model.info.weights_id.startswith("file:sha256:")


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    import torchvision

    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(ModelError, match=r"missing keys \(\d+\): conv1.weight.*unexpected keys"):
        create_model("resnet18", 3, str(path))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": Exploit()}, handle)
    with pytest.raises(ModelError, match="cannot read weights file"):
        create_model("resnet18", 3, str(path))
    assert not marker.exists()


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_source_state(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(ModelError) as info:
            create_model("resnet18", 3, str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_weights_file_is_a_user_error():
    with pytest.raises(tlearn.UserError, match="does not exist"):
        create_model("resnet18", 3, "no/such/file.pth")


def test_failed_download_names_the_offline_alternatives(monkeypatch):
    import torchvision.models as tv

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(tv.ResNet18_Weights.IMAGENET1K_V1, "get_state_dict", offline)
    with pytest.raises(tlearn.UserError, match=r"--weights PATH.*--model efficientnet_lite0"):
        create_model("resnet18", 3, "default")


def test_offline_cifar_is_one_clear_line(monkeypatch, tmp_path):
    import urllib.error

    import torchvision.datasets as datasets

    from tlearn.data.sources import load_splits

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    with pytest.raises(tlearn.UserError, match=r"could not download cifar10 .*--data FOLDER") as info:
        load_splits("cifar10", val_split=0.1, seed=0, data_dir=str(tmp_path))
    assert "\n" not in str(info.value)
