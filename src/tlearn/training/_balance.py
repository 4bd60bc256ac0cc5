"""Imbalanced classes (`--balance`): loss weights, a class-balanced sampler, logit adjustment.

Every mode starts from the training split's class counts (the priors):

- `reweight`: cross-entropy weights n / (k * n_c), inverse to class frequency (scikit-learn's
  `class_weight="balanced"`); they average 1 over the training images, so the loss keeps its
  scale and the L2 grid its meaning.
- `resample`: a sampler that draws each epoch's images with replacement, class c with
  probability 1 / (k * n_c) per image, so every class is expected equally often. A full-batch
  L-BFGS solve has no batches to sample: there the loss is weighted as in `reweight`, which is
  exactly the balanced sampler's expected loss.
- `logit-adjust` (Menon et al., 2021): predict with logits - tau * log(prior). The head trains
  plain and the shift lives in the stored head's bias, so eval, predict, export and the API
  apply it with no code of their own. L-BFGS solves plainly and then shifts the bias; the
  mini-batch loops train on logits + tau * log(prior) (the logit-adjusted loss), which for a
  bias that is never decayed is the same thing with the shift already in the parameters.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Sampler

from ..config import BALANCE_MODES  # noqa: F401  (the modes, declared with the flag)
from ..metrics import class_counts


@dataclass(frozen=True)
class Balance:
    """A run's balancing: the mode, tau and the training split's class counts."""

    mode: str
    counts: tuple[int, ...]
    tau: float = 1.0

    @classmethod
    def from_labels(cls, mode: str, labels: Sequence[int], num_classes: int, tau: float = 1.0) -> Balance:
        return cls(mode, tuple(class_counts(labels, num_classes)), tau)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def priors(self) -> torch.Tensor:
        counts = torch.tensor(self.counts, dtype=torch.float64)
        return counts / counts.sum()

    def loss_weights(self) -> torch.Tensor | None:
        """Per-class cross-entropy weights n / (k * n_c) (reweight; resample on a full batch), else None."""
        if self.mode not in ("reweight", "resample"):
            return None
        counts = torch.tensor(self.counts, dtype=torch.float64).clamp(min=1)
        return (sum(self.counts) / (len(self.counts) * counts)).float()

    def logit_shift(self) -> torch.Tensor | None:
        """What logit adjustment adds to the logits at prediction time: -tau * log(prior)."""
        if self.mode != "logit-adjust":
            return None
        return (-self.tau * self.priors.clamp(min=1e-12).log()).float()

    def training_loss(self, label_smoothing: float, device: torch.device, *, sampled: bool) -> nn.Module:
        """The mini-batch loss. `sampled`: the batches come from the balanced sampler (resample)."""
        if self.mode == "logit-adjust":
            return LogitAdjustedLoss(self.logit_shift().to(device), label_smoothing)
        weights = None if sampled else self.loss_weights()
        return nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                   label_smoothing=label_smoothing)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "tau": self.tau, "class_counts": list(self.counts),
                "priors": [round(p, 8) for p in self.priors.tolist()]}


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy of logits - shift, i.e. of the plain logits when the model outputs adjusted ones."""

    def __init__(self, shift: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("shift", shift)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits - self.shift.to(logits.dtype), targets, label_smoothing=self.label_smoothing)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (WeightedRandomSampler's draw, weights 1 / n_c).

    The draw depends only on (seed, epoch) (`set_epoch`, as DistributedSampler), so a resumed
    run repeats it. Under torchrun every process draws the same list and takes every
    `num_replicas`-th index from `rank`: disjoint shards of one balanced draw.
    """

    def __init__(self, labels: Sequence[int], seed: int = 0, num_replicas: int = 1, rank: int = 0):
        labels = torch.as_tensor(list(labels), dtype=torch.int64)
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts)[labels]
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.per_replica = math.ceil(len(labels) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_replica

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_replica * self.num_replicas, replacement=True,
                                  generator=generator)
        return iter(drawn[self.rank::self.num_replicas].tolist())

