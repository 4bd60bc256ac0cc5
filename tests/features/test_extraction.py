"""Feature extraction decodes inline when decoding is cheap against the forward pass, else in
worker processes; either way the features come back complete and in order."""
import pytest
import torch

import tlearn
import tlearn.features.extractor as features_mod
from tlearn.data import load_splits
from tlearn.features.extractor import FeatureExtractor
from tlearn.runtime import setup_runtime

from conftest import TINY_MODEL


@pytest.mark.parametrize("share, where", [(1e9, "decoding inline"), (0.0, "decoding in 2 worker processes")])
def test_decoding_place_follows_the_measured_costs(image_folder, monkeypatch, share, where, caplog):
    torch.manual_seed(0)
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    samples = load_splits(str(image_folder), val_split=0.0001, seed=0).train
    assert len(samples) > 2 * 5  # two inline batches, then the rest from the loader
    runtime = setup_runtime("cpu")
    reference = FeatureExtractor(runtime, batch_size=5, workers=0, backend="torch").extract(model, samples)
    monkeypatch.setattr(features_mod, "INLINE_DECODE_SHARE", share)
    monkeypatch.setattr(features_mod, "default_workers", lambda samples: 2)
    caplog.set_level("INFO", logger="tlearn")
    features = FeatureExtractor(runtime, batch_size=5, backend="torch").extract(model, samples)
    assert where in caplog.messages[-1]
    assert len(features) == len(samples) and torch.equal(features, reference)


def test_explicit_workers_are_kept(image_folder, caplog):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    samples = load_splits(str(image_folder), val_split=0.0001, seed=0).train
    caplog.set_level("INFO", logger="tlearn")
    FeatureExtractor(setup_runtime("cpu"), batch_size=5, workers=1, backend="torch").extract(model, samples)
    assert "decoding in 1 worker process)" in caplog.messages[-1]
