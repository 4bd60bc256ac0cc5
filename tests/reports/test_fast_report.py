"""A run's report needs no pass of its own: a probe's comes from the cached features and the best
head, a fine-tuned run's from its best epoch's validation, and each says what that pass would."""
import pytest
import torch

import tlearn
import tlearn.infer.engine as engine  # where the report (and the run's end) would run the model
import tlearn.training.outputs as run_outputs
from tlearn.data.loaders import make_loader
from tlearn.data.transforms import eval_transform
from tlearn.infer.engine import predict_logits
from tlearn.runtime import setup_runtime

from conftest import TINY_MODEL


def _eager_val_probabilities(run, image_folder):
    """The saved best model's validation probabilities, through PyTorch eager."""
    best = tlearn.load(run)
    samples = tlearn.api.eval_samples(run, str(image_folder), "val")
    runtime = setup_runtime("cpu")
    loader = make_loader(samples, eval_transform(best.preprocessing), batch_size=64, shuffle=False, workers=0,
                         device=runtime.device)
    return predict_logits(best.model, loader, runtime).softmax(dim=1)


@pytest.mark.parametrize("solver, epochs", [("lbfgs", 1), ("sgd", 3)])
def test_probe_report_uses_the_cached_features(image_folder, tmp_path, monkeypatch, solver, epochs):
    seen = {}
    real = run_outputs.best_val_probabilities

    def spy(model, run):
        seen["probs"] = real(model, run)
        return seen["probs"]

    monkeypatch.setattr(run_outputs, "best_val_probabilities", spy)
    monkeypatch.setattr(engine, "classify",
                        lambda *a, **k: pytest.fail("the report ran the backbone again"))
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    run = tmp_path / "run"
    tlearn.fit(model, str(image_folder), out=run, strategy="linear-probe", epochs=epochs, head_solver=solver,
               val_split=0.25, lr=0.05)
    assert (run / "report.html").is_file() and seen["probs"] is not None
    monkeypatch.undo()
    eager = _eager_val_probabilities(run, image_folder)
    assert torch.allclose(seen["probs"], eager, atol=1e-4)  # onnxruntime features agree with PyTorch's


def test_fine_tuned_run_is_reported_from_its_best_epochs_validation(image_folder, tmp_path, monkeypatch):
    seen = {}
    real = run_outputs.best_val_probabilities
    monkeypatch.setattr(run_outputs, "best_val_probabilities",
                        lambda model, run: seen.setdefault("probs", real(model, run)))
    monkeypatch.setattr(engine, "classify",
                        lambda *a, **k: pytest.fail("the report ran the model again"))
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    run = tmp_path / "run"
    tlearn.fit(model, str(image_folder), out=run, strategy="finetune", epochs=2, val_split=0.25, lr=0.05)
    assert (run / "report.html").is_file() and seen["probs"] is not None
    monkeypatch.undo()
    eager = _eager_val_probabilities(run, image_folder)
    assert torch.allclose(seen["probs"], eager, atol=1e-5)  # the saved model, evaluated again, agrees


def test_report_scores_match_scikit_learn():
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tlearn.reports._page import confusion_matrix as numpy_confusion
    from tlearn.reports._page import per_class_scores

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))  # class 5 never predicted
    matrix = numpy_confusion(labels, predictions, 7)  # class 6 has no images
    assert np.array_equal(matrix, confusion_matrix(labels, predictions, labels=list(range(7))))
    expected = precision_recall_fscore_support(labels, predictions, labels=list(range(7)), zero_division=0)
    for ours, theirs in zip(per_class_scores(matrix), expected):
        assert np.allclose(ours, theirs)
