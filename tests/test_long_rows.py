"""Rows longer than `--max-length`: every stage keeps the last prompt token, cuts the response on the
right, counts what it cut, and finishes. Real tiny models, no mocks.

The policy (`dvpo.data.tokenize.truncate`): the prompt is cut from the left first; a response that
does not fit beside the last prompt token is cut from the right, so the value model always has
the slot of V(s_1).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from dvpo.cli import main
from dvpo.data.jsonl import write_jsonl
from dvpo.data.tokenize import encode_example, truncate
from dvpo.distributed import BatchStats
from dvpo.models.reward_model import encode_response, load_reward_model
from dvpo.models.value_model import load_value_model, value_positions
from dvpo.rollout.experience import build_sequences
from dvpo.rollout.sampling import SampledBatch
from dvpo.rollout.experience import Rollout
from dvpo.trainers.sources.dvpo import DvpoSource
from dvpo.trainers.sources.scoring import reward_scores
from dvpo.trainers.run_dir import COMPLETE_MARKER

GVM_MAX_LENGTH = 12
LONG = " ".join(str(i % 10) for i in range(40))  # ~40 tokens: longer than every max_length used here
PROMPTS = ["sort 3 1 2", "reverse 7 8 9", "repeat 4 5 6", "sort 9 0 5", "reverse 1 2", "repeat 6 6 1"]


def _rated_rows() -> list[dict]:
    """Per prompt: a long response (high score) and a short one (low score); two policies, so tau exists."""
    rows = []
    for i, prompt in enumerate(PROMPTS):
        policy = "careful" if i % 2 else "chatty"
        rows.append({"prompt": prompt, "completion": LONG, "score": 2.0 + i, "policy": policy})
        rows.append({"prompt": prompt, "completion": "1 2", "score": -1.0 - i, "policy": policy})
    return rows


def _cut_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rows tokenized" in r.getMessage()]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    write_jsonl(folder / "rated.jsonl", _rated_rows())
    return folder / "rated.jsonl"


@pytest.fixture(scope="module")
def short_gvm(tiny_model, long_data, tmp_path_factory):
    """`dvpo gvm` on rows whose responses are longer than --max-length; returns (folder, log messages)."""
    out = tmp_path_factory.mktemp("gvm-long") / "gvm"
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        main(["gvm", "--model", str(tiny_model), "--data", str(long_data), "--out", str(out), "--max-steps", "2",
              "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", str(GVM_MAX_LENGTH)])
    finally:
        root.removeHandler(handler)
    return out, handler.messages


# --- unit: truncate and value_positions -----------------------------------------------------

def test_truncate_keeps_the_last_prompt_token_and_cuts_the_response_on_the_right():
    ids, mask = list(range(10)), [0] * 3 + [1] * 7
    out, out_mask, what = truncate(ids, mask, 5)
    assert (out, out_mask, what) == ([2, 3, 4, 5, 6], [0, 1, 1, 1, 1], "response")
    assert len(out) == len(out_mask) == 5 and sum(out_mask) == 4  # max_length - 1 response tokens
    assert value_positions(out_mask) == (0, 5)
    # The response fits beside the last prompt token: the prompt is cut on the left, the response kept.
    out, out_mask, what = truncate(ids, mask, 8)
    assert (out, out_mask, what) == ([2, 3, 4, 5, 6, 7, 8, 9], [0] + [1] * 7, "prompt")
    # The response exactly fills max_length: one prompt token still has to stay, so one response token goes.
    out, out_mask, what = truncate(ids, mask, 7)
    assert (out, out_mask, what) == ([2, 3, 4, 5, 6, 7, 8], [0] + [1] * 6, "response")
    assert truncate(ids, mask, 2) == ([2, 3], [0, 1], "response")
    assert truncate(ids, mask, 10) == (ids, mask, "none")


def test_truncate_max_length_one_is_a_clear_error():
    with pytest.raises(ValueError, match=r"max_length \(--max-length\) must be >= 2 for rows with a response"):
        truncate([1, 2, 3], [0, 1, 1], 1)
    with pytest.raises(ValueError, match=">= 2"):
        truncate([1], [1], 1)  # even when the row would fit
    assert truncate([1, 2, 3], [0, 0, 0], 1) == ([3], [0], "prompt")  # no response: nothing to keep a slot for
    with pytest.raises(ValueError, match=">= 1"):
        truncate([1, 2, 3], [0, 0, 0], 0)


def test_truncate_row_without_prompt_cuts_on_the_right():
    assert truncate([1, 2, 3, 4], [1, 1, 1, 1], 2) == ([1, 2], [1, 1], "response")


def test_value_positions_and_its_errors():
    assert value_positions([0, 0, 0, 1, 1]) == (2, 3)
    assert value_positions([0, 1]) == (0, 2)
    with pytest.raises(ValueError, match="no prompt token"):
        value_positions([1, 1, 1])
    with pytest.raises(ValueError, match="without any response token"):
        value_positions([0, 0])


def test_real_tokenizer_rows_keep_the_prompt_end(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids, mask = encode_example(tok, "sort 3 1 2", LONG)
    first = mask.index(1)
    out, out_mask, what = truncate(ids, mask, 9)
    assert what == "response" and out == ids[first - 1 : first + 8]
    assert out_mask == [0] + [1] * 8
    rm_ids, rm_what = encode_response(tok, "sort 3 1 2", LONG, 9)
    assert (rm_ids, rm_what) == (out, "response")


# --- stages --------------------------------------------------------------------------------

def test_gvm_trains_on_responses_longer_than_max_length(short_gvm):
    out, messages = short_gvm
    summary = json.loads((out / COMPLETE_MARKER).read_text())
    assert summary["stage"] == "gvm" and summary["steps"] == 2
    lines = [m for m in messages if "rows tokenized" in m]
    assert lines
    # Half the training rows have a long response: each is counted (a held-out split may take a prompt or two).
    line = lines[0]
    rows, cut = map(int, re.search(rf"(\d+) rows tokenized \(max_length {GVM_MAX_LENGTH}\): \d+ prompts cut on "
                                   r"the left, (\d+) responses cut on the right", line).groups())
    assert rows == summary["rows"] and cut >= rows // 2 > 0


def test_eval_gvm_on_responses_longer_than_max_length(short_gvm, long_data, tmp_path, caplog):
    folder, _ = short_gvm
    out = tmp_path / "acc.json"
    main(["eval", "gvm", "--gvm", str(folder), "--data", str(long_data), "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["pairs"] == len(PROMPTS)
    gvm = load_value_model(folder, device="cpu")
    with caplog.at_level(logging.INFO):
        gvm.score(["sort 3 1 2", "sort 3 1 2"], [LONG, "1 2"])
    assert f"GVM scoring: 2 rows tokenized (max_length {GVM_MAX_LENGTH}): 0 prompts cut on the left, 1 responses " \
        "cut on the right" in _cut_lines(caplog)
    [values] = gvm.score(["sort 3 1 2"], [LONG], ["reverse 7 8 9"], ["9 8 7"])
    assert values.shape == (GVM_MAX_LENGTH - 1,)  # values of the kept response tokens only
    assert torch.isfinite(values).all()


def test_gvm_inputs_of_a_long_rollout_keep_the_prompt_end(short_gvm):
    """DvpoSource on a hand-made rollout: lengths = kept response tokens + 1, advantages have the full width."""
    folder, _ = short_gvm
    gvm = load_value_model(folder, device="cpu")
    tok = gvm.tokenizer
    prompts = ["sort 3 1 2", "reverse 7 8 9"]
    long_ids = tok(LONG, add_special_tokens=False)["input_ids"][:20]
    responses = [long_ids, long_ids[:3]]
    width = max(map(len, responses))
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    p_width = max(map(len, prompt_ids))
    batch = SampledBatch(
        prompt_ids=torch.tensor([[tok.pad_token_id] * (p_width - len(p)) + p for p in prompt_ids]),
        prompt_mask=torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p in prompt_ids]),
        response_ids=torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses]),
        response_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses]))
    seq = build_sequences(batch)
    texts = [tok.decode(r) for r in responses]
    rollout = Rollout(seq, prompts, texts, prompts, texts, 0, BatchStats())
    for advantage in ("value", "difference", "gae"):
        source = DvpoSource(gvm, advantage, "batch", gamma=1.0, lam=0.95)
        ids, attention, starts, lengths = source.gvm_inputs(rollout)
        assert attention.sum(1).max() <= GVM_MAX_LENGTH
        assert lengths.tolist() == [GVM_MAX_LENGTH, 4]  # the long response: max_length - 1 tokens + V(s_1)
        for row, response in enumerate(responses):
            kept = lengths[row] - 1
            assert ids[row, starts[row] + 1: starts[row] + 1 + kept].tolist() == response[:kept]
            assert starts[row] >= 0 and attention[row, starts[row]] == 1
        exp = source.advantages(rollout, torch.zeros(2, width), kl_coef=0.0)
        assert exp.advantages.shape == (2, width) and torch.isfinite(exp.advantages).all()
        assert exp.advantages[1, 3:].eq(0).all()  # padding of the short row
        assert exp.advantages[0, GVM_MAX_LENGTH - 1:].eq(0).all()  # cut-off tokens have no value, no advantage


def test_rm_trains_on_responses_longer_than_max_length(tiny_model, long_data, tmp_path, caplog):
    out = tmp_path / "rm"
    with caplog.at_level(logging.INFO):
        main(["rm", "--model", str(tiny_model), "--data", str(long_data), "--out", str(out), "--max-steps", "2",
              "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "10"])
    assert json.loads((out / COMPLETE_MARKER).read_text())["stage"] == "rm"
    [line] = [m for m in _cut_lines(caplog) if "scoring" not in m]  # the training rows
    assert "(max_length 10):" in line and "responses cut on the right" in line
    assert "0 responses cut" not in line
    rm = load_reward_model(out, device="cpu")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert torch.isfinite(rm.score(["sort 3 1 2"], [LONG])).all()
    assert _cut_lines(caplog) == ["reward model scoring: 1 rows tokenized (max_length 10): 0 prompts cut on the "
                                  "left, 1 responses cut on the right"]
    # In RL the rollout's token ids are cut the same way, and the cut is logged.
    prompt_ids = rm.tokenizer("sort 3 1 2", add_special_tokens=False)["input_ids"]
    long_ids = rm.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        scores = reward_scores(rm, [(prompt_ids, long_ids), (prompt_ids, long_ids[:2])], normalize=False)
    [cut] = _cut_lines(caplog)
    assert cut.startswith("reward model inputs: 2 rows tokenized (max_length 10)") and "1 responses cut" in cut
    kept = truncate(prompt_ids + long_ids, [0] * len(prompt_ids) + [1] * len(long_ids), 10)[0]
    assert torch.allclose(scores[0], rm.score_rows([kept])[0].cpu())


def test_dpo_trains_on_responses_longer_than_max_length(tiny_model, long_data, tmp_path):
    out = tmp_path / "dpo"
    main(["dpo", "--model", str(tiny_model), "--data", str(long_data), "--out", str(out), "--max-steps", "2",
          "--batch-size", "2", "--learning-rate", "1e-3", "--max-length", "16", "--logging-steps", "1"])
    summary = json.loads((out / COMPLETE_MARKER).read_text())
    assert summary["stage"] == "dpo" and summary["pairs"] == len(PROMPTS) and summary["steps"] == 2


def test_dpo_says_how_many_pairs_trl_drops_for_a_prompt_that_fills_max_length(tiny_model, tmp_path, caplog):
    data = tmp_path / "rated.jsonl"
    write_jsonl(data, _rated_rows() + [{"prompt": "sort " + LONG, "completion": text, "score": score}
                                       for text, score in (("1 2", 1.0), ("2 1", 0.0))])
    out = tmp_path / "dpo"
    with caplog.at_level(logging.INFO):
        main(["dpo", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "1",
              "--batch-size", "2", "--max-length", "16"])
    summary = json.loads((out / COMPLETE_MARKER).read_text())
    assert summary["pairs"] == len(PROMPTS) and summary["pairs_dropped"] == 1
    assert any(f"1 of {len(PROMPTS) + 1} preference pairs from {data} have a prompt of --max-length 16 tokens or more"
               in r.getMessage() for r in caplog.records)


def test_dpo_with_every_prompt_filling_max_length_is_one_clear_line(tiny_model, long_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["dpo", "--model", str(tiny_model), "--data", str(long_data), "--out", str(tmp_path / "dpo"),
              "--max-steps", "1", "--max-length", "2"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"field 'prompt': {len(PROMPTS)} of {len(PROMPTS)} preference pairs" in err and "raise --max-length" in err


def test_rl_dvpo_with_responses_longer_than_the_gvm_max_length(tiny_model, short_gvm, lab_data, tmp_path, caplog):
    folder, _ = short_gvm
    out = tmp_path / "rl"
    new_tokens = GVM_MAX_LENGTH + 6
    with caplog.at_level(logging.INFO):
        main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(folder),
              "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "2", "--rollout-batch-size", "4",
              "--mini-batch-size", "4", "--ppo-epochs", "1", "--learning-rate", "1e-3",
              "--max-new-tokens", str(new_tokens), "--min-new-tokens", str(new_tokens)])
    assert (out / COMPLETE_MARKER).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["proxy_score"] == r["proxy_score"] for r in records)  # no NaN
    cuts = [r.getMessage() for r in caplog.records if "GVM inputs" in r.getMessage()]
    assert cuts and all(f"4 of 4 responses longer than the GVM's max_length {GVM_MAX_LENGTH}" in m for m in cuts)


@pytest.mark.parametrize("stage", ["gvm", "rm"])
def test_max_length_one_is_one_clear_line(stage, tiny_model, long_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([stage, "--model", str(tiny_model), "--data", str(long_data), "--out", str(tmp_path / "run"),
              "--max-steps", "1", "--max-length", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "dvpo: error: max_length (--max-length) must be >= 2 for rows with a response" in err
    assert not (tmp_path / "run" / COMPLETE_MARKER).exists()


def test_dvpo_whitens_only_the_tokens_its_gvm_values(tiny_model, short_gvm, lab_data):
    """Tokens cut beyond the GVM's max_length have no value: they keep advantage 0 after whitening and take no
    share of its statistics (whitening over every response token gave them -mean/std and a gradient)."""
    from dvpo.algos.masked import masked_mean, masked_var
    from dvpo.distributed import BatchStats
    from dvpo.models.loading import load_causal_lm, load_tokenizer
    from dvpo.models.value_model import load_value_model
    from dvpo.rollout.experience import ExperienceMaker
    from dvpo.trainers.sources.dvpo import DvpoSource
    from test_sources import hand_rollout

    folder, _ = short_gvm
    tokenizer, policy = load_tokenizer(str(tiny_model)), load_causal_lm(str(tiny_model)).eval()
    rollout = hand_rollout(tokenizer, PROMPTS[:4], [LONG, "1 2", LONG, "3"])
    source = DvpoSource(load_value_model(folder, device="cpu"), "gae", "stored", gamma=1.0, lam=0.95)
    maker = ExperienceMaker(policy, policy, source, BatchStats(), temperature=1.0, rows=4, whiten=True,
                            one_update=False)
    experience, _ = maker.make(rollout, kl_coef=0.0)
    valued = source.advantages(rollout, experience.kl, 0.0).mask
    mask = experience.mask
    assert (valued.sum(dim=1) < mask.sum(dim=1)).any()  # the long responses are cut
    assert experience.advantages[(mask - valued).bool()].abs().max() == 0
    assert masked_mean(experience.advantages, valued).abs() < 1e-5
    assert masked_var(experience.advantages, valued, unbiased=True) == pytest.approx(1.0, abs=1e-3)
