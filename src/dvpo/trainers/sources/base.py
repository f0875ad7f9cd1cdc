"""The `AdvantageSource` protocol the RL loop calls (it knows no algorithm by name), and the defaults the
sources share. A source turns a `Rollout` into `Advantages`; the experience maker (`dvpo.rollout.experience`)
puts them into the step's one `Experience`."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from dvpo.errors import ConfigError
from dvpo.rollout.experience import Advantages, Experience, Rollout
from dvpo.user_functions import load_function


class AdvantageSource(Protocol):
    """One RL algorithm's advantages: everything the loop needs to know about it.

    - `samples_per_prompt(cfg)`: responses drawn per prompt (a group for GRPO and RLOO, else 1);
    - `kl_in_loss`: the KL to the reference enters as β·k3 in the loss (GRPO) rather than in the reward
      (which `--kl-penalty loss` also selects for every source); the loop decides it once (`kl_enters_loss`);
    - `whiten_default`: whether `--whiten-advantages auto` whitens its advantages over the batch;
    - `trainable`: the models the loop trains beside the policy, with one optimizer (PPO's critic);
    - `check(cfg)`: cross-field checks, run before any file is written;
    - `build(...)`: the source for a run, and the reference as the loop must call it;
    - `proxy(prompts, texts)`: its own scorer's score of each text ([N], what `proxy_score` averages on
      rollouts), for samples drawn outside the rollout (evaluation).
    """

    kl_in_loss: ClassVar[bool]
    whiten_default: bool
    trainable: list

    @staticmethod
    def samples_per_prompt(cfg) -> int: ...

    @classmethod
    def check(cls, cfg) -> None: ...

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer) -> tuple["AdvantageSource", object]: ...

    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        """`kl` is KL_t on response tokens; `kl_coef` the β of the reward's KL penalty, 0 when the KL enters
        the loss instead (each source applies β·KL in its algorithm's form: per token, or summed per sample)."""
        ...

    def proxy(self, prompts: list, texts: list[str]) -> torch.Tensor: ...

    def value_loss(self, minibatch: Experience) -> tuple[torch.Tensor | None, dict]: ...

    def use_trained(self, modules: list) -> None: ...


def kl_enters_loss(cfg, source) -> bool:
    """Where the KL to the reference enters, decided once per run: as β·k3 in the loss (`--kl-penalty loss`, or a
    source whose algorithm puts it there, GRPO), else in the reward, where the source gets β and applies it."""
    return cfg.kl_penalty == "loss" or source.kl_in_loss


class FrozenSignalSource:
    """Defaults of a source that trains nothing beside the policy and draws one sample per prompt."""

    kl_in_loss: ClassVar[bool] = False
    whiten_default = False
    trainable: list = []
    name: ClassVar[str] = ""
    uses: ClassVar[tuple[str, ...]] = ()  # the signal options this source reads (the others must be unset)

    @staticmethod
    def samples_per_prompt(cfg) -> int:
        return 1

    @classmethod
    def check(cls, cfg) -> None:
        """An option this algorithm would ignore is an error, not a silent no-op."""
        given = {"gvm": cfg.gvm, "reward_model": cfg.reward_model, "reward_fn": cfg.reward_fn}
        ignored = [name for name, value in given.items() if value and name not in cls.uses]
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            raise ConfigError(f"--algo {cls.name} does not use {flags}; it reads "
                              f"{' or '.join('--' + u.replace('_', '-') for u in cls.uses)}")
        if cfg.reward_weights and len(cfg.reward_weights) != len(cfg.reward_fn):
            raise ConfigError(f"--reward-weights has {len(cfg.reward_weights)} value(s) for {len(cfg.reward_fn)} "
                              "--reward-fn function(s): give one weight per function, or none (all 1)")
        for spec in cfg.reward_fn:
            load_function(spec, "--reward-fn")

    def value_loss(self, minibatch: Experience):
        return None, {}

    def use_trained(self, modules: list) -> None:
        self.trainable = list(modules)


class RewardSource(FrozenSignalSource):
    """A source whose signal is a sequence-level reward: a reward model's score and/or reward functions."""

    uses = ("reward_model", "reward_fn")

    def proxy(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """The sequence reward of each text, re-encoded from text (`SequenceScorer`)."""
        return self.scorer(None, prompts, texts, [{} for _ in texts])

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if not cfg.reward_model and not cfg.reward_fn:
            raise ConfigError(f"--algo {cls.name} needs --reward-model (a folder written by `dvpo rm`) or "
                              "--reward-fn (a Python function, file.py:name or module:name)")
