"""dvpo: RLHF toolkit whose headline method is DVPO (Decoupled Value Policy Optimization)."""

__version__ = "0.1.0"
