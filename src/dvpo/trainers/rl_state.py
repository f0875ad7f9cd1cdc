"""Checkpoints of the online loop, for exact resume on any number of processes.

A checkpoint is accelerate's `save_state` (every prepared model and optimizer, DeepSpeed's
shards included, and each process's RNG states) plus the step and the KL controller; models
sharded with FSDP outside accelerate are saved as full state dicts (torch.distributed.checkpoint). The
prompt position and the sampling and shuffling noise are functions of the step, so nothing
else is needed. The callbacks' `TrainerState` (its log history) travels as trainer_state.json, as in a
Hugging Face Trainer checkpoint, so a resumed run's callbacks see every step, not only the new ones.
Every process writes into a temporary folder that the main process renames once all are done, so a crash
never leaves a half-written checkpoint; only the last N are kept.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from transformers import TrainerState

from dvpo.trainers.run_dir import CHECKPOINTS

META_FILE = "meta.json"
TRAINER_STATE_FILE = "trainer_state.json"

logger = logging.getLogger(__name__)


FSDP_FILE = "fsdp_state.pt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class RlCheckpointer:
    def __init__(self, folder: Path, keep: int, accelerator, sharded: list | None = None):
        self.root = folder / CHECKPOINTS
        self.keep = keep
        self.accelerator = accelerator
        self.sharded = sharded or []  # (model, optimizer) pairs sharded by FSDP, not known to accelerate

    def _existing(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.glob("step-*") if (p / META_FILE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save(self, step: int, controller, guard, trainer_state: TrainerState) -> Path:
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        main = self.accelerator.is_main_process
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        if self.sharded:  # every process takes part in gathering; the main one writes
            states = [get_state_dict(model, optimizer, options=FULL) for model, optimizer in self.sharded]
            if main:
                torch.save(states, tmp / FSDP_FILE)
        self.accelerator.wait_for_everyone()
        if main:
            (tmp / META_FILE).write_text(json.dumps({"step": step, "controller": controller.state_dict(),
                                                     "guard": guard.state_dict(),
                                                     "processes": self.accelerator.num_processes}))
            trainer_state.save_to_json(str(tmp / TRAINER_STATE_FILE))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self._existing()[: max(len(self._existing()) - self.keep, 0)]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def restore(self, controller, guard) -> tuple[int, TrainerState | None]:
        """Loads the newest checkpoint if there is one (the KL controller's and the runaway guard's state with
        it); returns the step to continue from and the callbacks' saved `TrainerState` (None without one)."""
        existing = self._existing()
        if not existing:
            return 0, None
        latest = existing[-1]
        logger.info("resuming from %s", latest)
        self.accelerator.load_state(str(latest))
        if self.sharded:
            states = torch.load(latest / FSDP_FILE, weights_only=True, map_location="cpu")
            for (model, optimizer), (model_state, optimizer_state) in zip(self.sharded, states):
                set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                               options=StateDictOptions(full_state_dict=True))
        meta = json.loads((latest / META_FILE).read_text())
        controller.load_state_dict(meta["controller"])
        guard.load_state_dict(meta.get("guard", {}))
        saved_state = latest / TRAINER_STATE_FILE
        return int(meta["step"]), TrainerState.load_from_json(str(saved_state)) if saved_state.is_file() else None
