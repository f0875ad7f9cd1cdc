"""The training commands (`dvpo sft|gvm|rm|dpo|rl`) as the CLI runs them: the command's options become a
trainer of the Python API, which runs the stage. One path for both, so they cannot drift apart."""

from __future__ import annotations

from dvpo.api.trainers import RL_TRAINERS, DPOTrainer, GVMTrainer, RewardTrainer, SFTTrainer


def run_sft(cfg) -> dict:
    return SFTTrainer.from_stage_config(cfg).train()


def run_gvm(cfg) -> dict:
    return GVMTrainer.from_stage_config(cfg).train()


def run_rm(cfg) -> dict:
    return RewardTrainer.from_stage_config(cfg).train()


def run_dpo(cfg) -> dict:
    return DPOTrainer.from_stage_config(cfg).train()


def run_rl(cfg) -> dict:
    return RL_TRAINERS[cfg.algo].from_stage_config(cfg).train()
