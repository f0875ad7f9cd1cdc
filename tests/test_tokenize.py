"""Tokenisation masks, truncation policy and the SFT collator, on a tiny locally trained tokenizer."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo.data.collate import IGNORE_INDEX, SftCollator, pad_sequences
from dvpo.data.tokenize import (
    TruncationStats,
    encode_example,
    encode_messages,
    encode_prompt,
    ensure_pad_token,
    tokenize_rows,
    truncate,
)
from dvpo.models.tokenizer import CHAT_TEMPLATE, train_tokenizer

TEXTS = [
    "sort 3 1 2",
    "1 2 3",
    "sure , the answer is 4 5",
    "reverse 7 8 9",
    "9 8 7",
    "you sort numbers",
    "add 2 and 3",
]
SYSTEM = {"role": "system", "content": "you sort numbers"}
USER = {"role": "user", "content": "sort 3 1 2"}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def plain_tok(tok):
    """The same vocabulary without a chat template."""
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    return plain


@pytest.fixture(scope="module")
def untagged_tok(tok):
    """A chat template without {% generation %} marks, to exercise the growing-prefix path."""
    untagged = copy.deepcopy(tok)
    untagged.chat_template = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return untagged


def _masked(ids, mask):
    return [t for t, m in zip(ids, mask) if m]


def test_string_prompt_is_one_user_turn(tok):
    expected = tok.apply_chat_template([USER], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert encode_prompt(tok, "sort 3 1 2") == list(expected["input_ids"])
    assert tok.decode(encode_prompt(tok, "sort 3 1 2")) == "<|user|>sort 3 1 2<|assistant|>"


@pytest.mark.parametrize("prompt", ["sort 3 1 2", [SYSTEM, USER]], ids=["string", "conversational"])
@pytest.mark.parametrize(
    "completion", ["1 2 3", [{"role": "assistant", "content": "1 2 3"}]], ids=["string", "messages"]
)
def test_example_mask_separates_prompt_from_response(tok, prompt, completion):
    ids, mask = encode_example(tok, prompt, completion)
    prompt_ids = encode_prompt(tok, prompt)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert mask == [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    assert tok.decode(_masked(ids, mask)) == "1 2 3<|eos|>"
    assert tok.decode(_masked(ids, mask), skip_special_tokens=True) == "1 2 3"


def test_template_that_breaks_the_prefix_is_rejected(tok):
    broken = copy.deepcopy(tok)
    broken.chat_template = CHAT_TEMPLATE.replace(
        "{% if add_generation_prompt %}<|assistant|>", "{% if add_generation_prompt %}<|eos|>"
    )
    with pytest.raises(ValueError, match="not a prefix"):
        encode_example(broken, "sort 3 1 2", "1 2 3")


def test_without_chat_template_eos_is_appended(plain_tok):
    ids, mask = encode_example(plain_tok, "sort 3 1 2", " 1 2 3")
    prompt_ids = plain_tok("sort 3 1 2", add_special_tokens=True)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert ids[-1] == plain_tok.eos_token_id
    assert mask.count(0) == len(prompt_ids)
    assert plain_tok.decode(_masked(ids, mask)) == " 1 2 3<|eos|>"
    with pytest.raises(ValueError, match="chat template"):
        encode_prompt(plain_tok, [USER])
    with pytest.raises(ValueError, match="chat template"):
        encode_messages(plain_tok, [USER, {"role": "assistant", "content": "1 2 3"}])


CONVERSATION = [
    SYSTEM,
    USER,
    {"role": "assistant", "content": "1 2 3"},
    {"role": "user", "content": "reverse 7 8 9"},
    {"role": "assistant", "content": "9 8 7"},
]


@pytest.mark.parametrize("which", ["generation tags", "growing prefixes"])
def test_messages_mask_covers_exactly_assistant_turns(tok, untagged_tok, which):
    t = tok if which == "generation tags" else untagged_tok
    ids, mask = encode_messages(t, CONVERSATION)
    assert ids == list(t.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"])
    # Each maximal run of masked tokens is one assistant turn: its content and the closing eos.
    runs, run = [], []
    for token, m in zip(ids + [None], mask + [0]):
        if m:
            run.append(token)
        elif run:
            runs.append(t.decode(run))
            run = []
    assert runs == ["1 2 3<|eos|>", "9 8 7<|eos|>"]


def test_both_messages_paths_agree(tok, untagged_tok):
    assert encode_messages(tok, CONVERSATION) == encode_messages(untagged_tok, CONVERSATION)


def test_truncate_policy():
    ids, mask = list(range(10)), [0] * 6 + [1] * 4
    assert truncate(ids, mask, 10) == (ids, mask, "none")
    assert truncate(ids, mask, 7) == ([3, 4, 5, 6, 7, 8, 9], [0, 0, 0, 1, 1, 1, 1], "prompt")
    assert truncate(ids, mask, 5) == ([5, 6, 7, 8, 9], [0, 1, 1, 1, 1], "prompt")
    # The response does not fit beside the last prompt token: that token stays, the response is cut on the right.
    assert truncate(ids, mask, 4) == ([5, 6, 7, 8], [0, 1, 1, 1], "response")
    assert truncate(ids, mask, 2) == ([5, 6], [0, 1], "response")
    with pytest.raises(ValueError, match=">= 2"):
        truncate(ids, mask, 1)
    with pytest.raises(ValueError):
        truncate(ids, mask, 0)
    with pytest.raises(ValueError):
        truncate(ids, mask[:-1], 5)


def test_tokenize_rows_counts_and_logs_truncation(tok, caplog):
    rows = [
        {"prompt": "sort 3 1 2", "completion": "1 2 3", "score": 0.5, "policy": "careful"},
        {"prompt": "sure , the answer is 4 5 " * 4, "completion": "1 2 3"},
        {"prompt": "sort 3 1 2", "completion": "sure , the answer is 4 5 " * 4},
        {"messages": CONVERSATION},
    ]
    full = [len(encode_example(tok, r["prompt"], r["completion"])[0]) for r in rows[:3]]
    max_length = full[0]
    assert full[1] > max_length and full[2] > max_length
    with caplog.at_level(logging.INFO, logger="dvpo.data.tokenize"):
        out, stats = tokenize_rows(rows, tok, max_length, source="sft.jsonl")
    assert len(out) == len(rows)
    assert all(len(o["input_ids"]) == len(o["response_mask"]) <= max_length for o in out)
    assert out[0]["score"] == 0.5 and out[0]["policy"] == "careful" and "score" not in out[1]
    assert tok.decode(_masked(out[1]["input_ids"], out[1]["response_mask"])) == "1 2 3<|eos|>"
    assert out[2]["response_mask"][0] == 0 and all(out[2]["response_mask"][1:])  # the last prompt token stays
    assert stats == TruncationStats(rows=4, prompt_truncated=1, response_truncated=2)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "sft.jsonl: 4 rows" in record.message
    assert "1 prompts cut on the left, 2 responses cut on the right" in record.message


def test_tokenize_rows_without_truncation_logs_info(tok, caplog):
    with caplog.at_level(logging.INFO, logger="dvpo.data.tokenize"):
        _, stats = tokenize_rows([{"prompt": "a", "completion": "b"}], tok, 64)
    assert stats == TruncationStats(rows=1)
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_ensure_pad_token(tok, caplog):
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    with caplog.at_level(logging.WARNING, logger="dvpo.data.tokenize"):
        assert ensure_pad_token(no_pad) is no_pad
    assert no_pad.pad_token_id == no_pad.eos_token_id
    assert "no pad token" in caplog.text
    assert ensure_pad_token(tok).pad_token == "<|pad|>"
    no_pad.pad_token = None
    no_pad.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an eos"):
        ensure_pad_token(no_pad)


def test_pad_sequences_sides():
    assert pad_sequences([[1, 2, 3], [4], []], 0).tolist() == [[1, 2, 3], [4, 0, 0], [0, 0, 0]]
    left = pad_sequences([[1, 2, 3], [4]], -1, side="left")
    assert left.dtype == torch.long and left.tolist() == [[1, 2, 3], [-1, -1, 4]]
    with pytest.raises(ValueError):
        pad_sequences([[1]], 0, side="middle")


def test_sft_collator_labels_only_on_response(tok):
    rows = [
        {"prompt": "sort 3 1 2", "completion": "1 2 3"},
        {"prompt": "sort 3 1 2 " * 3, "completion": "9 8 7"},
    ]
    features, _ = tokenize_rows(rows, tok, 64)
    batch = SftCollator(tok.pad_token_id)(features)
    short = len(features[0]["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][0, short:].eq(tok.pad_token_id).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    for row, feature in zip(batch["labels"], features):
        expected = [t if m else IGNORE_INDEX for t, m in zip(feature["input_ids"], feature["response_mask"])]
        assert row.tolist()[: len(expected)] == expected
        assert row[len(expected) :].eq(IGNORE_INDEX).all()
    assert tok.decode([t for t in batch["labels"][1].tolist() if t != IGNORE_INDEX]) == "9 8 7<|eos|>"


# --- property: truncation ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(prompt_len=st.integers(0, 30), response_len=st.integers(1, 30), max_length=st.integers(1, 70))
def test_truncate_properties(prompt_len, response_len, max_length):
    ids = list(range(100, 100 + prompt_len + response_len))
    mask = [0] * prompt_len + [1] * response_len
    response = ids[prompt_len:]
    if max_length < 2:
        with pytest.raises(ValueError, match=">= 2"):
            truncate(ids, mask, max_length)
        return
    out, out_mask, what = truncate(ids, mask, max_length)
    assert len(out) == len(out_mask) <= max_length
    assert out_mask == [1 if t in response else 0 for t in out]
    start = out[0] - 100
    assert out == ids[start : start + len(out)]  # a contiguous slice: nothing reordered or skipped
    keep = 1 if prompt_len else 0  # the last prompt token (V(s_1)) is kept whenever there is one
    if response_len + keep <= max_length:
        assert out[-response_len:] == response and what in ("none", "prompt")
        assert len(out) == min(len(ids), max_length)
    else:
        assert (out, what) == (ids[prompt_len - keep : prompt_len] + response[: max_length - keep], "response")
    if prompt_len:
        assert out_mask[0] == 0


@settings(max_examples=200, deadline=None)
@given(mask=st.lists(st.integers(0, 1), min_size=1, max_size=40), max_length=st.integers(1, 50))
def test_truncate_any_mask_keeps_a_slice(mask, max_length):
    ids = list(range(len(mask)))
    if max_length < 2 and any(mask):
        with pytest.raises(ValueError, match=">= 2"):
            truncate(ids, mask, max_length)
        return
    out, out_mask, _ = truncate(ids, mask, max_length)
    assert 0 < len(out) <= max_length
    assert out == ids[out[0] : out[0] + len(out)]
    assert out_mask == [mask[i] for i in out]
    if any(mask) and mask.index(1) > 0:
        assert out[0] < mask.index(1)  # the token before the first response token (V(s_1)'s slot) is kept
