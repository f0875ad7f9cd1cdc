"""The Python API: TRL-shaped configs and trainers over the stages the CLI runs (`from dvpo import DVPOTrainer`).

The configs are light (no torch): building one, `help()` on it or reading a recipe costs a fraction of a second.
The trainers and `rate_responses` import torch and transformers on first use."""

from dvpo.api.configs import (DPOConfig, DVPOConfig, GRPOConfig, GVMConfig, PPOConfig, ReMaxConfig, RewardConfig,
                              RLOOConfig, SFTConfig)

TRAINERS = ("SFTTrainer", "GVMTrainer", "RewardTrainer", "DPOTrainer", "DVPOTrainer", "PPOTrainer", "ReMaxTrainer",
            "GRPOTrainer", "RLOOTrainer")
CONFIGS = ("SFTConfig", "GVMConfig", "RewardConfig", "DPOConfig", "DVPOConfig", "PPOConfig", "ReMaxConfig",
           "GRPOConfig", "RLOOConfig")
__all__ = [*CONFIGS, *TRAINERS, "rate_responses"]


def __getattr__(name):
    if name in TRAINERS:
        from dvpo.api import trainers

        return getattr(trainers, name)
    if name == "rate_responses":
        from dvpo.api.rating import rate_responses

        return rate_responses
    raise AttributeError(f"module 'dvpo.api' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
