"""Turn expected failures into one clear line: bad data, options, models or files exit 2; a non-finite
loss or running out of memory exits 3 (with what to change); a stop on a signal exits 128 + signal.

Kept free of heavy imports: the data and model layers import `ModelError` from here.
"""

from __future__ import annotations

import contextlib
import logging
import sys

logger = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model or tokenizer that cannot be used as asked: files missing from its folder, a Hub name
    that is not cached while offline, weights or code refused by the safe defaults, or a tokenizer
    without the chat template a conversational row needs. The message names the folder or id."""


MEMORY_ADVICE = ("settings that reduce memory: a smaller --batch-size or --mini-batch-size (with "
                 "--gradient-accumulation-steps to keep the batch), a shorter --max-length or --max-new-tokens, "
                 "--gradient-checkpointing, LoRA (--lora-r 8), --dtype bfloat16, or a DeepSpeed ZeRO config "
                 "(accelerate launch --config_file configs/accelerate/zero2.yaml)")


class StageFailed(RuntimeError):
    """A stage that `dvpo compare` ran as a subprocess failed; the message points at its log."""


@contextlib.contextmanager
def user_facing_errors():
    import torch

    from dvpo.config import ConfigError
    from dvpo.data.formats import DataError
    from dvpo.trainers.interrupts import RunInterrupted
    from dvpo.trainers.run_dir import RunComplete
    from dvpo.trainers.runaway import PolicyRunaway

    try:
        yield
    except RunComplete as done:
        print(f"dvpo: {done}", file=sys.stderr)
        sys.exit(0)
    except RunInterrupted as stopped:
        print(f"dvpo: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("dvpo: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except StageFailed as failed:
        print(f"dvpo: error: {failed}", file=sys.stderr)
        sys.exit(1)
    except PolicyRunaway as error:
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(3)
    except FloatingPointError as error:
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(3)
    except (torch.OutOfMemoryError, MemoryError) as error:
        first_line = (str(error).splitlines() or ["out of memory"])[0]
        print(f"dvpo: error: out of memory ({first_line}); {MEMORY_ADVICE}", file=sys.stderr)
        sys.exit(3)
    except (DataError, ConfigError, ModelError, FileNotFoundError) as error:
        logger.debug("traceback of the error below", exc_info=True)  # shown with `dvpo -v`
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(2)
