"""`tlearn eval`: a run's figures on a dataset, classes matched by name, split as the run was
(`tlearn.evaluate`); the probabilities and samples behind them for the report."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig, LabelTable
from ..data import BUILTIN, Samples, default_eval_split, resolve_split
from ..errors import ConfigError, DataError, UserError
from ..metrics import (
    DEFAULT_THRESHOLD,
    ClassificationMeter,
    class_counts,
    imbalance_ratio,
    remap_multi_hot,
    score,
    warn_if_imbalanced,
)
from ..run_folder import checkpoint
from ..run_folder import records as run_folder
from ..runtime import setup_runtime
from ..task import SINGLE_LABEL_TASK, Task
from ._overlap import count_training_images
from ._passes import Passes
from ._tta import Views, views_for
from .calibration import calibration_figures
from .trained import TrainedModel, load


def evaluate(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
             batch_size: int = 64, device: str = "auto", workers: int | None = None, *,
             labels: str | Path | None = None, path_col: str | None = None, label_col: str | None = None,
             label_delim: str | None = None, tta: bool = False, tta_crops: int = 1, engine: str = "auto") -> dict:
    """top1, top5, balanced_acc, f1_macro, per_class and confusion of a run on a dataset, classes
    matched by name; warns when the data's largest class has 10x the images of its smallest.
    A multi-label run: map, f1_micro, f1_macro (at its stored thresholds), per_class AP/F1/support.

    `split`: train, val, test or all; by default the validation split, or all of a folder
    without split folders, or a table's test rows. Built-in data sets, plain folders and tables
    are split as the run was. `labels`: a .csv/.tsv table of paths under `data` and labels; a
    run trained on a table reads it again when `data` is the run's own data folder.
    `tta`: also top1_tta and top5_tta (multi-label: map_tta), the logits of each image and its
    horizontal flip averaged; `tta_crops=5`: five crops (and their flips with `tta`), tta.py.
    `engine`: auto (onnxruntime for many images on the CPU, else PyTorch), torch, onnx, int8 (the
    graph of `tlearn export --quantize int8`) or an exported .onnx file, as `tlearn predict` takes.
    """
    return evaluation(run_or_model, data, split, batch_size, device, workers, labels=labels, path_col=path_col,
                      label_col=label_col, label_delim=label_delim, tta=tta, tta_crops=tta_crops,
                      engine=engine).result


@dataclass
class Evaluation:
    result: dict  # what `evaluate` returns
    probs: torch.Tensor  # softmax(logits / T) (multi-label: sigmoid) of every sample, in order (the report's input)
    samples: Samples


def evaluation(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
               batch_size: int = 64, device: str = "auto", workers: int | None = None, *,
               labels: str | Path | None = None, path_col: str | None = None,
               label_col: str | None = None, label_delim: str | None = None, tta: bool = False,
               tta_crops: int = 1, engine: str = "auto") -> Evaluation:
    """`evaluate`, with the probabilities and samples behind the figures (one pass for both)."""
    views = views_for(tta, tta_crops)
    if views is not None and engine not in ("auto", "torch"):
        raise UserError("--tta runs in PyTorch: use --engine torch (or auto) with it")
    table = LabelTable.of(labels, path_col, label_col, label_delim)
    trained = run_or_model if isinstance(run_or_model, TrainedModel) else load(run_or_model)
    samples = eval_samples(run_or_model, data, split, trained.class_names, table=table, task=trained.task)
    overlap = 0 if isinstance(run_or_model, TrainedModel) else _training_overlap(
        Path(run_or_model), data, split, samples, table)
    passes = Passes(trained, None if isinstance(run_or_model, TrainedModel) else Path(run_or_model),
                    setup_runtime(device, amp="auto"), batch_size, workers, engine)  # eager passes time bf16
    if trained.task.multi_label:
        evaluated = _evaluate_multi_label(trained, samples, passes, views)
    else:
        evaluated = _evaluate_single_label(trained, samples, data, passes, views)
    if overlap:
        evaluated.result["train_overlap"] = overlap
    return evaluated


def _training_overlap(run_dir: Path, data: str | Path, split: str | None, samples: Samples,
                      table: LabelTable | None) -> int:
    """How many evaluated images the run trained on (warned about; overlap.py)."""
    data_config, seed = data_config_for(run_dir, data, table)
    trained_on = run_folder.read_config(run_dir).data
    return count_training_images(trained_on, seed, data_config, split or default_eval_split(data_config), samples)


def _evaluate_single_label(trained: TrainedModel, samples: Samples, data: str | Path, passes: Passes,
                           views: Views | None) -> Evaluation:
    counts = class_counts(samples.labels, len(trained.class_names))
    warn_if_imbalanced(counts, trained.class_names, f"the evaluation data ({data})")
    logits, averaged, targets = passes.classify(samples, views)
    probs = trained.task.probabilities(logits, trained.model.info.temperature)  # calibrated: softmax(logits / T)
    result = {**_scores(logits, targets, trained.class_names), "imbalance_ratio": round(imbalance_ratio(counts), 2),
              **calibration_figures(logits, probs, targets, trained.model.info)}
    if averaged is not None:
        tta_result = _scores(averaged, targets, trained.class_names)
        result.update(top1_tta=tta_result["top1"], top5_tta=tta_result["top5"], tta_views=views.count)
    return Evaluation(result, probs, samples)


def _scores(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
    meter = ClassificationMeter(len(class_names))
    if len(targets):
        meter.update(logits, targets, torch.nn.functional.cross_entropy(logits, targets).item())
    return meter.result().to_dict(class_names)




def eval_samples(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
                 class_names: list[str] | None = None, *, table: LabelTable | None = None,
                 task: Task = SINGLE_LABEL_TASK) -> Samples:
    """The samples `tlearn eval` uses, labels mapped onto the run's classes by name (multi-hot
    rows for a multi-label `task`: a class folder's images then carry that one class)."""
    if isinstance(run_or_model, TrainedModel) and str(data) in BUILTIN:
        raise ConfigError("built-in datasets need the run folder (its split settings), not a loaded model")
    run_dir = None if isinstance(run_or_model, TrainedModel) else Path(run_or_model)
    data_config, seed = data_config_for(run_dir, data, table)
    if run_dir is not None:
        class_names = class_names or list(checkpoint.read_model_info(run_dir).class_names)
    found = resolve_split(data_config, split or default_eval_split(data_config), seed)
    known = {name: i for i, name in enumerate(class_names)}
    foreign = [n for n in found.class_names if n not in known]
    if foreign:
        raise DataError(f"class(es) the model does not know: {', '.join(foreign[:5])}; "
                        f"the model knows {', '.join(class_names[:10])}")
    if task.multi_label:
        return dataclasses.replace(found.samples, labels=remap_multi_hot(found.samples.labels, found.class_names,
                                                                         class_names))
    if Task.of(data_config).multi_label:
        raise ConfigError("--label-delim (multi-label data) needs a multi-label run; this run is single-label")
    labels = [known[found.class_names[label]] for label in found.samples.labels]
    return dataclasses.replace(found.samples, labels=labels)


def data_config_for(run_dir: Path | None, data: str | Path,
                    table: LabelTable | None = None) -> tuple[DataConfig, int]:
    """(data settings, seed) to read `data` for a run: its split settings, its table's columns and
    label delimiter, and its labels table when `data` is the folder it trained on (what `table`
    says wins)."""
    if run_dir is None:
        return DataConfig(source=str(data)).with_table(table), 0
    config = run_folder.read_config(run_dir)
    trained, own = config.data, config.data.table
    same_root = own is not None and str(data) not in BUILTIN and _same_path(data, trained.source)
    if table is None and same_root:
        table = own
    elif table is not None and own is not None:  # the run's table format unless told otherwise
        table = table.read_as(own)
    return trained.with_table(table, source=str(data)), config.train.seed


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _evaluate_multi_label(trained: TrainedModel, samples: Samples, passes: Passes,
                          views: Views | None = None) -> Evaluation:
    """mAP, F1 at the run's stored thresholds (and at 0.5), per-class AP/F1/support; with
    `views`, map_tta and f1_micro_tta of the averaged logits too."""
    logits, averaged, targets = passes.classify(samples, views)
    targets = targets.float().reshape(len(logits), len(trained.class_names))
    thresholds = trained.model.info.thresholds or [DEFAULT_THRESHOLD] * len(trained.class_names)

    def scored(outputs: torch.Tensor):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets).item() if len(targets) else 0.0
        return score(outputs.sigmoid().numpy(), targets.numpy(), thresholds, loss)

    result = scored(logits).to_dict(trained.class_names)
    if averaged is not None:
        tta_result = scored(averaged)
        result.update(map_tta=tta_result.map, f1_micro_tta=tta_result.f1_micro, tta_views=views.count)
    return Evaluation(result, logits.sigmoid(), samples)
