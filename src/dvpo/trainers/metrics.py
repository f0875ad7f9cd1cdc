"""Metrics of a run as JSONL (always) plus a PNG of the curves at the end."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch
from transformers import TrainerCallback

from dvpo.eval.plots import plot_metrics


def peak_memory_bytes() -> int:
    """CUDA: max allocated on this device; CPU: the process's peak resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class MetricsFileCallback(TrainerCallback):
    """Appends every Trainer log to `metrics.jsonl` (main process only) and plots it at the end."""

    def __init__(self, folder: Path, plot_keys: tuple[str, ...] = ("loss",)):
        self.path = folder / "metrics.jsonl"
        self.plot_keys = plot_keys

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs,
                                    "peak_memory_bytes": peak_memory_bytes()}) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            plot_metrics(self.path, self.plot_keys, self.path.with_name("metrics.png"))
