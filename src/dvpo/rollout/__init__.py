"""Rollouts: sampling engines, and what an RL step learns from a sampled batch."""

ROLLOUT_ENGINES = ("auto", "hf", "static")  # here, free of heavy imports, for the stages' option choices
