"""Shared fixtures: a small lab data set and a tiny freshly initialised model, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded at test time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory):
    from dvpo.lab.make_data import make_lab_data

    return make_lab_data(tmp_path_factory.mktemp("lab"), seed=1, n_sft=300, n_rated=200, n_rl=100, n_test=40,
                         n_rated_test=40)


@pytest.fixture(scope="session")
def tiny_model(lab_data, tmp_path_factory):
    from dvpo.models.init import init_model

    out = tmp_path_factory.mktemp("tiny") / "init"
    init_model([str(lab_data["sft"]), str(lab_data["rated"])], "tiny", str(out), seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_gvm(tiny_model, lab_data, tmp_path_factory):
    """A GVM trained for a few steps: enough for RL runs to have values to follow."""
    from dvpo.cli import main

    out = tmp_path_factory.mktemp("gvm") / "gvm"
    main(["gvm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(out),
          "--max-steps", "3", "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "96"])
    return out
