"""Every exception dvpo raises on purpose, in one module free of dependencies, so any layer can raise them
without importing another. The CLI (`dvpo.cli.user_facing_errors`) maps each to one clear line and an exit
code: bad data, options, models or files exit 2; a non-finite loss, a runaway policy or running out of
memory exit 3; a stop on a signal exits 128 + signal.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any


class ModelError(ValueError):
    """A model or tokenizer that cannot be used as asked: files missing from its folder, a Hub name
    that is not cached while offline, weights or code refused by the safe defaults, or a tokenizer
    without the chat template a conversational row needs. The message names the folder or id."""


MEMORY_ADVICE = ("settings that reduce memory: a smaller --batch-size or --mini-batch-size (with "
                 "--gradient-accumulation-steps to keep the batch), a shorter --max-length or --max-new-tokens, "
                 "--gradient-checkpointing, LoRA (--lora-r 8), --dtype bfloat16, or a DeepSpeed ZeRO config "
                 "(accelerate launch --config_file configs/accelerate/zero2.yaml)")


class RewardFunctionError(ValueError):
    """A user's reward function (`--reward-fn`) raised, returned the wrong count or a non-finite value;
    the message names the function."""


class StageFailed(RuntimeError):
    """A stage that `dvpo compare` ran as a subprocess failed; the message points at its log."""


class ConfigError(ValueError):
    """A bad option: names the option and where it came from."""


class DataError(ValueError):
    """A bad source or row; the message reads `source:line: field 'name': problem`."""

    def __init__(self, source: Any, line: int | None, field: str | None, problem: str):
        self.source, self.line, self.field, self.problem = str(source), line, field, problem
        where = self.source if line is None else f"{self.source}:{line}"
        what = problem if field is None else f"field {field!r}: {problem}"
        super().__init__(f"{where}: {what}")


class RunInterrupted(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, folder: Path):
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; a checkpoint is saved in "
                         f"{folder}: run the same command again to resume")


class NonFiniteLoss(FloatingPointError):
    """A NaN or infinite loss: the run stops before the bad update is saved."""

    def __init__(self, step: int, value: float, folder: Path):
        super().__init__(f"non-finite loss ({value}) at step {step}; the last good checkpoint is kept in "
                         f"{folder}; lower the learning rate or check the data, then resume or --overwrite")


class PolicyRunaway(RuntimeError):
    """KL or response length passed its limit; the message names the step, the value and the option."""


class RunComplete(RuntimeError):
    """The output folder already holds a finished run (not an error: the CLI exits 0)."""

    def __init__(self, folder: Path):
        super().__init__(f"{folder} holds a finished run; pass --overwrite to train again")
        self.folder = folder
