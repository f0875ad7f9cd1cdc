"""Turn expected failures (bad data, missing files, finished runs) into one clear line and exit code 2.

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


@contextlib.contextmanager
def user_facing_errors():
    from dvpo.config import ConfigError
    from dvpo.data.formats import DataError
    from dvpo.trainers.run_dir import RunComplete

    try:
        yield
    except RunComplete as done:
        print(f"dvpo: {done}", file=sys.stderr)
        sys.exit(0)
    except (DataError, ConfigError, ModelError, FileNotFoundError) as error:
        logger.debug("traceback of the error below", exc_info=True)  # shown with `dvpo -v`
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(2)
