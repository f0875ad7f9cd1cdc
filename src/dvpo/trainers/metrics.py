"""Metrics of a run as JSONL (always) plus a PNG of the curves at the end."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from dvpo.eval.plots import plot_metrics


class MetricsFileCallback(TrainerCallback):
    """Appends every Trainer log to `metrics.jsonl` (main process only) and plots it at the end."""

    def __init__(self, folder: Path, plot_keys: tuple[str, ...] = ("loss",)):
        self.path = folder / "metrics.jsonl"
        self.plot_keys = plot_keys

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            plot_metrics(self.path, self.plot_keys, self.path.with_name("metrics.png"))
