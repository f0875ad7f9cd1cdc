"""The reward model: pair building, Bradley-Terry batches, training, saving, loading, scoring."""

from __future__ import annotations

import json

import pytest
import torch

from dvpo.cli import main
from dvpo.data.jsonl import write_jsonl
from dvpo.eval.rm_accuracy import pairwise_pairs
from dvpo.lab.task import reference_answer
from dvpo.models.reward_model import encode_response, load_reward_model
from dvpo.trainers.rm import PairCollator

RATED = [
    {"prompt": "p", "completion": "a", "score": 3.0},
    {"prompt": "p", "completion": "b", "score": 1.0},
    {"prompt": "p", "completion": "c", "score": 1.0},
    {"prompt": "p", "completion": "d", "score": 2.0},
    {"prompt": "q", "completion": "e", "score": 0.0},
    {"prompt": "r", "completion": "f", "score": 5.0},
    {"prompt": "r", "completion": "g", "score": 5.0},
]


def test_rated_all_pairs_skip_equal_scores():
    pairs = pairwise_pairs(RATED, "all")
    assert pairs.triples == [("p", "a", "b"), ("p", "a", "c"), ("p", "a", "d"), ("p", "d", "b"), ("p", "d", "c")]
    assert pairs.tied == 2 and pairs.single == 1  # b=c and f=g; q has one response


def test_rated_best_worst_pairs():
    pairs = pairwise_pairs(RATED, "best-worst")
    assert pairs.triples == [("p", "a", "b")]
    assert pairs.tied == 1 and pairs.single == 1  # r's best and worst tie


def test_preference_rows_pass_through():
    rows = [{"prompt": "p", "chosen": "x", "rejected": "y"}, {"prompt": "q", "chosen": "z", "rejected": "w"}]
    assert pairwise_pairs(rows, "best-worst").triples == [("p", "x", "y"), ("q", "z", "w")]


def test_pair_collator_stacks_chosen_then_rejected():
    features = [{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [4]},
                {"chosen_input_ids": [5], "rejected_input_ids": [6, 7]}]
    batch = PairCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0], [4, 0, 0], [6, 7, 0]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 1, 1, 2]


def _easy_rated(prompt_rows):
    """Each prompt: the right answer (high score) and the right answer plus filler (low score)."""
    rows = []
    for row in prompt_rows:
        answer = " ".join(reference_answer(row["prompt"]))
        rows.append({"prompt": row["prompt"], "completion": answer, "score": 5.0})
        rows.append({"prompt": row["prompt"], "completion": answer + " hope this helps", "score": 0.0})
    return rows


@pytest.fixture(scope="module")
def easy_rm(tiny_model, lab_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rm")
    write_jsonl(folder / "train.jsonl", _easy_rated([json.loads(line) for line in open(lab_data["prompts"])]))
    write_jsonl(folder / "test.jsonl", _easy_rated([json.loads(line) for line in open(lab_data["test_prompts"])]))
    main(["rm", "--model", str(tiny_model), "--data", str(folder / "train.jsonl"), "--out", str(folder / "rm"),
          "--eval-data", str(folder / "test.jsonl"), "--epochs", "3", "--learning-rate", "1e-3",
          "--batch-size", "8", "--max-length", "64", "--warmup-steps", "3", "--logging-steps", "5",
          "--save-steps", "10", "--lora-r", "0"])
    return folder


def test_a_tiny_rm_learns_an_easy_rating(easy_rm):
    summary = json.loads((easy_rm / "rm" / "dvpo_complete.json").read_text())
    # 100 prompts with one pair each: the validation split holds out about a tenth of them
    assert summary["pairs"] + summary["validation_rows"] // 2 == 100 and summary["validation_rows"] > 0
    assert summary["skipped_equal_scores"] == 0 and summary["data_kind"] == "rated"
    assert summary["eval_pairs"] == 40
    assert summary["eval_accuracy"] >= 0.9


def test_rm_keeps_the_checkpoint_best_on_its_validation_split(easy_rm):
    summary = json.loads((easy_rm / "rm" / "dvpo_complete.json").read_text())
    logged = [json.loads(line) for line in (easy_rm / "rm" / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["eval_accuracy"] for r in logged if "eval_accuracy" in r]
    assert len(accuracies) >= 2 and summary["validation_accuracy"] == max(accuracies)


def test_saved_rm_holds_model_tokenizer_and_score_statistics(easy_rm):
    folder = easy_rm / "rm"
    assert (folder / "model" / "model.safetensors").exists() and (folder / "model" / "tokenizer.json").exists()
    meta = json.loads((folder / "dvpo_rm.json").read_text())
    assert meta["lora"] is False and meta["max_length"] == 64
    assert torch.isfinite(torch.tensor([meta["score_mean"], meta["score_std"]])).all() and meta["score_std"] > 0
    rm = load_reward_model(folder)
    scores = rm.score(["sort 3 1 2", "sort 3 1 2"], ["1 2 3", "1 2 3 hope this helps"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert scores[0] > scores[1]


def test_score_rows_on_a_right_padded_batch_equals_score(easy_rm):
    rm = load_reward_model(easy_rm / "rm")
    prompts = ["sort 3 1 2", "repeat 4 5 6 7 8", "sort 9 1"]
    responses = ["1 2 3 hope this helps", "4 5 6 7 8", "1 9"]
    ids = [encode_response(rm.tokenizer, p, r, rm.meta.max_length)[0] for p, r in zip(prompts, responses)]
    assert len({len(i) for i in ids}) == 3  # different lengths, so two rows are padded
    padded = rm.score_rows(ids)
    alone = rm.score(prompts, responses, batch_size=1)  # no padding at all
    torch.testing.assert_close(padded.cpu(), alone, atol=1e-5, rtol=1e-5)


def test_lora_rm_saves_an_adapter_and_loads(tiny_model, easy_rm, tmp_path):
    main(["rm", "--model", str(tiny_model), "--data", str(easy_rm / "test.jsonl"), "--out", str(tmp_path / "r"),
          "--max-steps", "2", "--batch-size", "8", "--lora-r", "4", "--learning-rate", "1e-3"])
    assert (tmp_path / "r" / "model" / "adapter_config.json").exists()
    rm = load_reward_model(tmp_path / "r")
    assert rm.meta.lora
    assert rm.score(["sort 3 1 2"], ["1 2 3"]).shape == (1,)


def test_rm_trains_on_a_preference_file(tiny_model, lab_data, tmp_path):
    main(["rm", "--model", str(tiny_model), "--data", str(lab_data["preference"]), "--out", str(tmp_path / "r"),
          "--max-steps", "2", "--batch-size", "8", "--max-length", "64"])
    summary = json.loads((tmp_path / "r" / "dvpo_complete.json").read_text())
    preference_rows = sum(1 for line in open(lab_data["preference"]) if line.strip())
    assert summary["data_kind"] == "preference"
    assert summary["pairs"] + summary["validation_rows"] == preference_rows  # a tenth of the prompts validate
    assert summary["steps"] == 2


def test_a_sampled_response_is_scored_at_the_token_the_reward_model_was_trained_on(tiny_model):
    """ChatML templates (SmolLM2's) render a newline after a turn's eos, where sampling stops: the reward model
    pools at the last token, so the rollout's rows get the rest of the turn end and score as their text does."""
    import torch
    from transformers import AutoTokenizer

    from dvpo.data.tokenize import encode_prompt, turn_end_after_eos
    from dvpo.models.reward_model import RewardModel, RmMeta, build_reward_model
    from dvpo.models.tokenizer import CHAT_TEMPLATE
    from dvpo.trainers.sources.scoring import reward_scores

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{% endgeneration %}", "{% endgeneration %}{{ '\\n' }}")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert turn_end_after_eos(tokenizer) == newline and newline
    torch.manual_seed(0)
    model = build_reward_model(str(tiny_model))
    torch.nn.init.normal_(model.score.weight)
    rm = RewardModel(model, tokenizer, RmMeta(base_model=str(tiny_model), lora=False, max_length=64))
    prompts, texts = ["sort 3 1 2", "repeat 5 5", "reverse 1 2 3"], ["1 2 3", "5 5 5 5", "3 2"]
    rows = [(encode_prompt(tokenizer, p), tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
            for p, t in zip(prompts, texts)]
    from_text = rm.score(prompts, texts)
    torch.testing.assert_close(reward_scores(rm, rows, normalize=False), from_text)
    at_eos = rm.score_rows([prompt + response for prompt, response in rows])
    assert not torch.allclose(at_eos, from_text)  # what the rollout rows scored before they were completed
