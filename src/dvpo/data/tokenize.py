"""Token ids with a response mask, and one stated truncation policy.

`response_mask` is 1 on the tokens the model is trained or scored on (the response, closing
eos included) and 0 on the prompt. With a chat template the prompt is encoded exactly as at
sampling time (generation prompt included), so training and rollouts see the same prefix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from dvpo.errors import ModelError

logger = logging.getLogger(__name__)

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token pad = eos (documented fallback); returns the tokenizer.

    Safe for training because the collators build attention masks and labels from sequence
    lengths, never by comparing ids to the pad id, so real eos tokens stay trained.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            name = getattr(tokenizer, "name_or_path", "") or "tokenizer"
            raise ModelError(f"{name} has neither a pad nor an eos token; set tokenizer.pad_token and save it")
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("tokenizer has no pad token; using eos %r for padding", tokenizer.eos_token)
    return tokenizer


def _messages(value: Any, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _chat(tokenizer, messages: list[dict], **kwargs) -> dict:
    # transformers 5 returns a BatchEncoding for tokenize=True; return_dict makes that explicit.
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)["input_ids"])


def _no_template(what: str, tokenizer) -> ModelError:
    """The one thing the plain-text fallback cannot do: a ModelError (exit code 2) naming the tokenizer."""
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    return ModelError(
        f"{what} needs a tokenizer with a chat template, and {name} has none: give prompts and "
        "responses as plain strings, or set tokenizer.chat_template and save the tokenizer into the model folder"
    )


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Prompt ids as the policy sees them before it answers (a string prompt is one user turn)."""
    if tokenizer.chat_template:
        return _chat_ids(tokenizer, _messages(prompt, "user"), add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise _no_template("a conversational prompt", tokenizer)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_example(
    tokenizer, prompt: str | list[dict], completion: str | list[dict]
) -> tuple[list[int], list[int]]:
    """Prompt ids followed by the completion; the mask marks every token after the prompt.

    With a chat template the whole conversation is rendered once and the prompt ids must be a
    prefix of it (else the mask would be wrong). Without one: prompt + completion + eos.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    if tokenizer.chat_template:
        ids = _chat_ids(tokenizer, _messages(prompt, "user") + _messages(completion, "assistant"))
        if len(ids) <= len(prompt_ids) or ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "chat template: the prompt's ids (with the generation prompt) are not a prefix of the "
                "prompt+completion ids, so response tokens cannot be told apart; fix the template"
            )
        return ids, [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    if not isinstance(completion, str):
        raise _no_template("a conversational completion", tokenizer)
    if tokenizer.eos_token_id is None:
        name = getattr(tokenizer, "name_or_path", "") or "tokenizer"
        raise ModelError(f"{name} has no eos token to close the completion (and no chat template)")
    response = list(tokenizer(completion, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return prompt_ids + response, [0] * len(prompt_ids) + [1] * len(response)


def turn_end_after_eos(tokenizer) -> list[int]:
    """The ids a chat template renders after an assistant turn's eos (SmolLM2's "<|im_end|>" is followed by a
    newline); empty without a template. Rows encoded for training end so; a sampled response stops at eos."""
    if not tokenizer.chat_template or tokenizer.eos_token_id is None:
        return []
    ids, mask = encode_example(tokenizer, "x", "y")
    response = [token for token, in_response in zip(ids, mask) if in_response]
    eos = tokenizer.eos_token_id
    return response[len(response) - response[::-1].index(eos):] if eos in response else []


def as_trained(response_ids: list[int], tokenizer, after_eos: list[int]) -> list[int]:
    """A sampled response as its training rows were encoded: one that stopped at eos gets the rest of the
    template's turn end (`turn_end_after_eos`), so a sequence scorer reads its score at the same token as in
    training (a reward model pools at the last token). A response cut before eos is left as it is."""
    if after_eos and response_ids and response_ids[-1] == tokenizer.eos_token_id:
        return list(response_ids) + after_eos
    return list(response_ids)


def encode_messages(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """A whole conversation; the mask covers the assistant turns (as rendered by the template).

    Uses the template's `{% generation %}` marks when present; otherwise each assistant span is
    found by rendering the conversation up to it (with and without that turn).
    """
    if not tokenizer.chat_template:
        raise _no_template("a conversational (messages) row", tokenizer)
    if _GENERATION_TAG.search(str(tokenizer.chat_template)):
        out = _chat(tokenizer, messages, return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    ids = _chat_ids(tokenizer, messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _chat_ids(tokenizer, messages[:i], add_generation_prompt=True) if i else []
        upto = _chat_ids(tokenizer, messages[: i + 1])
        if upto[: len(before)] != before or ids[: len(upto)] != upto:
            raise ValueError(f"chat template: messages[:{i + 1}] do not render as a prefix of the whole")
        mask[len(before) : len(upto)] = [1] * (len(upto) - len(before))
    return ids, mask


def truncate(
    input_ids: list[int], response_mask: list[int], max_length: int
) -> tuple[list[int], list[int], str]:
    """Fit a sequence into `max_length` tokens; returns (ids, mask, what was cut).

    Policy: the response (from its first masked token on) is what is learnt, and the value
    model reads V(s_1) at the last prompt token, so a cut row always keeps that token. Prompt
    tokens are dropped from the LEFT first, keeping the end of the prompt next to the response
    ("prompt"). Only when the response alone does not fit in `max_length - 1` tokens is it cut
    from the RIGHT: then the sequence is the last prompt token followed by the first
    `max_length - 1` response tokens ("response"). "none" when it already fits. Tokens are
    never reordered: the result is one contiguous slice of the input.

    A row with a response needs `max_length >= 2` (one prompt token and one response token);
    anything less is a ConfigError (a ValueError). A row whose mask starts at its first token
    has no prompt to keep, and is cut to its first `max_length` tokens.
    """
    from dvpo.errors import ConfigError

    if max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if len(input_ids) != len(response_mask):
        raise ValueError(f"input_ids/response_mask lengths differ: {len(input_ids)}, {len(response_mask)}")
    start = next((i for i, m in enumerate(response_mask) if m), len(response_mask))
    if max_length < 2 and start < len(response_mask):
        raise ConfigError(f"max_length (--max-length) must be >= 2 for rows with a response (the last prompt "
                          f"token and at least one response token), got {max_length}")
    if len(input_ids) <= max_length:
        return list(input_ids), list(response_mask), "none"
    keep_prompt = 1 if start > 0 else 0  # the last prompt token: slot of V(s_1) in the value model
    if len(input_ids) - start + keep_prompt <= max_length:
        return list(input_ids[-max_length:]), list(response_mask[-max_length:]), "prompt"
    begin = start - keep_prompt
    end = begin + max_length
    return list(input_ids[begin:end]), list(response_mask[begin:end]), "response"


def truncate_prompts(prompt_id_lists: list[list[int]], max_prompt_length: int,
                     source: str = "") -> list[list[int]]:
    """Fit prompts for sampling into `max_prompt_length` tokens, cut from the LEFT; logs the count.

    The sampling-time side of `truncate`'s policy: the end of a prompt, where the response will
    start, is kept. Callers pass the model's positions minus `max_new_tokens`, so prompt plus
    response never runs past the context (beyond it, a model may fail or silently degrade).
    """
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    cut = sum(len(ids) > max_prompt_length for ids in prompt_id_lists)
    if cut:
        logger.warning("%s%d of %d prompts longer than %d tokens cut on the left", f"{source}: " if source else "",
                       cut, len(prompt_id_lists), max_prompt_length)
    return [list(ids[-max_prompt_length:]) for ids in prompt_id_lists]


@dataclass
class TruncationStats:
    """How many rows were cut, so truncation is never silent."""

    rows: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0

    def add(self, what: str) -> None:
        self.rows += 1
        self.prompt_truncated += what == "prompt"
        self.response_truncated += what == "response"

    def log(self, source: str = "", max_length: int | None = None) -> None:
        """One line; a warning when anything was cut."""
        cut = self.prompt_truncated or self.response_truncated
        logger.log(
            logging.WARNING if cut else logging.INFO,
            "%s%d rows tokenized (max_length %s): %d prompts cut on the left, %d responses cut on the right",
            f"{source}: " if source else "",
            self.rows,
            max_length,
            self.prompt_truncated,
            self.response_truncated,
        )


def tokenize_rows(
    rows: list[dict], tokenizer, max_length: int, source: str = ""
) -> tuple[list[dict], TruncationStats]:
    """Tokenise validated sft / rated / generations rows; keeps `score` and `policy`, drops nothing."""
    stats = TruncationStats()
    out = []
    for row in rows:
        if row.get("messages") is not None:
            ids, mask = encode_messages(tokenizer, row["messages"])
        else:
            ids, mask = encode_example(tokenizer, row["prompt"], row["completion"])
        ids, mask, what = truncate(ids, mask, max_length)
        stats.add(what)
        item = {"input_ids": ids, "response_mask": mask}
        item.update({key: row[key] for key in ("score", "policy") if row.get(key) is not None})
        out.append(item)
    stats.log(source, max_length)
    return out, stats
