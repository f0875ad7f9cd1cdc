"""The Python API: TRL-shaped configs and trainers over the stages the CLI runs (`from dvpo import DVPOTrainer`)."""

from dvpo.api.configs import (DPOConfig, DVPOConfig, GRPOConfig, GVMConfig, PPOConfig, ReMaxConfig, RewardConfig,
                              RLOOConfig, SFTConfig)
from dvpo.api.rating import rate_responses
from dvpo.api.trainers import (DPOTrainer, DVPOTrainer, GRPOTrainer, GVMTrainer, PPOTrainer, ReMaxTrainer,
                               RewardTrainer, RLOOTrainer, SFTTrainer)

__all__ = ["SFTConfig", "SFTTrainer", "GVMConfig", "GVMTrainer", "RewardConfig", "RewardTrainer", "DPOConfig",
           "DPOTrainer", "DVPOConfig", "DVPOTrainer", "PPOConfig", "PPOTrainer", "ReMaxConfig", "ReMaxTrainer",
           "GRPOConfig", "GRPOTrainer", "RLOOConfig", "RLOOTrainer", "rate_responses"]
