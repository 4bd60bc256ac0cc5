"""The rule --amp auto chooses by, for training stages (_precision.py) and inference passes
(inference_precision.py): bf16 only where it runs at MARGIN x fp32's rate or more. Kept apart from
both so that an inference pass imports it without the training loop."""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

MARGIN = 1.10  # bf16 is kept only when at least 10% faster: below that, timing noise would decide
WARMUP_STEPS = 1  # untimed: the first bf16 step builds oneDNN's kernels
TIMED_STEPS = 3  # per precision, interleaved; the median step counts


def choose_precision(rates: dict[str, float], candidate: str, margin: float | None = None) -> str:
    """The candidate precision when its images/s beat fp32's by `margin` (default MARGIN), else fp32."""
    return candidate if rates[candidate] >= (MARGIN if margin is None else margin) * rates["fp32"] else "fp32"


def log_choice(choice: dict[str, Any], resumed: bool, what: str = "") -> None:
    """The log's line for a choice: `what` names an inference pass ("evaluation"); a stage's is indented."""
    rates = ", ".join(f"{key.removesuffix('_images_per_s')} {value:.1f} img/s" for key, value in choice.items()
                      if key.endswith("_images_per_s"))
    logger.info((f"{what}: " if what else "  ") + f"--amp auto: {choice['precision']}"
                + (f" ({rates}; {choice['reason']})" if rates else f" ({choice['reason']})")
                + (", as chosen before the resume" if resumed else ""))
