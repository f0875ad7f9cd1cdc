"""Real multi-process runs: `accelerate launch` with 2 CPU processes over gloo, against 1 process.

Each test checks what the silently-wrong launch modes would get wrong (docs/rl.md, "Several processes
on a CPU-only machine"): the world size and ranks the processes saw, that they
trained on disjoint shares of the data, and that the result matches a single process with the
same global batch. Runs go one after another (two processes fill both cores).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # The venv's bin first: DeepSpeed builds a small op on first use with the `ninja` that pip installed there.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def launch(config: str, args: list[str], processes: int = 2) -> None:
    """`accelerate launch --config_file configs/accelerate/<config> -m dvpo ...`, as the README says."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
               "--num_processes", str(processes), "--main_process_port", str(_free_port()), "-m", "dvpo", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def single(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "dvpo", *args], capture_output=True, text=True, env=_env(),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.rglob("model.safetensors"))))


def assert_same_training(one: Path, two: Path, start: Path, tolerance: float = 0.02) -> None:
    """The 2-process weights sit much closer to the 1-process weights than either to the start
    (the update is measured on the weights the start has: a value head starts fresh)."""
    w1, w2, w0 = weights(one), weights(two), weights(start)
    moved = sum(((w1[k] - w0[k]) ** 2).sum() for k in w0 if k in w1) ** 0.5
    apart = sum(((w1[k] - w2[k]) ** 2).sum() for k in w1) ** 0.5
    assert moved > 0, "training did not change the weights"
    assert apart <= tolerance * moved, f"2-process result differs: {apart:.3g} vs update {moved:.3g}"


def processes(folder: Path) -> list[dict]:
    return json.loads((folder / "processes.json").read_text())


def assert_disjoint_shards(record: list[dict], world: int) -> set:
    assert [p["rank"] for p in record] == list(range(world))
    assert all(p["world_size"] == world for p in record)
    shards = [set(p["rows"]) for p in record]
    assert all(shards), "a process trained on nothing"
    for i in range(world):
        for j in range(i + 1, world):
            assert not shards[i] & shards[j], f"ranks {i} and {j} shared rows"
    return set().union(*shards)


@pytest.mark.slow
def test_sft_two_processes_shard_the_data_and_match_one(tiny_model, lab_data, tmp_path):
    common = ["sft", "--model", str(tiny_model), "--data", str(lab_data["sft"]), "--max-steps", "3",
              "--learning-rate", "1e-3", "--max-length", "64", "--save-steps", "100", "--seed", "3"]
    single([*common, "--batch-size", "8", "--out", str(tmp_path / "one")])
    launch("ddp.yaml", [*common, "--batch-size", "4", "--out", str(tmp_path / "two")])
    seen = assert_disjoint_shards(processes(tmp_path / "two"), 2)
    assert seen == set(processes(tmp_path / "one")[0]["rows"])  # the same global batches, split in two
    assert_same_training(tmp_path / "one", tmp_path / "two", tiny_model)


@pytest.mark.slow
def test_gvm_two_processes_shard_the_data_and_match_one(tiny_model, lab_data, tmp_path):
    common = ["gvm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--max-steps", "3",
              "--learning-rate", "1e-3", "--max-length", "96", "--td-lambda", "1", "--value-normalization", "none",
              "--save-steps", "100", "--stats-rows", "16", "--lora-r", "0"]
    single([*common, "--batch-size", "8", "--out", str(tmp_path / "one")])
    launch("ddp.yaml", [*common, "--batch-size", "4", "--out", str(tmp_path / "two")])
    seen = assert_disjoint_shards(processes(tmp_path / "two"), 2)
    assert seen == set(processes(tmp_path / "one")[0]["rows"])
    # The value head starts at zero, so the body only moves from the second step on and its update is small:
    # the token means of two shards (averaged by DDP) and of the whole batch differ relatively more.
    assert_same_training(tmp_path / "one", tmp_path / "two", tiny_model, tolerance=0.1)


def _rl_args(tiny_model, gvm, lab_data, out, *extra):
    return ["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(gvm), "--prompts",
            str(lab_data["prompts"]), "--out", str(out), "--steps", "3", "--rollout-batch-size", "8",
            "--mini-batch-size", "8", "--ppo-epochs", "2", "--learning-rate", "1e-3", "--max-new-tokens", "8",
            "--save-every", "100", "--eval-prompts", str(lab_data["test_prompts"]), "--eval-every", "3",
            "--score-fn", "dvpo.lab.tasks:judge_completions", *extra]


@pytest.mark.slow
def test_rl_dvpo_two_processes_match_one(tiny_model, tiny_gvm, lab_data, tmp_path):
    watched = ["--eval-scorer", str(tiny_gvm)]  # a second scorer: its numbers must span both processes too
    single(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "one", *watched))
    launch("ddp.yaml", _rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "two", *watched))
    record = processes(tmp_path / "two")
    seen = assert_disjoint_shards(record, 2)
    assert seen == set(processes(tmp_path / "one")[0]["rows"])
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert "second_score" in one[0] and "eval_second_score" in one[-1]
    for a, b in zip(one, two):  # the same samples, so the same batch metrics
        # (not eval_proxy_score nor eval_second_score: a GVM with tau draws it among each process's own share of
        # the held-out samples)
        for key in ("score", "kl", "response_length", "proxy_score", "gvm_value_mean", "eval_score", "second_score"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-3), (a["step"], key)
    assert_same_training(tmp_path / "one", tmp_path / "two", tiny_model)


@pytest.mark.slow
def test_sft_under_deepspeed_zero2_matches_one_process(tiny_model, lab_data, tmp_path):
    pytest.importorskip("deepspeed")
    common = ["sft", "--model", str(tiny_model), "--data", str(lab_data["sft"]), "--max-steps", "3",
              "--learning-rate", "1e-3", "--max-length", "64", "--save-steps", "100", "--seed", "3"]
    single([*common, "--batch-size", "8", "--out", str(tmp_path / "one")])
    launch("zero2.yaml", [*common, "--batch-size", "4", "--out", str(tmp_path / "two")])
    record = processes(tmp_path / "two")
    assert all(p["distributed_type"] == "DEEPSPEED" for p in record)
    assert_disjoint_shards(record, 2)
    assert_same_training(tmp_path / "one", tmp_path / "two", tiny_model)


@pytest.mark.slow
@pytest.mark.parametrize("config, extra", [("zero2.yaml", []), ("ddp.yaml", ["--fsdp"])], ids=["zero2", "fsdp"])
def test_rl_dvpo_with_sharded_weights_matches_one_process(config, extra, tiny_model, tiny_gvm, lab_data, tmp_path):
    """DeepSpeed ZeRO-2 shards optimizer state and gradients; --fsdp (FSDP2) shards the weights too."""
    if config.startswith("zero"):
        pytest.importorskip("deepspeed")
    single(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "one"))
    launch(config, _rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "two", *extra))
    record = processes(tmp_path / "two")
    assert_disjoint_shards(record, 2)
    if config.startswith("zero"):
        assert all(p["distributed_type"] == "DEEPSPEED" for p in record)
    else:
        whole = processes(tmp_path / "one")[0]["parameters_held"]
        assert all(p["fsdp"] and p["parameters_held"] < 0.6 * whole for p in record)  # about half each
    assert_same_training(tmp_path / "one", tmp_path / "two", tiny_model)


def zero3_config(folder: Path) -> Path:
    """configs/accelerate/zero3.yaml with every parameter partitioned: DeepSpeed keeps parameters under its
    persistence threshold (100k elements by default, so all of a tiny model's) whole on every process, which
    would hide what partitioning breaks."""
    ds = folder / "ds_zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                                    "stage3_gather_16bit_weights_on_model_save": True},
                              "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                              "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}))
    config = folder / "zero3.yaml"
    config.write_text("\n".join([
        "compute_environment: LOCAL_MACHINE", "distributed_type: DEEPSPEED", "deepspeed_config:",
        f"  deepspeed_config_file: {ds}", "  zero3_init_flag: false", "num_machines: 1", "num_processes: 2",
        "machine_rank: 0", "rdzv_backend: static", "same_network: true", "use_cpu: false"]) + "\n")
    return config


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.rglob("adapter_model.safetensors"))))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft-lora", "gvm-lora", "rm", "dpo-lora"])
def test_offline_stages_under_zero3_save_whole_weights_as_ddp_does(stage, tiny_model, lab_data, tmp_path):
    """ZeRO-3 partitions every weight over the processes: the final statistics run on every process and the
    saves (and LoRA merges) read gathered weights, so the result is DDP's on the same 2 processes (which the
    tests above tie to one process), not empty shards."""
    pytest.importorskip("deepspeed")
    name, lora = stage.split("-")[0], "4" if stage.endswith("lora") else "0"
    data = lab_data["sft"] if name == "sft" else lab_data["rated"]
    common = [name, "--model", str(tiny_model), "--data", str(data), "--max-steps", "3", "--learning-rate", "1e-3",
              "--max-length", "96", "--save-steps", "100", "--seed", "3", "--lora-r", lora, "--lora-dropout", "0",
              "--batch-size", "4",
              *(["--stats-rows", "16", "--td-lambda", "1", "--value-normalization", "none"] if name == "gvm" else [])]
    launch("ddp.yaml", [*common, "--out", str(tmp_path / "ddp")])
    launch(str(zero3_config(tmp_path)), [*common, "--out", str(tmp_path / "zero3")])
    if name != "dpo":  # TRL's DPOTrainer writes no record of its processes
        assert all(p["distributed_type"] == "DEEPSPEED" for p in processes(tmp_path / "zero3"))
    read = adapter_weights if name == "gvm" else weights  # a LoRA GVM is saved as its adapter
    ddp, zero3 = read(tmp_path / "ddp"), read(tmp_path / "zero3")
    assert {k: v.shape for k, v in ddp.items()} == {k: v.shape for k, v in zero3.items()}
    assert all(v.numel() > 0 for v in zero3.values())
    if name == "gvm":  # its trained parts start at zero (LoRA's B, the value head)
        trained = [k for k in ddp if "lora_B" in k or "score" in k]
        moved = sum((ddp[k] ** 2).sum() for k in trained) ** 0.5
        apart = sum(((ddp[k] - zero3[k]) ** 2).sum() for k in trained) ** 0.5
        assert moved > 0 and apart <= 0.02 * moved, (float(apart), float(moved))
    else:  # Adam's sign-like steps amplify the order of DeepSpeed's gradient sums on near-zero gradients
        assert_same_training(tmp_path / "ddp", tmp_path / "zero3", tiny_model)
    if name in ("gvm", "rm"):
        meta = "dvpo_gvm.json" if name == "gvm" else "dvpo_rm.json"
        stats = [json.loads((tmp_path / run / meta).read_text()) for run in ("ddp", "zero3")]
        std = "value_std" if name == "gvm" else "score_std"
        assert stats[1][std] == pytest.approx(stats[0][std], rel=1e-3)
