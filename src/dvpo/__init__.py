"""dvpo: RLHF toolkit whose headline method is DVPO (Decoupled Value Policy Optimization)."""

__version__ = "0.1.0"


def load_value_model(folder, device=None, dtype="auto"):
    """Load a global value model saved by `dvpo gvm` (see dvpo.models.value_model)."""
    from dvpo.models.value_model import load_value_model as _load

    return _load(folder, device=device, dtype=dtype)
