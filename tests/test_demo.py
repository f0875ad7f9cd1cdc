"""`dvpo demo --quick` end to end, as the README's first command runs it (about 2.5 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_reports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run([sys.executable, "-m", "dvpo", "demo", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    scores = report["scores"]
    assert set(scores) == {"untrained", "sft", "dvpo", "ppo"}
    assert scores["sft"]["mean"] > scores["untrained"]["mean"] + 3  # SFT learned the task format
    assert max(report["behaviour_policies"].values()) > scores["sft"]["mean"]  # RL has room
    assert set(report["gvm_accuracy"]["accuracy"]) >= {"mean", "last"}
    assert 0.0 <= report["rm_accuracy"] <= 1.0
    for stage in ("sft", "gvm", "rm", "dvpo", "ppo"):
        assert (tmp_path / stage / "dvpo_complete.json").exists(), stage
    assert (tmp_path / "learning_curves.png").exists()
    assert "judge score" in result.stdout
    assert "stage gvm started with 1 thread(s)" in result.stderr  # the GVM and the RM train at once
    assert json.loads((tmp_path / "stage_seconds.json").read_text()).keys() >= {"sft", "gvm", "rm", "dvpo", "ppo"}
    # Re-running reuses every finished stage.
    again = subprocess.run([sys.executable, "-m", "dvpo", "demo", "--quick", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "stage sft started" not in again.stderr
