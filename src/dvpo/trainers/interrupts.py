"""Stopping a run cleanly: on Ctrl-C or SIGTERM (a scheduler's pre-emption), and on non-finite losses.

The first SIGINT or SIGTERM asks the run to stop after its current step; the loop then saves a
checkpoint and exits with 128 + the signal number, and re-running the same command resumes. A
second signal stops at once (the last periodic checkpoint remains). With several processes the
request is shared, so every process stops after the same step and saves the same checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from dvpo.errors import NonFiniteLoss, RunInterrupted

logger = logging.getLogger(__name__)


class StopRequest:
    """Remembers the first SIGINT/SIGTERM instead of dying mid-step."""

    def __init__(self):
        self.signum: int | None = None

    @contextlib.contextmanager
    def installed(self):
        """While a stage runs; the previous handlers come back afterwards (in-process callers keep theirs)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        self.signum = None
        previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.signum = signum
        logger.warning("%s received: stopping after this step and saving a checkpoint (signal again to stop "
                       "at once)", signal.Signals(signum).name)

    def requested(self) -> int | None:
        """The signal asked for on any process (the maximum across processes), or None."""
        local = float(self.signum or 0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from accelerate import PartialState

            flag = torch.tensor([local], device=PartialState().device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            local = float(flag.item())
        return int(local) or None


STOP = StopRequest()


class StopOnSignal(TrainerCallback):
    """For `transformers.Trainer`: on a stop request, save a checkpoint at this step and end training."""

    def on_step_end(self, args, state, control, **kwargs):
        if STOP.requested():
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise NonFiniteLoss(state.global_step, loss, Path(args.output_dir))


def raise_if_stopped(state, folder: Path) -> None:
    """After `Trainer.train` returns: a stop request before the last step means the run is not complete."""
    signum = STOP.requested()
    if signum and state.global_step < state.max_steps:
        raise RunInterrupted(signum, state.global_step, folder)
