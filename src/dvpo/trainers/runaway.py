"""Guards against a policy that games its signal: KL to the reference and response length running away.

A policy that exploits its reward or value model usually shows it first in these two numbers (a
GVM or reward model that pays for every extra token makes responses grow to the cap; a signal the
policy can fool drives the KL up while the controller lags). The same guard runs for every
algorithm: it records the response length against the starting policy's, warns once when a
number passes half its limit, and stops the run with a clear message past the limit.
"""

from __future__ import annotations

import logging

from dvpo.errors import PolicyRunaway

logger = logging.getLogger(__name__)

LENGTH_WARNING_RATIO = 1.5


class RunawayGuard:
    def __init__(self, max_kl: float, max_length_ratio: float, reference_length: float | None = None):
        self.max_kl, self.max_length_ratio = max_kl, max_length_ratio
        self.reference_length = reference_length
        self.warned: set[str] = set()

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so a resumed run measures lengths against the same starting policy."""
        return {"reference_length": self.reference_length, "warned": sorted(self.warned)}

    def load_state_dict(self, state: dict) -> None:
        self.reference_length = state.get("reference_length")
        self.warned = set(state.get("warned", []))

    def check(self, record: dict, where: str) -> None:
        """Add `length_ratio` to a step's record; warn or raise `PolicyRunaway` past the limits."""
        length, kl, step = record["response_length"], record["kl"], record["step"]
        if self.reference_length is None:
            self.reference_length = length
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
