"""What the labelling page shows and does: the next image, the probe's guesses, answers, undo,
and the probe's refit every K answers in a background thread.

The queue is a pure function of the pool, the table and the feature cache: the answered rows
are taken in table order, the first n - n mod K of them (the last refit's) are the labelled set
the choice rule plans the round of K picks from (suggestions.choose), and the next image is the first
pick not answered yet (when all are, as when a second tab answered others, the round is planned
from every answered row). A killed and restarted server, or a second tab, so shows the same next image. The
probe (its guesses, the cross-validated estimate) refits in the background and never holds up
an answer: until it is done the guesses are the previous probe's. The first fit runs at start,
before the page is served.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UserError
from ..features import FeatureScaler, cross_validate, fit_probe
from .answers import AnswerTable
from .pool import Backbone, pool_features, scan_pool
from .suggestions import Labels, choose, read_pool_labels

logger = logging.getLogger(__name__)

ALTERNATIVES = 3  # the guess and this many more, with their probabilities


@dataclass
class ProbeState:
    """The last refit: its probe and class order, calibration, estimate, and the estimate's curve."""

    answers: int = -1  # how many answers it was fitted after (-1: never)
    names: list[str] = field(default_factory=list)
    probe: Any = None
    temperature: float = 1.0
    estimate: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (labels given, cross-validated accuracy)


class LabelSession:
    """The pool, its features and the table; safe to call from the server's threads."""

    def __init__(self, pool_root: str | Path, table: str | Path, backbone: Backbone,
                 classes: Sequence[str] = (), refit_every: int = 10, seed: int = 0):
        self.pool = scan_pool(pool_root)
        self.table = AnswerTable(table)
        self.refit_every, self.seed = refit_every, seed
        known = read_pool_labels(self.pool, table)  # rows outside the pool: one-line error now
        given = [name for name in classes if name]
        extra = sorted(set(known.by_index.values()) - set(given))
        if given and extra:
            raise UserError(f"--classes {','.join(given)} does not list label(s) of {table}: {', '.join(extra[:5])}")
        self.classes = given or extra
        raw = pool_features(self.pool, backbone)
        self.raw, self.features = raw, FeatureScaler.of(raw)(raw)
        self.lock = threading.Lock()  # the classes, the undo list, the queue cache and the probe
        self.undo_list: list[tuple[str, dict[str, str] | None]] = []  # this server's answers, last last
        self.queues: dict[tuple[int, ...], list[int]] = {}
        self.planning: dict[tuple[int, ...], threading.Event] = {}  # plans being computed
        self.probe = ProbeState()
        self.refitting: threading.Thread | None = None
        # The first fit and plan run here, before the server answers: the page opens with guesses, and
        # scikit-learn's modules are imported by one thread (two importing them at once can fail)
        known = self.known()
        self.refit(known)
        self.queue(known)

    def known(self) -> Labels:
        return read_pool_labels(self.pool, self.table.path)

    def queue(self, known: Labels) -> list[int]:
        """The images to ask next, in order: this round's picks (the choice rule) not answered yet."""
        answered = len(known.order)
        base = tuple(known.order[:answered - answered % self.refit_every])
        for planned in (base, tuple(known.order)):
            picks = self.plan(planned)
            left = [index for index in picks if index not in known.answered]
            if left:
                return left
        return []

    def plan(self, planned: tuple[int, ...]) -> list[int]:
        """The choice rule's picks with `planned` as the labelled set: cached, and computed once when two
        threads (a request and the planning ahead) want the same plan."""
        with self.lock:
            picks, running = self.queues.get(planned), self.planning.get(planned)
            if picks is None and running is None:
                running = self.planning[planned] = threading.Event()
                mine = True
            else:
                mine = False
        if picks is not None:
            return picks
        if not mine:
            running.wait()
            with self.lock:
                picks = self.queues.get(planned)
            if picks is not None:
                return picks
        try:
            mask = np.zeros(len(self.pool), dtype=bool)
            mask[list(planned)] = True
            count = min(self.refit_every, int((~mask).sum()))  # of the plan alone: TypiClust's k depends on it
            picks = [index for index, _, _ in choose(self.pool, self.raw, self.features, mask, count, self.seed)]
            with self.lock:
                self.queues = {planned: picks, **{k: v for k, v in list(self.queues.items())[-3:]}}
        finally:
            if mine:
                with self.lock:
                    self.planning.pop(planned, None)
                running.set()
        return picks

    def plan_ahead(self, known: Labels, queue: list[int]) -> None:
        """One answer before a round ends, plan the next round in the background as if the image shown
        gets its answer (it almost always does): the K-th answer then finds its plan made. The
        plan is the same function of the table; only when it is computed changes."""
        if not queue or (len(known.order) + 1) % self.refit_every:
            return
        ahead = tuple(known.order) + (queue[0],)
        with self.lock:
            if ahead in self.queues or ahead in self.planning:
                return
        threading.Thread(target=self.plan, args=(ahead,), name="tlearn-plan", daemon=True).start()

    def state(self) -> dict[str, Any]:
        """The page's view: the next image with the probe's guesses, the classes, counts, estimate, curve."""
        known = self.known()
        self.maybe_refit(known)
        queue = self.queue(known)
        self.plan_ahead(known, queue)
        with self.lock:
            probe, classes = self.probe, list(self.classes)
            undo = self.undo_list[-1][0] if self.undo_list else None
        following = self.pool.paths[queue[0]] if queue else None
        return {"mode": "label", "image": following and {"path": following, **self.guesses(queue[0], probe)},
                "classes": classes, "answered": len(known.answered), "labelled": len(known.by_index),
                "pool": len(self.pool), "estimate": probe.estimate, "curve": probe.curve,
                "refitting": self.refitting is not None and self.refitting.is_alive(),
                "refit_every": self.refit_every, "undo": undo}

    def guesses(self, index: int, probe: ProbeState) -> dict[str, Any]:
        if probe.probe is None:
            return {"guess": None, "alternatives": []}
        row = probe.probe.probabilities(self.features[[index]], probe.temperature)[0]
        order = np.argsort(-row, kind="stable")[:1 + ALTERNATIVES]
        ranked = [{"label": probe.names[i], "prob": round(float(row[i]), 4)} for i in order]
        return {"guess": ranked[0]["label"], "alternatives": ranked}

    def answer(self, path: str, label: str) -> None:
        """`label` for the pool image `path`; "" skips it (a row with no label: not asked again)."""
        if path not in self.pool.index:
            raise DataError(f"{path!r} is not an image of the pool")
        with self.lock:
            if label and label not in self.classes:
                raise DataError(f"{label!r} is not a class; add it first (n)")
            before = self.table.set(path, {"label": label})
            self.undo_list.append((path, before))

    def undo(self) -> str | None:
        """Take back the last answer this server wrote; the path it was for (None: nothing to undo)."""
        with self.lock:
            if not self.undo_list:
                return None
            path, before = self.undo_list.pop()
            self.table.restore(path, before)
        return path

    def add_class(self, name: str) -> None:
        name = name.strip()
        if not name or "," in name or len(name) > 100:
            raise DataError("a class name is 1 to 100 characters, without a comma")
        with self.lock:
            if name not in self.classes:
                self.classes.append(name)

    def maybe_refit(self, known: Labels) -> None:
        """Start a background refit once K more answers have come since the last one."""
        answers = len(known.order)
        with self.lock:
            due = self.probe.answers < 0 or answers // self.refit_every != self.probe.answers // self.refit_every
            if not due or (self.refitting is not None and self.refitting.is_alive()):
                return
            self.refitting = threading.Thread(target=self.refit, args=(known,), name="tlearn-refit", daemon=True)
            self.refitting.start()

    def refit(self, known: Labels) -> None:
        """Fit the probe on the labelled images' cached features; cross-validate it for the estimate
        and the temperature that calibrates its guesses."""
        names = sorted(set(known.by_index.values()))
        state = ProbeState(len(known.order), names, curve=list(self.probe.curve))
        try:
            if len(names) >= 2:
                indices = np.array(sorted(known.by_index))
                targets = np.array([names.index(known.by_index[i]) for i in indices])
                state.probe = fit_probe(self.features[indices], targets, len(names))
                validation = cross_validate(self.features[indices], targets, len(names), seed=self.seed)
                if validation is not None:
                    state.temperature, state.estimate = validation.temperature, round(validation.accuracy, 4)
                    state.curve = [point for point in state.curve if point[0] != len(indices)]
                    state.curve.append((len(indices), state.estimate))
        except Exception:  # a failed refit keeps the previous probe: the page goes on answering
            logger.exception("the probe's refit failed; keeping the previous one")
            state = ProbeState(len(known.order), self.probe.names, self.probe.probe, self.probe.temperature,
                               self.probe.estimate, self.probe.curve)
        with self.lock:
            self.probe = state
