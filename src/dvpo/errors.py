"""Turn expected failures (bad data, missing files, finished runs) into one clear line and exit code 2."""

from __future__ import annotations

import contextlib
import sys

from dvpo.trainers.run_dir import RunComplete


@contextlib.contextmanager
def user_facing_errors():
    from dvpo.data.formats import DataError
    from dvpo.config import ConfigError

    try:
        yield
    except RunComplete as done:
        print(f"dvpo: {done}", file=sys.stderr)
        sys.exit(0)
    except (DataError, ConfigError, FileNotFoundError) as error:
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(2)
