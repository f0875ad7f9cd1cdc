"""dvpo: RLHF toolkit whose headline method is DVPO (Decoupled Value Policy Optimization).

The Python API reads like TRL's: `GVMConfig`/`GVMTrainer`, `DVPOConfig`/`DVPOTrainer`, `PPOTrainer`,
`GRPOTrainer`, ... (docs/api.md). They are imported on first use, so `import dvpo` and the CLI's `--help`
stay fast.
"""

__version__ = "0.1.0"

API = ("SFTConfig", "SFTTrainer", "GVMConfig", "GVMTrainer", "RewardConfig", "RewardTrainer", "DPOConfig",
       "DPOTrainer", "DVPOConfig", "DVPOTrainer", "PPOConfig", "PPOTrainer", "ReMaxConfig", "ReMaxTrainer",
       "GRPOConfig", "GRPOTrainer", "RLOOConfig", "RLOOTrainer", "rate_responses")
__all__ = [*API, "load_value_model"]


def __getattr__(name):
    if name in API:
        from dvpo import api

        return getattr(api, name)
    raise AttributeError(f"module 'dvpo' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])


def load_value_model(folder, device=None, dtype="auto"):
    """Load a global value model saved by `dvpo gvm` (see dvpo.models.value_model)."""
    from dvpo.models.value_model import load_value_model as _load

    return _load(folder, device=device, dtype=dtype)
