"""Guards against a policy that games its signal: KL to the reference and response length running away.

A policy that exploits its reward or value model usually shows it first in these two numbers (a
GVM or reward model that pays for every extra token makes responses grow to the cap; a signal the
policy can fool drives the KL up while the controller lags). The same guard runs for every
algorithm: it records the response length against the starting policy's, warns once when a
number passes half its limit, and stops the run with a clear message past the limit.

The starting policy's length is the mean over every step whose rollouts were still the starting policy's
own, its KL to the reference under `REFERENCE_KL` nats per response, not the first step's alone: 16 samples
of an SFT model that rambles now and then can average 8 tokens on the first step and 31 on the third with
the policy unmoved (KL 0.03; SmolLM2 after 40 steps of SFT, `dvpo demo --quick`), which is no runaway.

A third sign needs a second scorer (`--eval-scorer`): the run's own scorer's score of its samples rising while
the second scorer's falls. `OveroptimisationWatch` warns about it; it never stops a run.
"""

from __future__ import annotations

import logging

from dvpo.errors import PolicyRunaway

logger = logging.getLogger(__name__)

LENGTH_WARNING_RATIO = 1.5
REFERENCE_KL = 0.1
"""Nats per response under which a step's rollouts still count as the starting policy's. An unmoved policy's
estimate is noise (0.002-0.03 in the case above); a policy that triples a geometric length distribution's mean
by its own doing pays about 0.9 nats or more (ln(1/3) + 2 as the stop probability goes to zero), and one that
moves a rambling mode's share from 10% to 40% pays 0.3."""


def slope(values: list[float]) -> float:
    """The least-squares slope of `values` against 0, 1, 2, ... (per step)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return (sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
            / sum((i - mean_x) ** 2 for i in range(n)))


class OveroptimisationWatch:
    """Warns once when, over the last `window` steps, `proxy_score` rose and `second_score` fell, each by more
    than `threshold` (both are standardised scores, so 0.1 is a tenth of a training spread) along its
    least-squares line. A line through a window, not two points: one rollout batch's mean is noisy. The threshold
    assumes the two are on a standardised scale, as a GVM's values and a reward model's stored-statistics scores
    are; reward functions (`--reward-fn`) bring their own scale."""

    def __init__(self, window: int = 10, threshold: float = 0.1):
        self.window, self.threshold = window, threshold
        self.history: list[tuple[float, float]] = []
        self.warned = False

    def state_dict(self) -> dict:
        return {"history": [list(pair) for pair in self.history], "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(pair) for pair in state.get("history", [])]
        self.warned = bool(state.get("warned", False))

    def check(self, record: dict) -> None:
        if "proxy_score" not in record or "second_score" not in record:
            return
        self.history = [*self.history, (record["proxy_score"], record["second_score"])][-self.window:]
        if self.warned or len(self.history) < self.window:
            return
        rise = slope([p for p, _ in self.history]) * (self.window - 1)
        fall = -slope([s for _, s in self.history]) * (self.window - 1)
        if rise > self.threshold and fall > self.threshold:
            self.warned = True
            logger.warning("step %d: over the last %d steps the run's own scorer rose by %.2f (proxy_score) while "
                           "the --eval-scorer fell by %.2f (second_score): the policy is likely over-optimising its "
                           "scorer (Gao et al. 2022); check a judge of its samples, and consider an earlier "
                           "checkpoint, a lower --learning-rate or a higher --kl-coef", record["step"], self.window,
                           rise, fall)


class RunawayGuard:
    def __init__(self, max_kl: float, max_length_ratio: float, reference_length: float | None = None):
        self.max_kl, self.max_length_ratio = max_kl, max_length_ratio
        self.reference_length = reference_length
        self.reference_steps = 0 if reference_length is None else 1  # steps averaged into reference_length
        self.reference_settled = reference_length is not None  # a step has left the starting policy
        self.warned: set[str] = set()
        self.overoptimisation = OveroptimisationWatch()

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run measures lengths against the same starting policy."""
        return {"reference_length": self.reference_length, "reference_steps": self.reference_steps,
                "reference_settled": self.reference_settled, "warned": sorted(self.warned),
                "overoptimisation": self.overoptimisation.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.reference_length = state.get("reference_length")
        # A checkpoint from before the average was kept holds the first step's length alone, settled.
        self.reference_steps = state.get("reference_steps", 0 if self.reference_length is None else 1)
        self.reference_settled = state.get("reference_settled", self.reference_length is not None)
        self.warned = set(state.get("warned", []))
        self.overoptimisation.load_state_dict(state.get("overoptimisation", {}))

    def _update_reference(self, length: float, kl: float) -> None:
        """Average this step's length into the starting policy's while the policy has not left it."""
        if self.reference_length is not None and (self.reference_settled or kl >= REFERENCE_KL):
            self.reference_settled = True
            return
        n = self.reference_steps
        self.reference_length = length if n == 0 else (self.reference_length * n + length) / (n + 1)
        self.reference_steps = n + 1

    def check(self, record: dict, where: str) -> None:
        """Add `length_ratio` to a step's record; warn or raise `PolicyRunaway` past the limits; watch for a
        proxy that parts from the second scorer."""
        self.overoptimisation.check(record)
        length, kl, step = record["response_length"], record["kl"], record["step"]
        self._update_reference(length, kl)
        ratio = length / max(self.reference_length, 1e-9)
        record["length_ratio"] = ratio
        advice = ("lower --learning-rate, raise --kl-coef, or check what the reward/value model pays for; the last "
                  f"checkpoint is kept in {where}")
        if self.max_length_ratio and ratio > self.max_length_ratio:
            raise PolicyRunaway(f"step {step}: mean response length {length:.1f} tokens is {ratio:.2f}x the "
                                f"starting policy's {self.reference_length:.1f} (limit --max-length-ratio "
                                f"{self.max_length_ratio}); {advice}")
        if self.max_kl and kl > self.max_kl:
            raise PolicyRunaway(f"step {step}: mean KL to the reference is {kl:.1f} nats per response (limit "
                                f"--max-kl {self.max_kl}); {advice}")
        if self.max_length_ratio and ratio > LENGTH_WARNING_RATIO:
            self._warn_once("length", f"step {step}: mean response length is {ratio:.2f}x the starting policy's "
                                      f"(the run stops past {self.max_length_ratio}x)")
        if self.max_kl and kl > self.max_kl / 2:
            self._warn_once("kl", f"step {step}: mean KL to the reference is {kl:.1f} nats per response (the run "
                                  f"stops past {self.max_kl})")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(message)
