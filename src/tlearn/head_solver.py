"""Full-batch L-BFGS multinomial logistic regression for a linear head on cached features.

The same objective as scikit-learn's LogisticRegression (mean cross-entropy + L2 on the
weights), solved in float32 (float64 with fast=False) with strong-Wolfe line search, over a
7-point L2 sweep chosen on the validation split. Warm-started from the strongest penalty
down, so the sweep is cheap.

Balancing (balance.py): `class_weights` weight the cross-entropy (reweight, and resample: the
weighted full-batch loss is the balanced sampler's expected loss); `logit_shift` is added to
the bias of each plain solution before it is scored and stored (logit adjustment: the bias is
not penalised, so this equals solving with the logit-adjusted loss). `select="balanced_acc"`
chooses the L2 strength by validation balanced accuracy instead of top-1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
# Below this many feature values the solve runs on one thread: its matrix products are too small
# to share, and with a second thread a busy machine stalls it. Measured on 2 cores (cifar10-mini,
# 500 x 1280 Lite0 features, the 7-point sweep): idle 0.67-0.80 s on one thread vs 0.79-0.91 s
# on two; beside two busy processes 1.25-1.45 s vs 3.85-4.25 s.
ONE_THREAD_BELOW = 1 << 25


SELECT = ("top1", "balanced_acc")


@dataclass
class SolverResult:
    l2: float
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_balanced_acc: float = 0.0


@dataclass(frozen=True)
class HeadObjective:
    """What the solve minimises and how the sweep chooses (see the module docstring)."""

    class_weights: torch.Tensor | None = None
    logit_shift: torch.Tensor | None = None
    select: str = "top1"


def fit_linear_head_lbfgs(head: nn.Linear, train_x: torch.Tensor, train_y: torch.Tensor,
                          val_x: torch.Tensor, val_y: torch.Tensor, *, grid=None, max_iter: int = 300,
                          fast: bool = True, objective: HeadObjective = HeadObjective()) -> SolverResult:
    """Fit `head` in place; keeps the L2 strength with the best val score (then lowest val loss).

    `grid`: L2 strengths (default L2_GRID). `fast`: float32 (about twice as fast; the same accuracy
    on the cases measured) or float64.
    """
    threads = torch.get_num_threads()
    if train_x.numel() < ONE_THREAD_BELOW:
        torch.set_num_threads(1)
    try:
        return _sweep(head, train_x, train_y, val_x, val_y, grid or L2_GRID, max_iter, fast, objective)
    finally:
        torch.set_num_threads(threads)


def _sweep(head: nn.Linear, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
           val_y: torch.Tensor, grid, max_iter: int, fast: bool, objective: HeadObjective) -> SolverResult:
    dtype = torch.float32 if fast else torch.float64
    train_x, val_x = train_x.to(dtype).flatten(1), val_x.to(dtype).flatten(1)
    num_classes = head.out_features
    weight = torch.zeros(num_classes, train_x.shape[1], dtype=dtype, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=dtype, requires_grad=True)
    class_weights = None if objective.class_weights is None else objective.class_weights.to(dtype)
    shift = torch.zeros(num_classes, dtype=dtype) if objective.logit_shift is None else objective.logit_shift.to(dtype)
    best: tuple | None = None
    for l2 in grid:
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                      tolerance_grad=1e-5 if fast else 1e-6, tolerance_change=1e-9,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = (F.cross_entropy(train_x @ weight.T + bias, train_y, weight=class_weights)
                    + 0.5 * l2 * weight.pow(2).sum())
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            shifted = bias.detach() + shift
            train_loss = F.cross_entropy(train_x @ weight.T + bias, train_y, weight=class_weights).item()
            result = SolverResult(l2, train_loss, _scores(train_x, train_y, weight, shifted)[1],
                                  *_scores(val_x, val_y, weight, shifted))
        logger.info(f"  L-BFGS l2={l2:g}: train top1 {result.train_top1:.4f} | val loss {result.val_loss:.4f} "
                    f"top1 {result.val_top1:.4f} balanced acc {result.val_balanced_acc:.4f}")
        score = result.val_balanced_acc if objective.select == "balanced_acc" else result.val_top1
        key = (score, -result.val_loss)
        if best is None or key > best[0]:
            best = (key, result, weight.detach().clone(), shifted.clone())
    _, result, best_weight, best_bias = best
    with torch.no_grad():
        head.weight.copy_(best_weight.to(head.weight.dtype))
        head.bias.copy_(best_bias.to(head.bias.dtype))
    return result


def _scores(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor) -> tuple[float, float, float]:
    """(loss, top-1, balanced accuracy) of the head on (x, y)."""
    logits = x @ weight.T + bias
    predicted = logits.argmax(1)
    recalls = [(predicted[y == c] == c).double().mean() for c in y.unique()]
    return (F.cross_entropy(logits, y).item(), (predicted == y).double().mean().item(),
            torch.stack(recalls).mean().item())
