"""init, sft, generate and judge end to end at the tiny size, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from dvpo.cli import main
from dvpo.lab.task import parse_prompt


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_init_writes_a_loadable_tiny_llama(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.config.model_type == "llama"
    assert 0.5e6 < n_params < 2e6  # "tiny" is about 1M parameters
    assert tokenizer.pad_token and tokenizer.eos_token and tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)
    # every lab word is a single token: the tokenizer was trained on the lab's text
    assert len(tokenizer("sort 3 1 2", add_special_tokens=False)["input_ids"]) == 4


def test_init_accepts_conversational_and_preference_files(tmp_path, lab_data):
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    assert main(["init", "--data", str(conv), str(lab_data["preference"]), "--size", "tiny",
                 "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def sft_model(tiny_model, lab_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "sft"
    main(["sft", "--model", str(tiny_model), "--data", str(lab_data["sft"]), "--out", str(out),
          "--epochs", "3", "--learning-rate", "3e-3", "--batch-size", "16", "--max-length", "48",
          "--warmup-steps", "5", "--logging-steps", "5", "--save-steps", "30"])
    return out


def test_sft_trains_and_saves_a_complete_run(sft_model):
    summary = json.loads((sft_model / "dvpo_complete.json").read_text())
    assert summary["stage"] == "sft" and summary["rows"] == 300 and summary["steps"] == 57
    metrics = read_jsonl(sft_model / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0] - 1.0  # it learned
    assert (sft_model / "metrics.png").exists() and (sft_model / "model.safetensors").exists()
    assert list((sft_model / "checkpoints").glob("checkpoint-*"))


def test_sft_rerun_on_a_finished_folder_does_not_train_again(sft_model, lab_data, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sft", "--model", str(sft_model), "--data", str(lab_data["sft"]), "--out", str(sft_model)])
    assert stop.value.code == 0
    assert "--overwrite" in capsys.readouterr().err


def test_generate_and_judge(sft_model, tiny_model, lab_data, tmp_path):
    out = tmp_path / "gen.jsonl"
    main(["generate", "--model", str(sft_model), "--prompts", str(lab_data["test_prompts"]), "--out", str(out),
          "--max-new-tokens", "16", "--num-samples", "2", "--batch-size", "16"])
    rows = read_jsonl(out)
    prompts = [r["prompt"] for r in read_jsonl(lab_data["test_prompts"])]
    assert len(rows) == 2 * len(prompts)
    assert [r["prompt"] for r in rows[::2]] == prompts and [r["sample"] for r in rows[:2]] == [0, 1]
    assert all(isinstance(r["completion"], str) for r in rows)
    assert not any("<|" in r["completion"] for r in rows)  # special tokens are not decoded

    untrained = tmp_path / "untrained.jsonl"
    main(["generate", "--model", str(tiny_model), "--prompts", str(lab_data["test_prompts"]), "--out",
          str(untrained), "--max-new-tokens", "16"])
    result_file = tmp_path / "judge.json"
    main(["lab", "judge", "--generations", str(out), "--baseline", str(untrained), "--output", str(result_file)])
    result = json.loads(result_file.read_text())
    assert result["n"] == len(rows) and result["compared_prompts"] == len(prompts)
    assert result["win_rate"] > 0.6  # three epochs of SFT already beat random weights


def test_greedy_generation_is_deterministic(sft_model, lab_data, tmp_path):
    outs = []
    for seed in (1, 2):
        out = tmp_path / f"greedy{seed}.jsonl"
        main(["generate", "--model", str(sft_model), "--prompts", str(lab_data["test_prompts"]), "--out", str(out),
              "--temperature", "0", "--max-new-tokens", "12", "--seed", str(seed)])
        outs.append(read_jsonl(out))
    assert outs[0] == outs[1]
    parse_prompt(outs[0][0]["prompt"])  # prompts are carried through unchanged


def test_console_script_and_module_entry(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "dvpo", "sft", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--learning-rate" in help_text and "paper: 2e-5" in help_text
    result = subprocess.run([sys.executable, "-m", "dvpo", "lab", "make-data", "--out", str(tmp_path / "d"),
                             "--n-sft", "10", "--n-rated", "10", "--n-rl", "5", "--n-test", "5",
                             "--n-rated-test", "5"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "d" / "rated.jsonl")) == 40  # one response per policy


def test_bad_data_is_a_one_line_error_with_exit_code_2(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "sort 1 2", "completion": "1 2"}\n{"prompt": "x", "completion": 3}\n')
    result = subprocess.run([sys.executable, "-m", "dvpo", "sft", "--model", str(tiny_model), "--data", str(bad),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad.jsonl:2" in result.stderr and "completion" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_folder_is_named(tmp_path, lab_data):
    result = subprocess.run([sys.executable, "-m", "dvpo", "generate", "--model", str(tmp_path / "nope"),
                             "--prompts", str(lab_data["test_prompts"]), "--out", str(tmp_path / "g.jsonl")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "nope does not exist" in result.stderr
