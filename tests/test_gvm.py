"""The global value model: tau conditioning, value slots, the TD loss, training, saving, evaluation."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dvpo.cli import main
from dvpo.data.jsonl import write_jsonl
from dvpo.algos.td import gvm_td_loss
from dvpo.data.splits import split_by_prompt
from dvpo.data.tau import conditioned_on, conditioned_prompt, sample_tau_indices, sample_tau_sets
from dvpo.eval.gvm_accuracy import AGGREGATIONS, aggregate, pairwise_accuracy
from dvpo.lab.task import reference_answer
from dvpo.models.value_model import build_value_model, gather_values, load_value_model, value_positions
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
    loss = td_loss(logits, batch, gamma=0.5, td_lambda=0.0, normalization="none")
    expected = ((0.5 - 0.5 * 0.2) ** 2 + (0.2 - 0.5 * 0.9) ** 2 + (0.9 - 2.0) ** 2) / 3
    assert loss.item() == pytest.approx(expected)
    mc = td_loss(logits, batch, gamma=0.5, td_lambda=1.0, normalization="none")
    assert mc.item() == pytest.approx(((0.5 - 0.5) ** 2 + (0.2 - 1.0) ** 2 + (0.9 - 2.0) ** 2) / 3)


def test_batch_normalised_td_loss_scales_the_error_by_the_targets_spread_in_float64():
    values = torch.tensor([[0.5, 0.2, 0.9], [0.1, -0.3, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    # TD(0), gamma 1, targets by hand: row 1 [0.2, 0.9, 2.0]; row 2 [-0.3, -1.0]
    targets = [0.2, 0.9, 2.0, -0.3, -1.0]
    errors = [0.5 - 0.2, 0.2 - 0.9, 0.9 - 2.0, 0.1 + 0.3, -0.3 + 1.0]
    mean = sum(targets) / 5
    std = (sum((t - mean) ** 2 for t in targets) / 5) ** 0.5
    plain = gvm_td_loss(values, rewards, mask, 1.0, 0.0, "none")
    batch = gvm_td_loss(values, rewards, mask, 1.0, 0.0, "batch")
    assert plain.item() == pytest.approx(sum(e * e for e in errors) / 5, rel=1e-12)
    assert batch.item() == pytest.approx(sum((e / (std + 1e-6)) ** 2 for e in errors) / 5, rel=1e-9)


def test_literal_batch_norm_builds_targets_from_normalised_predictions():
    values = torch.tensor([[0.5, 0.2, 0.9]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    mean = values.mean()
    normed = (values - mean) / (values.std(correction=0) + 1e-6)
    targets = torch.tensor([normed[0, 1], normed[0, 2], 2.0], dtype=torch.float64)
    expected = ((normed[0] - targets) ** 2).mean()
    assert gvm_td_loss(values, rewards, mask, 1.0, 0.0, "batch-predictions").item() == pytest.approx(expected.item())


def test_a_fresh_value_head_starts_at_zero(tiny_model):
    model = build_value_model(str(tiny_model))
    assert all(float(p.abs().sum()) == 0.0 for p in model.score.parameters())
    assert float(model(input_ids=torch.tensor([[1, 2, 3]])).logits.abs().sum()) == 0.0


def test_several_tau_pairs_are_distinct_rows_of_the_same_policy():
    prompts = ["a", "b", "c", "d", "e", "f"]
    policies = ["x", "x", "x", "x", "y", "y"]
    sets = sample_tau_sets(prompts, policies, seed=1, pairs=2)
    for i, picks in enumerate(sets[:4]):
        assert len(picks) == 2 and len(set(picks)) == 2
        assert all(policies[j] == "x" and j != i for j in picks)
    assert [len(p) for p in sets[4:]] == [1, 1]  # only one other row of policy y
    assert [p[0] for p in sample_tau_sets(prompts, policies, 1, 1)] == sample_tau_indices(prompts, policies, 1)
    assert conditioned_on("p", [("a", "1"), ("b", "2")]) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "1"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "p"}]


def test_validation_split_is_by_prompt_and_seeded():
    rows = [{"prompt": f"p{i // 4}", "completion": str(i)} for i in range(400)]
    train, validation = split_by_prompt(rows, 0.2, seed=0)
    assert len(train) + len(validation) == 400
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in validation}
    assert 0.1 < len(validation) / 400 < 0.3
    assert split_by_prompt(list(reversed(rows)), 0.2, 0)[1] == list(reversed(validation))
    assert split_by_prompt(rows, 0.0, 0) == (rows, [])
    with pytest.raises(ValueError, match="validation"):
        split_by_prompt(rows[:4], 0.5, 0)


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
          "--warmup-steps", "5", "--logging-steps", "5", "--save-steps", "20", "--lora-r", "0"])
    return folder


def test_gvm_keeps_the_checkpoint_best_on_its_validation_split(easy_gvm):
    done = json.loads((easy_gvm / "gvm" / "dvpo_complete.json").read_text())
    logged = [json.loads(line) for line in (easy_gvm / "gvm" / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["eval_accuracy"] for r in logged if "eval_accuracy" in r]
    assert done["validation_rows"] > 0 and len(accuracies) >= 2
    assert done["validation_accuracy"] == max(accuracies)


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


def test_a_lora_gvm_moved_with_its_base_still_loads(tiny_model, easy_gvm, tmp_path):
    """A LoRA GVM records its base by absolute path and relative to itself: a run tree copied whole loads."""
    import shutil

    tree = tmp_path / "runs"
    shutil.copytree(tiny_model, tree / "sft")
    main(["gvm", "--model", str(tree / "sft"), "--data", str(easy_gvm / "test.jsonl"), "--out", str(tree / "gvm"),
          "--max-steps", "1", "--batch-size", "8", "--lora-r", "4", "--tau", "none"])
    before = load_value_model(tree / "gvm").score(["sort 3 1 2"], ["1 2 3"])[0]
    moved = tmp_path / "elsewhere"
    shutil.move(str(tree), str(moved))
    gvm = load_value_model(moved / "gvm")
    assert gvm.meta.base_model == str((moved / "sft").resolve())
    torch.testing.assert_close(gvm.score(["sort 3 1 2"], ["1 2 3"])[0], before)


def test_a_catalog_model_is_recorded_by_its_name(tmp_path, monkeypatch):
    from dvpo.models.catalog import cached_folder
    from dvpo.models.loading import model_reference

    monkeypatch.setenv("DVPO_CACHE", str(tmp_path))
    folder = cached_folder("smollm2-135m-instruct")
    folder.mkdir(parents=True)
    assert model_reference(str(folder)) == "smollm2-135m-instruct"
    assert model_reference(str(tmp_path)) == str(tmp_path.resolve())
