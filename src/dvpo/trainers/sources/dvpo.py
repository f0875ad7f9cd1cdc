"""DVPO: advantages from a frozen global value model (GVM); nothing is trained beside the policy.

`--dvpo-advantage`: "value" is the paper's normalised token value; "difference" subtracts the previous
slot's value; "gae" uses the GVM as a frozen critic (its last value is the reward, GAE over its values,
whitened like PPO's), see `dvpo_critic_advantages`; "sequence" the same reward less the GVM's value of the prompt on
every token (`dvpo_sequence_advantages`); "blend" a baseline between the two, trusting the values of partial
responses by the GVM's reliability weight; "authors" is the authors' code (`dvpo_authors_advantages`).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from dvpo.algos.advantages import dvpo_advantages, dvpo_authors_advantages, sequence_value
from dvpo.errors import ConfigError
from dvpo.data.tau import conditioned_on, sample_tau_sets
from dvpo.data.tokenize import TruncationStats, encode_prompt
from dvpo.errors import ModelError
from dvpo.rollout.experience import Advantages, Rollout, length_sorted_chunks, unpadded_rows
from dvpo.trainers.sources.base import FrozenSignalSource
from dvpo.trainers.sources.scoring import signal_weight, warn_if_near_chance

logger = logging.getLogger(__name__)


DEFAULT_LAMBDA = {"gae": 1.0, "authors": 0.95}  # gae: chosen on validation (docs/rl.md); authors: their code


def dvpo_lambda(cfg) -> float:
    """`--dvpo-gae-lambda`, or the default of the advantage form: 1.0 for `gae` (the GVM as a baseline only:
    each token's advantage is the final value minus V(s_t), which beat lambda 0.95 on three validation
    settings), 0.95 for `authors`; the `value` and `difference` forms use none."""
    return cfg.dvpo_gae_lambda if cfg.dvpo_gae_lambda is not None else DEFAULT_LAMBDA.get(cfg.dvpo_advantage, 1.0)


class DvpoSource(FrozenSignalSource):
    name: ClassVar[str] = "dvpo"
    uses = ("gvm",)

    def __init__(self, gvm, advantage: str, normalization: str, gamma: float, lam: float, weight: float = 1.0,
                 forward_rows: int = 32, reward: str = "last", trust: float = 0.0):
        self.gvm, self.advantage, self.normalization, self.weight = gvm, advantage, normalization, weight
        self.reward, self.trust = reward, trust
        self.forward_rows = forward_rows
        self.gamma, self.lam = gamma, lam
        self.whiten_default = advantage in ("gae", "sequence", "blend", "authors")

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if not cfg.gvm:
            raise ConfigError("--algo dvpo needs --gvm (a folder written by `dvpo gvm`)")
        if cfg.dvpo_reward != "last" and cfg.dvpo_advantage not in ("gae", "sequence", "blend"):
            raise ConfigError(f"--dvpo-reward {cfg.dvpo_reward} applies to --dvpo-advantage gae, sequence or blend "
                              f"only (the response's reward); {cfg.dvpo_advantage} has no response reward")

    @classmethod
    def build(cls, cfg, device, policy, reference, tokenizer):
        """A LoRA GVM trained on the policy's own base runs on the reference's decoder (one frozen backbone
        for both); the reference then runs with the GVM's adapter switched off. With a LoRA policy, whose
        reference is the policy with its adapter off, that decoder is the policy's: it carries both adapters,
        and the reference switches both off."""
        from dvpo.models.frozen import AdapterOff
        from dvpo.models.value_model import load_value_model, shares_backbone

        lora_policy = isinstance(reference, AdapterOff)
        share = shares_backbone(cfg.gvm, cfg.policy) and not cfg.fsdp
        backbone = (policy.get_base_model().base_model if lora_policy else reference.base_model) if share else None
        gvm = load_value_model(cfg.gvm, device=device, dtype=cfg.dtype, backbone=backbone,
                               backbone_adapter="default" if share and lora_policy else None)
        if share:
            logger.info("the GVM (a LoRA adapter on %s) and the reference share one frozen backbone%s", cfg.policy,
                        ", the LoRA policy's" if lora_policy else "")
            if not lora_policy:
                reference = AdapterOff(reference, adapters=gvm.model)
        warn_if_near_chance(gvm.meta, cfg.gvm)
        weight = (signal_weight(gvm.meta, cfg.gvm, "--dvpo-normalization")
                  if cfg.dvpo_normalization == "reliability" else 1.0)
        trust = (signal_weight(gvm.meta, cfg.gvm, "--dvpo-advantage",
                               "the blend trusts its values of partial responses by", "the blend is `sequence`")
                 if cfg.dvpo_advantage == "blend" else 0.0)
        return cls(gvm, cfg.dvpo_advantage, cfg.dvpo_normalization, cfg.gamma, dvpo_lambda(cfg), weight,
                   forward_rows=cfg.mini_batch_size, reward=cfg.dvpo_reward, trust=trust), reference

    def gvm_inputs(self, rollout: Rollout):
        """[tau; prompt; response] per row; tau is the response to another prompt of the global batch, drawn by
        the rule of GVM training (`sample_tau_sets`: the whole batch is one policy's pool), seeded by the step.

        Cut to the GVM's max_length by GVM training's rule (`truncate`): the conditioned prompt from the left
        (tau first), always keeping its last token (the slot of V(s_1)); a response longer than max_length - 1
        is cut from the right, so `lengths` is the kept response tokens + 1 and the cut-off tokens get no value
        slot (and no advantage).
        """
        rows = unpadded_rows(rollout.seq)
        everyone = rollout.all_prompts
        partners = (sample_tau_sets(everyone, [None] * len(everyone), rollout.seed, self.gvm.meta.tau_pairs)
                    [rollout.offset:rollout.offset + len(rows)] if self.gvm.meta.tau else [[]] * len(rows))
        ids, starts, lengths = [], [], []
        cut = TruncationStats()
        for i, (_, response) in enumerate(rows):
            pairs = [(everyone[j], rollout.all_texts[j]) for j in partners[i]]
            prompt_ids = encode_prompt(self.gvm.tokenizer, conditioned_on(rollout.prompts[i], pairs))
            if not prompt_ids:
                raise ModelError("the GVM's tokenizer encodes the prompt to no token, so there is no slot for V(s_1)")
            kept, mask, what = self.gvm.fit(prompt_ids + response, [0] * len(prompt_ids) + [1] * len(response))
            cut.add(what)
            ids.append(kept)
            starts.append(mask.index(1) - 1 if 1 in mask else len(kept) - 1)
            lengths.append(sum(mask) + 1)
        if cut.response_truncated:
            logger.warning("GVM inputs: %d of %d responses longer than the GVM's max_length %d minus the prompt's "
                           "last token cut on the right; their cut-off tokens get no advantage",
                           cut.response_truncated, len(rows), self.gvm.meta.max_length)
        device = self.gvm.device
        return (*self.gvm.padded(ids), torch.tensor(starts, device=device), torch.tensor(lengths, device=device))

    def slot_values(self, ids: torch.Tensor, attention: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor):
        """The GVM's raw slot values [B, T+1], their mask and each row's moments over all its positions
        (`slots_and_row_moments`), `forward_rows` rows at a time: rows of similar length together, each chunk
        cut to its own longest row (a [tau; x; y] batch pads a lot otherwise)."""
        values = torch.zeros(ids.shape[0], int(lengths.max()), device=ids.device)
        slots = torch.zeros_like(values)
        moments = torch.zeros(ids.shape[0], 2, device=ids.device)
        for index in length_sorted_chunks(attention.sum(dim=1), self.forward_rows):
            longest = int(attention[index].sum(dim=1).max())
            part, part_slots, part_moments = self.gvm.slots_and_row_moments(
                ids[index, :longest], attention[index, :longest], starts[index], lengths[index])
            values[index, : part.shape[1]] = part
            slots[index, : part.shape[1]] = part_slots
            moments[index] = part_moments
        return values, slots, moments

    @torch.no_grad()
    def rollout_values(self, rollout: Rollout):
        """The GVM's raw slot values [B, T+1], Q of each response token [B, T] on the `valued` ones (all but
        those cut beyond its max_length), V(s_1) [B] and each row's moments over all its positions."""
        values, slots, moments = self.slot_values(*self.gvm_inputs(rollout))
        mask = rollout.seq.response_mask
        width = mask.shape[1]
        q = torch.zeros_like(mask)
        valued = torch.zeros_like(mask)
        q[:, : values.shape[1] - 1] = values[:, 1: width + 1].to(mask.device)
        valued[:, : values.shape[1] - 1] = slots[:, 1: width + 1].to(mask.device)
        valued = valued * mask
        return values, q * valued, valued, values[:, 0].to(mask.device), moments

    def rollout_proxy(self, rollout: Rollout) -> float:
        """`final_value` of a rollout: what this GVM, used as a second scorer (`--eval-scorer`), reports."""
        _, q, valued, _, _ = self.rollout_values(rollout)
        return self.final_value(q, valued, rollout)

    @torch.no_grad()
    def advantages(self, rollout: Rollout, kl: torch.Tensor, kl_coef: float) -> Advantages:
        values, q, valued, v_first, moments = self.rollout_values(rollout)
        mask = rollout.seq.response_mask
        if self.normalization in ("stored", "reliability"):  # reliability: then times `weight`
            mean, std = self.gvm.meta.value_mean, self.gvm.meta.value_std
        elif self.normalization == "none":  # raw values: the units of the z-scored training scores
            mean, std = 0.0, 1.0
        else:  # the rollout batch's own statistics over its response tokens (of every process)
            mean, var, _ = rollout.stats.masked_moments(q, valued)
            std = var.sqrt()
        penalty = kl_coef * kl
        if self.advantage == "authors":
            before = torch.zeros_like(mask)  # the value of the state before each token: slots 0..T-1
            before[:, : values.shape[1] - 1] = values[:, :-1].to(mask.device)
            moments = moments.to(mask.device)
            advantages = dvpo_authors_advantages(before * valued, valued, moments[:, 0], moments[:, 1], penalty,
                                                 self.gamma, self.lam)
        else:
            advantages = dvpo_advantages(self.advantage, q, v_first, valued, penalty, mean, std, self.weight,
                                         self.gamma, self.lam, self.reward, self.trust)
        batch_mean = lambda x, over: rollout.stats.masked_moments(x, over)[0].item()  # noqa: E731 (all processes)
        return Advantages(advantages, {"proxy_score": self.final_value(q, valued, rollout),
                                       "gvm_value_mean": batch_mean(self.gvm.normalize(q) * valued, valued),
                                       "advantage_mean": batch_mean(advantages, valued)}, mask=valued)

    def proxy(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """The GVM's standardised value of each text (`GlobalValueModel.final_values`, aggregated as the
        reward is): `proxy_score` for samples drawn outside the rollout."""
        return self.gvm.final_values(prompts, texts, self.reward)

    def final_value(self, q: torch.Tensor, valued: torch.Tensor, rollout: Rollout) -> float:
        """The run's proxy score: the batch mean of the GVM's value of each sample (its last valued token's, or
        the mean over its valued tokens with `--dvpo-reward mean`), standardised by its stored statistics (no
        reliability weight): what DVPO pushes up, to set beside a gold score (over-optimisation shows as the
        two diverging)."""
        score = sequence_value(q, valued, self.reward)
        has_value = (valued.sum(dim=1) > 0).to(q.dtype).unsqueeze(1)
        return rollout.stats.masked_moments(self.gvm.normalize(score).unsqueeze(1), has_value)[0].item()
