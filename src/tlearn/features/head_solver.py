"""Full-batch L-BFGS multinomial logistic regression for a linear head on cached features.

The same objective as scikit-learn's LogisticRegression (mean cross-entropy + L2 on the
weights), solved in float32 (float64 with fast=False) with strong-Wolfe line search, over a
7-point L2 sweep chosen on the validation split. Warm-started from the strongest penalty
down, so the sweep is cheap.

Full-batch, but streamed: every loss and gradient is summed over row chunks, so memory is
O(chunk rows x classes + weights), never O(rows x classes), and the features may be a
memory-mapped store (tlearn.feature_store) larger than RAM. Data that fits in one chunk is
one matrix product per evaluation, as before.

Balancing (balance.py): `class_weights` weight the cross-entropy (reweight, and resample: the
weighted full-batch loss is the balanced sampler's expected loss); `logit_shift` is added to
the bias of each plain solution before it is scored and stored (logit adjustment: the bias is
not penalised, so this equals solving with the logit-adjusted loss). `select="balanced_acc"`
chooses the L2 strength by validation balanced accuracy instead of top-1.

Multi-label (`multi_label=True`, multi-hot float targets): the loss is binary cross-entropy with
logits, summed over the classes and averaged over the images, + the same L2. Its terms separate
by class, so solving all classes at once in one matrix is one-vs-rest logistic regression (each
class's problem is scikit-learn's with C = 1 / (l2 x rows)); the sweep chooses by validation mAP.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from ..metrics import score
from ._store import FeatureMatrix, TensorFeatures

logger = logging.getLogger(__name__)

L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
# Below this many feature values the solve runs on one thread: its matrix products are too small
# to share, and with a second thread a busy machine stalls it. Measured on 2 cores (cifar10-mini,
# 500 x 1280 Lite0 features, the 7-point sweep): idle 0.67-0.80 s on one thread vs 0.79-0.91 s
# on two; beside two busy processes 1.25-1.45 s vs 3.85-4.25 s.
ONE_THREAD_BELOW = 1 << 25
# Rows per chunk of a loss and gradient evaluation; a chunk's logits, log-softmax and gradient are
# 3 x CHUNK_ROWS x classes floats (1,000 classes: 100 MB). Measured on 2 cores shared with other
# jobs (load 7, so +-30%), one evaluation of 65,536 x 1280 features, 1,000 classes
# (benchmarks/head_at_scale.py chunks): 1,024 rows 20.1 s, 4,096 11.6 s, 8,192 6.8 s, 16,384 9.9 s,
# 65,536 8.8 s; re-measured interleaved, twice each: 4,096 12.0-12.9 s, 8,192 9.8-11.4 s, 16,384
# 10.2-13.3 s, 32,768 10.6-12.2 s. Below 8,192 rows is slower; above it no size is reliably faster
# and memory grows: peak RssAnon 0.5-0.7 GB up to 8,192 rows (0.28 GB of it torch at import),
# 1.7 GB at 65,536.
CHUNK_ROWS = 8192


SELECT = ("top1", "balanced_acc", "map")


@dataclass
class SolverResult:
    l2: float
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_balanced_acc: float = 0.0
    val_map: float = 0.0  # multi-label (then the top1 fields hold micro F1 at 0.5)


@dataclass(frozen=True)
class HeadObjective:
    """What the solve minimises and how the sweep chooses (see the module docstring)."""

    class_weights: torch.Tensor | None = None
    logit_shift: torch.Tensor | None = None
    select: str = "top1"
    multi_label: bool = False  # binary cross-entropy per class, chosen by val mAP (select="map")
    # One weight per training row (pseudo-labels count less than labels: training/pseudo_labels.py); None: all 1.
    sample_weights: torch.Tensor | None = None


def fit_linear_head_lbfgs(head: nn.Linear, train_x: torch.Tensor | FeatureMatrix, train_y: torch.Tensor,
                          val_x: torch.Tensor | FeatureMatrix, val_y: torch.Tensor, *, grid=None,
                          max_iter: int = 300, fast: bool = True, chunk_rows: int = CHUNK_ROWS,
                          objective: HeadObjective = HeadObjective()) -> SolverResult:
    """Fit `head` in place; keeps the L2 strength with the best val score (then lowest val loss).

    `train_x`, `val_x`: in-RAM tensors or FeatureMatrix stores (read `chunk_rows` rows at a time).
    `grid`: L2 strengths (default L2_GRID). `fast`: float32 (about twice as fast; the same accuracy
    on the cases measured) or float64.
    """
    threads = torch.get_num_threads()
    if _numel(train_x) < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        dtype = torch.float32 if fast else torch.float64
        train, val = _Chunks(train_x, train_y, dtype, chunk_rows), _Chunks(val_x, val_y, dtype, chunk_rows)
        return _sweep(head, train, val, grid or L2_GRID, max_iter, fast, objective)
    finally:
        torch.set_num_threads(threads)


def _numel(x: torch.Tensor | FeatureMatrix) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else len(x) * x.dim


class _Chunks:
    """(features, labels) row chunks in the solve's dtype, iterable again for every evaluation."""

    def __init__(self, x: torch.Tensor | FeatureMatrix, y: torch.Tensor, dtype: torch.dtype, rows: int):
        if isinstance(x, torch.Tensor):
            x = TensorFeatures(x.to(dtype))  # converted once, as the in-RAM solve always did
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self.x, self.y, self.dtype, self.rows, self.dim = x, y, dtype, rows, x.dim

    def __len__(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = 0
        for chunk in self.x.iter_chunks(self.rows):
            yield chunk.to(self.dtype), self.y[start:start + len(chunk)]
            start += len(chunk)


def _sweep(head: nn.Linear, train: _Chunks, val: _Chunks, grid, max_iter: int, fast: bool,
           objective: HeadObjective) -> SolverResult:
    dtype, num_classes = train.dtype, head.out_features
    weight = torch.zeros(num_classes, train.dim, dtype=dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=dtype, requires_grad=True)
    class_weights = None if objective.class_weights is None else objective.class_weights.to(dtype)
    shift = torch.zeros(num_classes, dtype=dtype) if objective.logit_shift is None else objective.logit_shift.to(dtype)
    best: tuple | None = None
    for l2 in grid:
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-5 if fast else 1e-6, tolerance_change=1e-9,
                                      line_search_fn="strong_wolfe")
        optimizer.step(partial(_loss_and_grad, train, weight, bias, l2, class_weights, objective.multi_label,
                               objective.sample_weights))
        with torch.no_grad():
            shifted = bias.detach() + shift
            if objective.multi_label:
                result = SolverResult(l2, *_multi_label_scores(train, weight, bias)[:2], 0.0, 0.0)
                result.val_loss, result.val_top1, result.val_map = _multi_label_scores(val, weight, bias)
            else:
                result = SolverResult(l2, *_scores(train, weight, bias, shift, class_weights, plain_loss=True)[:2],
                                      *_scores(val, weight, bias, shift))
        logger.info(f"  L-BFGS l2={l2:g}: train {'micro-F1' if objective.multi_label else 'top1'} "
                    f"{result.train_top1:.4f} | val loss {result.val_loss:.4f} "
                    + (f"mAP {result.val_map:.4f}" if objective.multi_label else
                       f"top1 {result.val_top1:.4f} balanced acc {result.val_balanced_acc:.4f}"))
        score = {"balanced_acc": result.val_balanced_acc, "map": result.val_map}.get(objective.select,
                                                                                   result.val_top1)
        key = (score, -result.val_loss)
        if best is None or key > best[0]:
            best = (key, result, weight.detach().clone(), shifted.clone())
    _, result, best_weight, best_bias = best
    with torch.no_grad():
        head.weight.copy_(best_weight.to(head.weight.dtype))
        head.bias.copy_(best_bias.to(head.bias.dtype))
    return result


def _loss_and_grad(train: _Chunks, weight: torch.Tensor, bias: torch.Tensor, l2: float,
                   class_weights: torch.Tensor | None, multi_label: bool = False,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The L-BFGS closure: mean (class-weighted) cross-entropy + L2, its gradient accumulated chunk
    by chunk. Each chunk's backward runs before the next chunk's forward, so only one chunk's
    logits and their gradient are alive at a time. `sample_weights`: each row's weight in the mean.
    """
    weight.grad = bias.grad = None
    total = torch.zeros((), dtype=weight.dtype)
    norm = len(train) if class_weights is None else class_weights[train.y].sum()  # F.cross_entropy's mean
    start = 0
    for x, y in train:
        if multi_label:  # one-vs-rest: the binary losses of all classes, summed (see the module docstring)
            loss = F.binary_cross_entropy_with_logits(x @ weight.T + bias, y.to(x.dtype), reduction="sum") / norm
        elif sample_weights is None:
            loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weights, reduction="sum") / norm
        else:
            rows = sample_weights[start:start + len(y)].to(x.dtype)
            loss = (F.cross_entropy(x @ weight.T + bias, y, weight=class_weights, reduction="none") * rows).sum() / norm
        start += len(y)
        loss.backward()
        total += loss.detach()
    penalty = 0.5 * l2 * weight.pow(2).sum()
    penalty.backward()
    return total + penalty.detach()


def _scores(data: _Chunks, weight: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor,
            class_weights: torch.Tensor | None = None, plain_loss: bool = False) -> tuple[float, float, float]:
    """(loss, top-1, balanced accuracy) of the head with its bias shifted by `shift` on `data`;
    `plain_loss`: the loss of the unshifted logits (the training objective's)."""
    loss_sum, correct = 0.0, 0
    hits = torch.zeros(len(bias), dtype=torch.float64)
    support = torch.zeros(len(bias), dtype=torch.float64)
    norm = len(data) if class_weights is None else class_weights[data.y].sum().item()
    for x, y in data:
        logits = x @ weight.T + bias
        shifted = logits + shift
        loss_sum += F.cross_entropy(logits if plain_loss else shifted, y, weight=class_weights,
                                    reduction="sum").item()
        right = shifted.argmax(1) == y
        correct += right.sum().item()
        support += torch.bincount(y, minlength=len(bias))
        hits += torch.bincount(y[right], minlength=len(bias))
    present = support > 0
    return loss_sum / norm, correct / len(data), (hits[present] / support[present]).mean().item()


def _multi_label_scores(data: _Chunks, weight: torch.Tensor, bias: torch.Tensor) -> tuple[float, float, float]:
    """(loss: BCE summed over classes, mean over images; micro F1 at 0.5; mAP) of the head on `data`."""
    loss_sum, probs, targets = 0.0, [], []
    for x, y in data:
        logits = x @ weight.T + bias
        loss_sum += F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="sum").item()
        probs.append(logits.sigmoid().float())
        targets.append(y)
    result = score(torch.cat(probs).numpy(), torch.cat(targets).numpy(), [0.5] * weight.shape[0])
    return loss_sum / max(len(data), 1), result.f1_micro, result.map
