"""Experiment trackers (`--report-to`): checked before a run writes anything, and the config each one stores.

Offline stages hand the names to transformers' `TrainingArguments.report_to`; the RL loop to accelerate's
trackers, which log the same metric names as metrics.jsonl."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from dvpo.errors import ConfigError

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
"""Tracker name -> the Python package it needs (all in `pip install dvpo[trackers]`)."""


def report_targets(report_to: str) -> list[str]:
    """The trackers of a `--report-to` value ("none", one name, or several joined by commas); a ConfigError
    naming the package to install when one is missing."""
    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    for name in names:
        if name not in TRACKER_PACKAGES:
            raise ConfigError(f"--report-to {report_to!r}: unknown tracker {name!r} (choose from none, "
                              f"{', '.join(TRACKER_PACKAGES)}, or several joined by commas)")
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"--report-to {name} needs the {package} package: pip install {package} "
                              "(or pip install 'dvpo[trackers]' for every tracker)")
    if "mlflow" in names:
        check_mlflow_store()
    return names


def check_mlflow_store() -> None:
    """MLflow's tracking store as `MLFLOW_TRACKING_URI` sets it, opened now: a store MLflow refuses (the file
    store without `MLFLOW_ALLOW_FILE_STORE=true`, sqlite without sqlalchemy) would otherwise fail mid-run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient()._tracking_client.store
    except (MlflowException, ImportError) as error:
        first = str(error).split(". ")[0]
        raise ConfigError(f"--report-to mlflow: the tracking store {os.environ.get('MLFLOW_TRACKING_URI', '(default)')} "
                          f"cannot be opened: {first}; set MLFLOW_TRACKING_URI (with MLFLOW_ALLOW_FILE_STORE=true for "
                          "a file:// store)") from None


def tracker_config(cfg) -> dict:
    """The run's options as trackers store them: TensorBoard's hparams take only numbers, strings and booleans
    (accelerate issue #3727), so lists are joined and None is written "none"."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return "none" if value is None else value
    return {key: plain(value) for key, value in dataclasses.asdict(cfg).items()}
