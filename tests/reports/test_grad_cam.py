"""Grad-CAM for every model family tlearn builds, and the results-first report that shows it."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from test_models import FAMILIES

import tlearn
from tlearn.data.samples import ArraySamples
from tlearn.errors import DataError
from tlearn.reports._grad_cam import find_target, grad_cam
from tlearn.reports._multilabel import write_multilabel_report
from tlearn.reports._page import write_report
from tlearn.reports.run_report import report_run
from tlearn.run_folder import checkpoint
from tlearn.runtime import setup_runtime

from conftest import TINY_MODEL, needs_shared


@pytest.mark.parametrize("name,size", [*FAMILIES, ("timm:test_vit", 160)])
def test_grad_cam_of_every_family_is_an_image_sized_map(name, size):
    torch.manual_seed(0)
    model = tlearn.create_model(name, num_classes=3, weights="none")
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    cams = grad_cam(model, torch.randn(1, 3, size, size), torch.tensor([2]))
    assert cams.shape == (1, size, size), name
    assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1, name
    assert cams.max() > cams.min(), f"{name}: a constant map"
    # the model is handed back as it came: training mode and requires_grad flags, no gradients kept
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_token_models_target_the_last_attention_input_without_the_class_token():
    vit = tlearn.create_model("timm:test_vit", num_classes=3, weights="none")
    target = find_target(vit)
    assert target.layout == "tokens" and target.module is vit.backbone.blocks[-1].norm1
    assert target.prefix_tokens == vit.backbone.num_prefix_tokens == 1


def test_the_map_lights_the_object_not_the_background():
    """Real ImageNet weights (bundled Lite0 with its own 1000-class layer as the head): a CIFAR
    photo pasted into one quarter of a grey canvas; the top class's map is hot there, cool elsewhere."""
    import timm

    from tlearn.data.transforms import normalize_batch
    from tlearn.models._weights import bundled_lite0_state_dict

    files = sorted(needs_shared("cifar10-mini/val").glob("*/*.jpg"))[::150][:2]
    model = tlearn.create_model("efficientnet_lite0", 1000).eval()
    state = bundled_lite0_state_dict(timm.create_model("efficientnet_lite0"))
    model.head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    canvases, corners = [], []
    for index, file in enumerate(files):
        canvas = np.full((224, 224, 3), 128, np.uint8)
        top, left = index * 112, (1 - index) * 112  # top-right, then bottom-left
        canvas[top:top + 112, left:left + 112] = np.asarray(Image.open(file).convert("RGB").resize((112, 112)))
        canvases.append(torch.from_numpy(canvas).permute(2, 0, 1))
        corners.append((top, left))
    images = normalize_batch(torch.stack(canvases), model.info.preprocessing)
    with torch.no_grad():
        classes = model(images).argmax(1)
    cams = grad_cam(model, images, classes)
    for cam, (top, left) in zip(cams, corners):
        inside = torch.zeros_like(cam, dtype=torch.bool)
        inside[top:top + 112, left:left + 112] = True
        assert cam[inside].mean() > 2 * cam[~inside].mean(), (cam[inside].mean(), cam[~inside].mean())


def _probs(labels, predictions, count, confidence=0.8):
    probs = np.full((len(labels), count), (1 - confidence) / (count - 1))
    probs[np.arange(len(labels)), predictions] = confidence
    return probs


def _fake_explain(indices, classes):
    pixel = Image.new("RGB", (8, 8), (200, 10, 10))
    from tlearn.reports.cards import thumbnail_png

    return {i: (thumbnail_png(pixel), thumbnail_png(pixel)) for i in indices if i not in (0, 3)}


def _positions(page, *needles):
    found = [page.find(n) for n in needles]
    assert all(p >= 0 for p in found), dict(zip(needles, found))
    return found


def test_report_puts_results_first_and_folds_the_settings(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    predictions = np.array([0, 1, 2, 1, 1, 0, 0, 2])

    def load(index):
        if index == 3:
            raise DataError("cannot read image gone.jpg")  # deleted since training: the report goes on
        return Image.new("RGB", (20, 20), (index * 20, 0, 0))

    path = write_report(tmp_path, probs=_probs(labels, predictions, 3), labels=labels, class_names=["a", "b", "c"],
                        describe=lambda i: f"image{i}.jpg", load_image=load, settings={"model": {"name": "x"}},
                        explain=_fake_explain)
    page = path.read_text()
    order = _positions(page, "class='headline'", "id='samples'", "Per-class metrics", "Confusion matrix",
                       "id='mistakes'", "<details id='settings'>", "model.name")
    assert order == sorted(order)
    assert re.search(r"<details id='settings'><summary>.*model\.name.*</details>", page, re.S)
    assert page.count("<figure class='pair'>") >= 8 + 3 - 3  # explained: picture and overlay side by side
    assert "image not readable" in page and "Grad-CAM" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


def test_report_without_explanations_shows_thumbnails(tmp_path):
    labels, predictions = np.array([0, 1, 1]), np.array([0, 0, 1])

    def failing(indices, classes):
        raise ValueError("no Grad-CAM target known")

    page = write_report(tmp_path, probs=_probs(labels, predictions, 2), labels=labels, class_names=["a", "b"],
                        describe=str, load_image=lambda i: Image.new("RGB", (20, 20)), settings={},
                        explain=failing).read_text()
    assert "class='pair'" not in page and page.count("<figure>") == 3 + 1  # grid of 3, one mistake


def test_multilabel_report_has_the_same_order(tmp_path):
    rng = np.random.default_rng(0)
    targets = rng.random((10, 3)) > 0.5
    probs = np.clip(targets * 0.7 + rng.random((10, 3)) * 0.3, 0, 1)
    page = write_multilabel_report(tmp_path, probs=probs, targets=targets, class_names=["a", "b", "c"],
                                   thresholds=[0.5] * 3, describe=str, settings={"seed": 1},
                                   load_image=lambda i: Image.new("RGB", (20, 20)), explain=_fake_explain).read_text()
    order = _positions(page, "class='headline'", "id='samples'", "Per-class metrics", "id='mistakes'",
                       "<details id='settings'>")
    assert order == sorted(order) and "class='pair'" in page


def test_run_report_explains_in_memory_images(tmp_path):
    """A run folder's model and arrays held in memory (CIFAR, digits): every shown card has its overlay."""
    model = tlearn.create_model(TINY_MODEL, num_classes=2, weights="none", image_size=32)
    model.info.class_names = ["dark", "light"]
    checkpoint.save_model(tmp_path, model, epoch=0)
    checkpoint.save_model_info(tmp_path, model.info)
    rng = np.random.default_rng(0)
    samples = ArraySamples("memory", rng.integers(0, 255, (6, 24, 24, 3), dtype=np.uint8), [0, 1, 0, 1, 0, 1])
    page = report_run(tmp_path, samples, setup_runtime("cpu")).read_text()
    assert page.count("<figure class='pair'>") >= 6 and "<figure>" not in page
