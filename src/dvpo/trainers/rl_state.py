"""Checkpoints of the online loop (exact resume) and the peak-memory reading it logs.

A checkpoint holds model and optimizer states, the KL controller, RNG states and the step
(the prompt position is a function of the step). It is written to a temporary folder and
renamed, so a crash never leaves a half-written checkpoint; only the last N are kept.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
from pathlib import Path

import torch

from dvpo.trainers.run_dir import CHECKPOINTS

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def peak_memory_bytes() -> int:
    """CUDA: max allocated on this device; CPU: the process's peak resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class RlCheckpointer:
    def __init__(self, folder: Path, keep: int):
        self.root = folder / CHECKPOINTS
        self.keep = keep

    def _existing(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.glob("step-*") if (p / META_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save(self, step: int, policy, optimizer, trainable: list, trainable_optimizer, controller) -> Path:
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "trainable": [m.state_dict() for m in trainable],
            "trainable_optimizer": trainable_optimizer.state_dict() if trainable_optimizer else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps({"step": step, "controller": controller.state_dict(),
                                                 "python_rng": random.getstate()[1][:]}, default=list))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self._existing()[: -self.keep]:
            shutil.rmtree(old)
        return final

    def restore(self, policy, optimizer, trainable: list, trainable_optimizer, controller) -> int:
        """Loads the newest checkpoint if there is one; returns the step to continue from."""
        existing = self._existing()
        if not existing:
            return 0
        latest = existing[-1]
        state = torch.load(latest / STATE_FILE, weights_only=True, map_location="cpu")
        meta = json.loads((latest / META_FILE).read_text())
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        for module, module_state in zip(trainable, state["trainable"]):
            module.load_state_dict(module_state)
        if trainable_optimizer and state["trainable_optimizer"]:
            trainable_optimizer.load_state_dict(state["trainable_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        controller.load_state_dict(meta["controller"])
        return int(meta["step"])
