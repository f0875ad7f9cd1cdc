"""`dvpo rl --eval-scorer DIR`: a second scorer that watches a run and never trains it.

A policy over-optimises the frozen scorer it chases: that scorer's score of its samples (`proxy_score`) keeps
rising while their true quality stalls or falls (Gao et al. 2022). Without a gold judge, a second scorer
trained on the same preferences is the next best witness: a reward model for a DVPO run, a GVM for a PPO run.
Its standardised score of each step's rollouts is `second_score` (`eval_second_score` on `--eval-prompts`);
`OveroptimisationWatch` (dvpo.trainers.runaway) warns when the two part ways.

It scores a rollout exactly as it would as the run's own scorer (the same tokens, tau and truncation), so the
two numbers differ only by the scorer; a scorer of another tokenizer reads the decoded text instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dvpo.errors import ConfigError
from dvpo.models.reward_model import RM_META
from dvpo.models.tokenizer_match import same_vocabulary
from dvpo.models.value_model import GVM_META
from dvpo.rollout.experience import Rollout, unpadded_rows

logger = logging.getLogger(__name__)


def second_scorer_kind(folder: str) -> str:
    """"gvm" or "reward model", from the folder's stage record; a clear error before any file is written."""
    path = Path(folder)
    if (path / GVM_META).is_file():
        return "gvm"
    if (path / RM_META).is_file():
        return "reward model"
    raise ConfigError(f"--eval-scorer {folder}: not a GVM folder ({GVM_META}, `dvpo gvm`) nor a reward-model folder "
                      f"({RM_META}, `dvpo rm`)")


class SecondScorer:
    """A GVM's standardised final value (by its stored statistics), or a reward model's standardised score."""

    def __init__(self, folder: str, device, dtype: str, policy_tokenizer):
        self.kind = second_scorer_kind(folder)
        if self.kind == "gvm":
            from dvpo.models.value_model import load_value_model
            from dvpo.trainers.sources.dvpo import DvpoSource

            self.model = load_value_model(folder, device=device, dtype=dtype)
            same = same_vocabulary(self.model.tokenizer, policy_tokenizer)
            self.source = DvpoSource(self.model, "gae", "stored", 1.0, 1.0) if same else None
        else:
            from dvpo.models.reward_model import load_reward_model
            from dvpo.trainers.sources.scoring import SequenceScorer

            self.model = load_reward_model(folder, device=device, dtype=dtype)
            same = same_vocabulary(self.model.tokenizer, policy_tokenizer)
            self.sequence = SequenceScorer(self.model, normalize=True, reencode=not same)
        logger.info("--eval-scorer %s (a %s%s) scores every rollout as second_score; it never trains the policy",
                    folder, self.kind, "" if same else ", another tokenizer: it reads the decoded text")

    def rollout_score(self, rollout: Rollout) -> float:
        """The mean score of this process's share of a rollout batch (of the whole batch for a GVM of the policy's
        tokenizer, whose tau is drawn as the run's own GVM draws it; a GVM of another tokenizer reads the decoded
        text, tau drawn among this process's samples)."""
        if self.kind == "gvm":
            if self.source is not None:
                return self.source.rollout_proxy(rollout)
            return self(rollout.prompts, rollout.texts).mean().item()
        return self.sequence(unpadded_rows(rollout.seq), rollout.prompts, rollout.texts, rollout.columns).mean().item()

    def __call__(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """[N] scores of samples drawn outside a rollout (evaluation), re-encoded from their text."""
        if self.kind == "gvm":
            return self.model.final_values(list(prompts), list(texts))
        return self.model.normalize(self.model.score(list(prompts), list(texts))).float()
