"""The global value model: tau conditioning, value slots, the TD loss, training, saving, evaluation."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dvpo.cli import main
from dvpo.data.jsonl import write_jsonl
from dvpo.data.tau import conditioned_prompt, sample_tau_indices
from dvpo.eval.gvm_accuracy import AGGREGATIONS, aggregate, pairwise_accuracy
from dvpo.lab.task import reference_answer
from dvpo.models.value_model import gather_values, load_value_model, value_positions
from dvpo.trainers.gvm import td_loss


def test_value_positions_start_at_the_last_prompt_token():
    assert value_positions([0, 0, 0, 1, 1]) == (2, 3)


def test_gather_values_right_pads_each_rows_slots():
    logits = torch.arange(12.0).reshape(2, 6)
    values, mask = gather_values(logits, torch.tensor([1, 3]), torch.tensor([3, 2]))
    assert values.tolist() == [[1.0, 2.0, 3.0], [9.0, 10.0, 0.0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_td0_loss_by_hand():
    logits = torch.tensor([[0.0, 0.5, 0.2, 0.9, 7.0]])  # slots at positions 1..3; position 4 is padding
    batch = {"value_start": torch.tensor([1]), "value_length": torch.tensor([3]), "score": torch.tensor([2.0])}
    loss = td_loss(logits, batch, gamma=0.5, td_lambda=0.0, batch_norm=False)
    expected = ((0.5 - 0.5 * 0.2) ** 2 + (0.2 - 0.5 * 0.9) ** 2 + (0.9 - 2.0) ** 2) / 3
    assert loss.item() == pytest.approx(expected)
    mc = td_loss(logits, batch, gamma=0.5, td_lambda=1.0, batch_norm=False)
    assert mc.item() == pytest.approx(((0.5 - 0.5) ** 2 + (0.2 - 1.0) ** 2 + (0.9 - 2.0) ** 2) / 3)


def test_tau_is_same_policy_other_prompt_and_seeded():
    prompts = ["a", "a", "b", "c", "b", "d"]
    policies = ["x", "y", "x", "x", "y", None]
    taus = sample_tau_indices(prompts, policies, seed=3)
    assert taus == sample_tau_indices(prompts, policies, seed=3)
    for i, j in enumerate(taus[:5]):
        assert policies[j] == policies[i] and prompts[j] != prompts[i]


def test_row_without_another_prompt_gets_no_tau_and_is_counted(caplog):
    with caplog.at_level(logging.WARNING):
        taus = sample_tau_indices(["a", "a", "b"], ["x", "x", "y"], seed=0)
    assert taus == [None, None, None]
    assert "3 of 3 rows" in caplog.text


def test_conditioned_prompt_is_a_preceding_exchange():
    assert conditioned_prompt("p") == "p"
    assert conditioned_prompt("p", "tp", "tr") == [
        {"role": "user", "content": "tp"}, {"role": "assistant", "content": "tr"}, {"role": "user", "content": "p"}]


def test_aggregations_and_pairwise_accuracy_by_hand():
    agg = aggregate(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert agg["mean"] == 1.5 and agg["last"] == 3.0 and agg["p1"] == pytest.approx(0.03)
    aggs = [{name: v for name in AGGREGATIONS} for v in (3.0, 1.0, 2.0, 2.0)]
    result = pairwise_accuracy(["p", "p", "q", "q"], [1.0, 0.0, 1.0, 0.5], aggs)
    assert result["pairs"] == 2 and result["accuracy"]["mean"] == 0.75  # one right, one tie


def _easy_rated(prompt_rows, good_score=5.0):
    """Each prompt: the right answer (high score) and the right answer plus filler (low score)."""
    rows = []
    for i, row in enumerate(prompt_rows):
        answer = " ".join(reference_answer(row["prompt"]))
        rows.append({"prompt": row["prompt"], "completion": answer, "score": good_score, "policy": "good"})
        rows.append({"prompt": row["prompt"], "completion": answer + " hope this helps", "score": 0.0,
                     "policy": "chatty"})
    return rows


@pytest.fixture(scope="module")
def easy_gvm(tiny_model, lab_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gvm")
    prompts = [json.loads(line) for line in open(lab_data["prompts"])]
    write_jsonl(folder / "train.jsonl", _easy_rated(prompts))
    tests = [json.loads(line) for line in open(lab_data["test_prompts"])]
    write_jsonl(folder / "test.jsonl", _easy_rated(tests))
    main(["gvm", "--model", str(tiny_model), "--data", str(folder / "train.jsonl"), "--out", str(folder / "gvm"),
          "--epochs", "4", "--learning-rate", "2e-3", "--batch-size", "16", "--max-length", "64",
          "--warmup-steps", "5", "--logging-steps", "5", "--save-steps", "1000"])
    return folder


def test_a_tiny_gvm_learns_an_easy_rating(easy_gvm):
    out = easy_gvm / "acc.json"
    main(["eval", "gvm", "--gvm", str(easy_gvm / "gvm"), "--data", str(easy_gvm / "test.jsonl"),
          "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["pairs"] == 40 and set(result["accuracy"]) == set(AGGREGATIONS)
    assert result["accuracy"]["mean"] >= 0.9
    assert result["accuracy"]["last"] >= 0.9


def test_saved_gvm_holds_model_head_statistics_and_config(easy_gvm):
    folder = easy_gvm / "gvm"
    meta = json.loads((folder / "dvpo_gvm.json").read_text())
    assert meta["tau"] is True and meta["td_lambda"] == 0.0 and meta["value_normalization"] == "batch"
    assert meta["value_std"] > 0 and meta["score_mean"] == pytest.approx(2.5)
    assert (folder / "model" / "model.safetensors").exists() and (folder / "model" / "tokenizer.json").exists()
    gvm = load_value_model(folder)
    values = gvm.score(["sort 3 1 2"], ["1 2 3"], ["repeat 4 5 6"], ["4 5 6"])
    assert values[0].shape == (4,)  # three digits and the eos
    assert torch.isfinite(values[0]).all()


def test_gvm_tokens_renders_html_and_png(easy_gvm):
    main(["eval", "gvm-tokens", "--gvm", str(easy_gvm / "gvm"), "--data", str(easy_gvm / "test.jsonl"),
          "--out", str(easy_gvm / "tokens"), "--rows", "4"])
    page = (easy_gvm / "tokens.html").read_text()
    assert page.count("class='row'") == 4 and "hope" in page
    assert (easy_gvm / "tokens.png").stat().st_size > 1000


def test_lora_gvm_saves_an_adapter_and_loads(tiny_model, easy_gvm, tmp_path):
    main(["gvm", "--model", str(tiny_model), "--data", str(easy_gvm / "test.jsonl"), "--out", str(tmp_path / "g"),
          "--max-steps", "2", "--batch-size", "8", "--lora-r", "4", "--tau", "none", "--learning-rate", "1e-3"])
    assert (tmp_path / "g" / "model" / "adapter_config.json").exists()
    gvm = load_value_model(tmp_path / "g")
    assert gvm.meta.lora and not gvm.meta.tau
    assert gvm.score(["sort 3 1 2"], ["1 2 3"])[0].shape == (4,)
