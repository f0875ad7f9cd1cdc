"""Runs that stop part-way: killed by a real signal, stopped by SIGTERM, or by a NaN; then resumed.

A killed run (SIGKILL, no chance to clean up) resumes from its last periodic checkpoint; a
SIGTERM (what schedulers send before pre-emption) saves a checkpoint at the current step and
exits 143. Either way, re-running the same command must end with the weights of a run that was
never interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dvpo.cli import user_facing_errors


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvpo", *args], capture_output=True, text=True, env=_env(),
                          timeout=600)


def interrupt(args: list[str], checkpoint: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the run, send `signum` as soon as `checkpoint` exists, and wait for the process to end."""
    process = subprocess.Popen([sys.executable, "-m", "dvpo", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert process.poll() is None, f"run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(p for p in sorted(folder.rglob("model.safetensors")) if "checkpoint" not in str(p))))


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=0, rtol=0, msg=name)


def sft_args(model, data, out):
    return ["sft", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "30",
            "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64", "--save-steps", "5",
            "--logging-steps", "5"]


def gvm_args(model, data, out):
    return ["gvm", "--model", str(model), "--data", str(data), "--out", str(out), "--max-steps", "30",
            "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "96", "--save-steps", "5",
            "--logging-steps", "5", "--stats-rows", "16", "--lora-r", "0"]


def rl_args(model, prompts, gvm, out, *extra):
    return ["rl", "--algo", "dvpo", "--policy", str(model), "--gvm", str(gvm), "--prompts", str(prompts),
            "--out", str(out), "--steps", "16", "--rollout-batch-size", "4", "--mini-batch-size", "2",
            "--ppo-epochs", "1", "--learning-rate", "1e-3", "--max-new-tokens", "8", "--save-every", "4",
            "--rollout-engine", "static", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "gvm", "rl"])
def test_killed_run_resumes_to_the_uninterrupted_result(stage, tiny_model, lab_data, tiny_gvm, tmp_path):
    if stage == "rl":
        make = lambda out: rl_args(tiny_model, lab_data["prompts"], tiny_gvm, out)  # noqa: E731
        first_checkpoint = "checkpoints/step-4/meta.json"
    else:
        build = sft_args if stage == "sft" else gvm_args
        make = lambda out: build(tiny_model, lab_data["sft" if stage == "sft" else "rated"], out)  # noqa: E731
        first_checkpoint = "checkpoints/checkpoint-5/trainer_state.json"
    assert run(make(tmp_path / "whole")).returncode == 0
    killed = interrupt(make(tmp_path / "killed"), tmp_path / "killed" / first_checkpoint, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "dvpo_complete.json").exists()
    resumed = run(make(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stderr.lower()
    assert_identical(tmp_path / "whole", tmp_path / "killed")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_sigterm_saves_a_checkpoint_and_exits_143(stage, tiny_model, lab_data, tiny_gvm, tmp_path):
    if stage == "rl":
        make = lambda out: rl_args(tiny_model, lab_data["prompts"], tiny_gvm, out, "--save-every", "100")  # noqa: E731
        first = "metrics.jsonl"
    else:
        make = lambda out: sft_args(tiny_model, lab_data["sft"], out)[:-4] + ["--save-steps", "1000"]  # noqa: E731
        first = "metrics.jsonl"
    stopped = interrupt(make(tmp_path / "stopped"), tmp_path / "stopped" / first, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM" in stopped.stderr and "run the same command again" in stopped.stderr
    assert not (tmp_path / "stopped" / "dvpo_complete.json").exists()
    assert any((tmp_path / "stopped" / "checkpoints").iterdir())  # saved although no periodic save was due
    assert run(make(tmp_path / "stopped")).returncode == 0
    assert run(make(tmp_path / "whole")).returncode == 0
    assert_identical(tmp_path / "whole", tmp_path / "stopped")


@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_non_finite_loss_stops_with_a_clear_error(stage, tiny_model, lab_data, tiny_gvm, tmp_path):
    out = tmp_path / "nan"
    if stage == "rl":
        args = rl_args(tiny_model, lab_data["prompts"], tiny_gvm, out, "--learning-rate", "1e30", "--steps", "6")
    else:
        args = sft_args(tiny_model, lab_data["sft"], out) + ["--learning-rate", "1e30", "--logging-steps", "1"]
    result = run(args)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "non-finite loss" in result.stderr and "lower the learning rate" in result.stderr
    assert not (out / "dvpo_complete.json").exists()


def test_out_of_memory_names_the_settings_that_reduce_memory(capsys):
    with pytest.raises(SystemExit) as stopped, user_facing_errors():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert stopped.value.code == 3
    message = capsys.readouterr().err
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in message
    for setting in ("--batch-size", "--gradient-checkpointing", "--lora-r", "zero2.yaml"):
        assert setting in message
