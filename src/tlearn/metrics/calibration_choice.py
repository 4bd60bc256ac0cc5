"""Whether a run stores a fitted temperature or keeps T = 1, judged on images the fit did not see.

A temperature fitted on the validation split and scored on the same images always beats T = 1
there (it minimises that very NLL), so that comparison says nothing. Instead the split is cut
into FOLDS stratified, seeded folds; each fold is scaled by a T fitted on the other folds, which
gives every image an out-of-fold calibrated probability. Near T = 1 the NLL difference is small
and one random cut into folds can flip its sign, so the cut is repeated (REPEATS seeds, fewer on
very large splits) and the NLLs and probabilities averaged. The run stores the T fitted on the
whole split only when the out-of-fold NLL is below the NLL at T = 1 on the same images, the
split is large enough to tell, and that T is not at the search's bound; otherwise T = 1, with
the reason. The out-of-fold probabilities are what the run reports as its calibrated ECE.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature, mean_nll

FOLDS = 5  # each fit sees 4/5 of the split, and every image is judged exactly once
FOLD_SEED = 0  # the same split gives the same folds, so a resumed run fits the same T
# Repeated cuts into folds (seeds FOLD_SEED, FOLD_SEED + 1, ...): on a 1,000-image CIFAR-10 probe
# split the out-of-fold NLL minus the NLL at T = 1 ranged from -0.0009 to +0.0012 over ten seeds,
# so one cut decides by chance. Each repeat costs FOLDS one-dimensional fits; a split of
# images x classes above MAX_REPEAT_WORK / REPEATS gets fewer repeats (at least one).
REPEATS = 10
MAX_REPEAT_WORK = 2e7
# Below this, each of the 5 held-out folds has fewer than 10 images: a fold's T rests on a
# handful of mistakes and the out-of-fold NLL difference is mostly which images fell where.
MIN_IMAGES = 50
# "At a bound": within 1 % of it. The bounded search stops within 1e-5 (in log T) of a bound it
# runs into, never exactly on it; a T that wants to go there is a split the likelihood cannot
# pin down (every image right drives T to 0, labels unrelated to the scores drive it up).
BOUND_MARGIN = 1.01

FITTED, NOT_IMPROVED, TOO_FEW, AT_BOUND = "fitted", "not improved", "too few images", "at bound"


@dataclass
class TemperatureChoice:
    """What the run stores and why; `held_out` holds the out-of-fold calibrated probabilities
    when the fit is kept (None when T = 1 is: the reported figures are then the uncalibrated)."""

    temperature: float
    decision: str
    reason: str
    fitted: float | None = None  # T fitted on the whole split (None: too few images to fit)
    fold_temperatures: list[float] = field(default_factory=list)
    nll_uncalibrated: float = 0.0
    nll_out_of_fold: float | None = None
    repeats: int = 0  # cuts into folds averaged
    held_out: torch.Tensor | None = None

    def to_dict(self) -> dict:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {"decision": self.decision, "reason": self.reason, "temperature_fitted": rounded(self.fitted),
                "folds": FOLDS if self.fold_temperatures else 0, "repeats": self.repeats,
                "fold_temperatures": [round(t, 6) for t in self.fold_temperatures],
                "nll_uncalibrated": rounded(self.nll_uncalibrated), "nll_out_of_fold": rounded(self.nll_out_of_fold)}


def fold_assignment(labels: np.ndarray, folds: int = FOLDS, seed: int = FOLD_SEED) -> np.ndarray:
    """Each image's fold, 0..folds-1: stratified (the images of a class are dealt round the folds in
    turn, so every fold has its share of each class) and seeded; fold sizes differ by at most 1."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within it
    assignment = np.empty(len(labels), dtype=np.int64)
    assignment[order] = np.arange(len(labels)) % folds
    return assignment


def repeats_for(logits: torch.Tensor) -> int:
    return max(1, min(REPEATS, int(MAX_REPEAT_WORK // max(1, logits.numel()))))


def out_of_fold(logits: torch.Tensor, labels: np.ndarray,
                repeats: int = 1) -> tuple[torch.Tensor, float, list[float]]:
    """(out-of-fold calibrated probabilities, their mean NLL, the folds' temperatures), averaged over
    `repeats` cuts into folds: in each, every image's logits are divided by the T fitted on the
    other folds."""
    probs, nlls, temperatures = torch.zeros_like(logits, dtype=torch.float64), [], []
    for repeat in range(repeats):
        folds = fold_assignment(labels, FOLDS, FOLD_SEED + repeat)
        scaled = logits.double().clone()
        for fold in range(FOLDS):
            held = torch.from_numpy(folds == fold)
            temperatures.append(fit_temperature(logits[~held], labels[~held.numpy()]))
            scaled[held] = logits[held].double() / temperatures[-1]
        nlls.append(mean_nll(scaled, labels))
        probs += scaled.softmax(dim=1)
    return probs / repeats, float(np.mean(nlls)), temperatures


def at_bound(temperature: float) -> bool:
    return temperature <= MIN_TEMPERATURE * BOUND_MARGIN or temperature >= MAX_TEMPERATURE / BOUND_MARGIN


def choose_temperature(logits: torch.Tensor, labels: np.ndarray | torch.Tensor) -> TemperatureChoice:
    """The temperature a run stores for these validation logits (`as_logits` of its probabilities).

    The rule is a strict improvement of the out-of-fold NLL: it already scores every fit on
    images that fit never saw, so it carries its own penalty for fitting noise; a margin on top
    would refuse the small, real corrections of a nearly calibrated model (T near 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    at_one = mean_nll(logits, labels)
    if len(labels) < MIN_IMAGES:
        return TemperatureChoice(1.0, TOO_FEW, f"{len(labels)} validation images are too few to fit a temperature "
                                 f"on (fewer than {MIN_IMAGES})", nll_uncalibrated=at_one)
    repeats = repeats_for(logits)
    held_out, held_out_nll, temperatures = out_of_fold(logits, labels, repeats)
    fitted = fit_temperature(logits, labels)
    figures = dict(fitted=fitted, fold_temperatures=temperatures, nll_uncalibrated=at_one,
                   nll_out_of_fold=held_out_nll, repeats=repeats)
    nll_text = f"out-of-fold NLL {held_out_nll:.4f} against {at_one:.4f} at T = 1"
    if not held_out_nll < at_one:
        return TemperatureChoice(1.0, NOT_IMPROVED, f"a temperature fitted on {FOLDS - 1} of {FOLDS} folds does not "
                                 f"lower the NLL of the held-out fold ({nll_text}, {repeats} cuts)", **figures)
    if at_bound(fitted):
        cause = ("every image right drives it towards 0" if fitted < 1 else
                 "confidences that say little about the labels drive it up")
        return TemperatureChoice(1.0, AT_BOUND, f"the temperature fitted on the split, {fitted:.3g}, is at the "
                                 f"search's bound ({MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}): the split cannot pin "
                                 f"it down ({cause})", **figures)
    return TemperatureChoice(fitted, FITTED, f"{FOLDS}-fold cross-validated ({repeats} cuts): {nll_text}",
                             held_out=held_out.float(), **figures)
