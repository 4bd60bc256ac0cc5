"""--amp auto for an inference pass (eager evaluation, the report's Grad-CAM): fp32 or bf16, chosen on
the pass's own first batches by the rule training stages use (_precision.py: bf16 only at MARGIN x
fp32's rate or more).

Why on the pass's own batches: the first batches run in fp32 as the pass needs them anyway (their
fp32 outputs are kept and timed), and each runs once more in the candidate precision, timed and
thrown away; so an fp32 choice gives exactly --amp off's outputs, and the whole price is those
WARMUP_STEPS + TIMED_BATCHES extra passes in the candidate. A pass of fewer than MIN_BATCHES batches
is not timed: the extra passes would cost more than bf16 could save on the rest (even at 2x fp32).
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..runtime import Runtime, precision_name
from ._precision_rule import MARGIN, WARMUP_STEPS, choose_precision, log_choice

logger = logging.getLogger(__name__)

TIMED_BATCHES = 2  # per precision, after WARMUP_STEPS untimed ones; the median batch counts
MIN_BATCHES = 8  # a shorter pass keeps fp32 untimed

Output = TypeVar("Output")


class InferencePrecision:
    """Runs a pass's batches (`run`) in the precision --amp auto chooses for `what` ("evaluation",
    "Grad-CAM"). Without a candidate (--amp on or off, no bf16 units) every batch runs in the runtime's
    own precision, untimed. `record` holds the choice once made (None while timing or without one)."""

    def __init__(self, runtime: Runtime, batches: int, what: str):
        self.runtime, self.what = runtime, what
        self.record: dict[str, Any] | None = None
        self._rounds = 0
        self._rates: dict[str, list[float]] = {"fp32": [], precision_name(runtime.amp_candidate): []}
        if runtime.amp_candidate is not None and batches < MIN_BATCHES:
            self._decide({"precision": "fp32", "reason": f"{batches} batch{'es' if batches != 1 else ''}: too few "
                                                          f"to pay for timing {precision_name(runtime.amp_candidate)}"})

    @property
    def timing(self) -> bool:
        return self.runtime.amp_candidate is not None and self.record is None

    def run(self, forward: Callable[[Runtime], Output], size: int) -> Output:
        """`forward(runtime)` of one batch of `size` images, under the runtime it should run in."""
        if not self.timing:
            return forward(self.runtime)
        fp32 = dataclasses.replace(self.runtime, amp_dtype=None)
        candidate = dataclasses.replace(self.runtime, amp_dtype=self.runtime.amp_candidate)
        output, fp32_seconds = _timed(forward, fp32)
        _, candidate_seconds = _timed(forward, candidate)  # thrown away: the fp32 output is the batch's
        self._rounds += 1
        if self._rounds > WARMUP_STEPS:
            for name, seconds in zip(self._rates, (fp32_seconds, candidate_seconds)):
                self._rates[name].append(size / max(seconds, 1e-9))
        if self._rounds == WARMUP_STEPS + TIMED_BATCHES:
            self.decide_from(self._rates)
        return output

    def decide_from(self, rates: dict[str, list[float]]) -> None:
        """Choose from each precision's images/s over the timed batches (injected in tests)."""
        medians = {name: statistics.median(values) for name, values in rates.items()}
        candidate = precision_name(self.runtime.amp_candidate)
        choice = choose_precision(medians, candidate)
        self._decide({"precision": choice, **{f"{name}_images_per_s": round(rate, 2) for name, rate in medians.items()},
                      "reason": f"{candidate} {'at least' if choice != 'fp32' else 'under'} {MARGIN:.2f}x fp32's rate"})

    def _decide(self, record: dict[str, Any]) -> None:
        self.record = record
        keep = record["precision"] != "fp32"
        self.runtime = dataclasses.replace(self.runtime, amp_dtype=self.runtime.amp_candidate if keep else None,
                                           amp_candidate=None)
        log_choice(record, resumed=False, what=self.what)


def _timed(forward: Callable[[Runtime], Output], runtime: Runtime) -> tuple[Output, float]:
    cuda = runtime.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(runtime.device)
    start = time.perf_counter()
    output = forward(runtime)
    if cuda:
        torch.cuda.synchronize(runtime.device)
    return output, time.perf_counter() - start
