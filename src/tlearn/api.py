"""The Python API: train from a config, evaluate a run, load a run to predict."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from PIL import Image

from . import checkpoint, run_folder, training
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.images import open_rgb
from .data.loaders import make_loader
from .data.sources import DatasetSplits, load_builtin, load_data, load_splits, scan_class_folders
from .data.transforms import eval_transform
from .engine import evaluate as evaluate_loader
from .errors import ConfigError, DataError, RunFolderError
from .models.classifier import Classifier
from .models.factory import create_model
from .preprocessing import Preprocessing
from .runtime import seed_everything, setup_runtime
from .train_state import ResumePoint


def build_model(config: RunConfig, num_classes: int) -> Classifier:
    mc = config.model
    return create_model(mc.name, num_classes, mc.weights, aux_logits=mc.aux_weight > 0,
                        image_size=config.data.image_size)


def train(config: RunConfig, out: str | Path | None = None, log: Callable[[str], None] = print,
          data: DatasetSplits | None = None) -> tuple[dict, Path]:
    """Load data (unless given), build the model, fit; returns (summary, run folder)."""
    config = config.validate()
    data = data if data is not None else load_data(config)
    if len(data.class_names) < 2:
        raise DataError(f"need at least 2 classes, found {len(data.class_names)}")
    if data.skipped:
        shown = ", ".join(f"{p} ({r})" for p, r in data.skipped[:3])
        log(f"warning: skipped {len(data.skipped)} unusable file(s): {shown}"
            + (" ..." if len(data.skipped) > 3 else "") + " (full list in skipped_files.txt)")
    seed_everything(config.train.seed)  # the new head's initialisation follows the seed too
    model = build_model(config, len(data.class_names))
    run_dir = Path(out) if out is not None else run_folder.default_run_dir()
    log(f"{config.model.name} ({model.info.weights_id}), {len(data.class_names)} classes, "
        f"{len(data.train)} train / {len(data.val)} val images, input {model.info.preprocessing.crop_size}px; "
        f"run folder {run_dir}")
    try:
        summary = training.run_stages(model, data, config, run_dir, log=log)
    except KeyboardInterrupt:
        log(f"interrupted: the last completed epoch is saved; continue with: tlearn train --resume {run_dir}")
        raise
    return summary, run_dir


def resume(run_dir: str | Path, log: Callable[[str], None] = print) -> tuple[dict, Path]:
    """Continue an interrupted run from its last committed epoch (from the start if none was)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    if (run_dir / run_folder.SUMMARY_FILE).is_file():
        raise RunFolderError(f"run {run_dir} already finished (summary.json exists); nothing to resume")
    config = run_folder.read_config(run_dir)
    if not checkpoint.has_train_state(run_dir):
        log(f"run {run_dir} stopped before its first epoch was committed: starting it again")
        return train(config, run_dir, log=log)
    point = ResumePoint.read(run_dir)
    data = load_data(config)
    model = checkpoint.build_model(checkpoint.read_model_info(run_dir))
    checkpoint.load_weights(model, point.weights, run_dir / checkpoint.STATE_FILE)
    log(f"resuming {run_dir} after epoch {len(point.progress.rows)}")
    try:
        summary = training.run_stages(model.train(), data, config, run_dir, resume=point, log=log)
    except KeyboardInterrupt:
        log(f"interrupted: the last completed epoch is saved; continue with: tlearn train --resume {run_dir}")
        raise
    return summary, run_dir


def fit(model: Classifier, data: str | DatasetSplits, out: str | Path | None = None,
        log: Callable[[str], None] = print, **options: Any) -> dict:
    """Train `model` on a data source ("digits", a folder...) or loaded splits.

    `options` are any DataConfig/TrainConfig field (strategy, epochs, head_epochs, lr, ...)
    and `aux_weight`. strategy="as-is" trains exactly the parameters left trainable.
    """
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {"aux_weight"}
    unknown = set(options) - data_fields - train_fields - model_fields
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    source = data if isinstance(data, str) else "in-memory"
    config = RunConfig(
        data=DataConfig(source=source, **{k: v for k, v in options.items() if k in data_fields}),
        model=ModelConfig(name=model.info.name, weights=model.info.weights,
                          **{k: v for k, v in options.items() if k in model_fields}),
        train=TrainConfig(**{k: v for k, v in options.items() if k in train_fields}),
    ).validate()
    splits = load_data(config) if isinstance(data, str) else data
    return training.run_stages(model, splits, config, out, log=log)


@dataclass
class TrainedModel:
    """A trained classifier with everything needed to use it: preprocessing and class names."""

    model: Classifier
    preprocessing: Preprocessing
    class_names: list[str]

    @property
    def transform(self):
        return eval_transform(self.preprocessing)

    @torch.inference_mode()
    def predict(self, images: Iterable[str | Path | Image.Image | torch.Tensor] | str | Path,
                top_k: int = 1, batch_size: int = 32) -> list[dict[str, Any]]:
        """Top-k labels and probabilities for paths, PIL images, or preprocessed tensors."""
        if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
            images = [images]
        device = next(self.model.parameters()).device
        self.model.eval()
        tensors = [self._prepare(item) for item in images]
        results = []
        k = min(top_k, len(self.class_names))
        for start in range(0, len(tensors), batch_size):
            batch = torch.stack(tensors[start:start + batch_size]).to(device)
            probs = self.model(batch).float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            for row_values, row_indices in zip(values.tolist(), indices.tolist()):
                results.append({"labels": [self.class_names[i] for i in row_indices], "probs": row_values,
                                "label": self.class_names[row_indices[0]], "prob": row_values[0]})
        return results

    def _prepare(self, item) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            return item if item.ndim == 3 else item.squeeze(0)
        image = item if isinstance(item, Image.Image) else open_rgb(item)
        return self.transform(image.convert("RGB"))


def load(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a run folder's best model with its preprocessing and class names."""
    model = checkpoint.load_model(run_dir)
    model.to(torch.device(device))
    return TrainedModel(model, model.info.preprocessing, list(model.info.class_names))


def evaluate(run_or_model: str | Path | TrainedModel, data: str | Path, split: str = "val",
             batch_size: int = 64, device: str = "auto", workers: int | None = None) -> dict:
    """top1, top5, per_class and confusion of a run on a dataset, classes matched by name."""
    trained = run_or_model if isinstance(run_or_model, TrainedModel) else load(run_or_model)
    samples = _matched_samples(run_or_model, trained.class_names, str(data), split)
    runtime = setup_runtime(device)
    trained.model.to(runtime.device)
    loader = make_loader(samples, trained.transform, batch_size=batch_size, shuffle=False, workers=workers,
                         device=runtime.device)
    result = evaluate_loader(trained.model, loader, runtime, len(trained.class_names))
    return result.to_dict(trained.class_names)


def eval_samples_for(run_dir: str | Path, data: str, split: str = "val"):
    """The samples `tlearn eval` would use, labels mapped onto the run's classes."""
    return _matched_samples(run_dir, list(load_model_info(run_dir).class_names), str(data), split)


def load_model_info(run_dir: str | Path):
    return checkpoint.read_model_info(run_dir)


def _matched_samples(run_or_model, class_names: list[str], data: str, split: str):
    """Classes are matched by name; a class the model does not know is an error."""
    samples, names = _eval_samples(run_or_model, data, split)
    known = {name: i for i, name in enumerate(class_names)}
    foreign = [n for n in names if n not in known]
    if foreign:
        raise DataError(f"class(es) the model does not know: {', '.join(foreign[:5])}; "
                        f"the model knows {', '.join(class_names[:10])}")
    samples.labels = [known[names[label]] for label in samples.labels]
    return samples


def _eval_samples(run_or_model, data: str, split: str):
    if split not in ("val", "test", "train"):
        raise ConfigError(f"--split must be val, test or train; got {split!r}")
    if data in ("digits", "cifar10", "cifar100"):
        if data != "digits" and split == "test":
            samples, names = load_builtin(data, "test", _run_config(run_or_model).data.data_dir)
            return samples, names
        config = _run_config(run_or_model)
        splits = load_splits(data, val_split=config.data.val_split, seed=config.train.seed,
                             data_dir=config.data.data_dir)
        return (splits.train if split == "train" else splits.val), splits.class_names
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder not found: {data}")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split == "val" and (root / "test").is_dir() and (root / "train").is_dir():
        folder = root / "test"
    samples, names, _ = scan_class_folders(folder)
    return samples, names


def _run_config(run_or_model) -> RunConfig:
    if isinstance(run_or_model, TrainedModel):
        raise ConfigError("built-in datasets need the run folder (its split settings), not a loaded model")
    return run_folder.read_config(Path(run_or_model))
