"""Evaluation of a whole (fine-tuned) classifier on CPU: the onnxruntime engine for many images,
PyTorch eager for a few, the same answers either way."""
import logging

import numpy as np
import torch

import tlearn
from tlearn.data.loaders import make_loader
from tlearn.data.samples import ArraySamples
from tlearn.data.transforms import eval_transform
from tlearn.infer.engine import ENGINE_MIN_IMAGES, classify, predict_logits
from tlearn.runtime import setup_runtime

from conftest import TINY_MODEL


def test_many_images_go_through_the_engine_and_match_pytorch(tmp_path, caplog):
    torch.manual_seed(0)
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # fine-tuned-like: a head that is not all zeros
    rng = np.random.default_rng(0)
    count = ENGINE_MIN_IMAGES + 7  # a short last batch too (263 images)
    samples = ArraySamples("random", rng.integers(0, 255, (count, 32, 32, 3), dtype=np.uint8),
                           [int(v) for v in rng.integers(0, 3, count)])
    runtime = setup_runtime("cpu")
    with caplog.at_level(logging.INFO, logger="tlearn"):
        logits, labels = classify(model, samples, runtime, batch_size=64, workers=0, cache_dir=tmp_path)
    assert "263 images through the backbone (onnxruntime" in caplog.text
    loader = make_loader(samples, eval_transform(model.info.preprocessing), batch_size=64, shuffle=False,
                         workers=0, device=runtime.device)
    eager = predict_logits(model, loader, runtime)
    assert logits.shape == eager.shape == (count, 3) and labels.tolist() == samples.labels
    assert (logits - eager).abs().max() < 1e-3
    assert torch.equal(logits.argmax(1), eager.argmax(1))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlearn"):
        few, _ = classify(model, samples.subset(list(range(10))), runtime, batch_size=64, workers=0,
                          cache_dir=tmp_path)
    assert "onnxruntime" not in caplog.text  # a few images: PyTorch eager itself
    # The same eager computation in a batch of 10 instead of 64: oneDNN may pick other kernels for
    # another batch shape (AVX-512 Xeons do), so the last float32 digits may differ (9e-8 seen);
    # a wrong image, crop or order would differ by far more than 1e-5.
    torch.testing.assert_close(few, eager[:10], rtol=1e-5, atol=1e-5)
