"""The "arith" lab task: labelled single-digit sums, differences and products, answered clause by clause.

It is built unlike the digit lab, to check that settings found there transfer:

- prompts are 3-6 labelled operations, e.g. "a 3 plus 4 ; b 2 times 5 ; c 9 minus 1", and the
  answer completes each one in a fixed template, "a 3 plus 4 is 7 . b 2 times 5 is 10 . c 9 minus 1
  is 8 ." (7 words a clause, so 21-42 words; one token a word with the lab's tokenizer). Restating
  an operation is a copy of its prompt group, found by its label: a ~2M-parameter model trained for
  minutes learns that and the arithmetic (with unlabelled prompts, or prompts worded unlike the
  answer, it got the arithmetic right but restated the wrong digits);
- the behaviour policies write in one and the same template and differ only in how often a result
  is wrong, so a response's style does not tell its policy, while another response of the same
  policy (the GVM's tau) does; one extra policy pads its answers with filler sentences;
- the judge credits each clause at its position (one wrong result token loses that clause) and
  charges every word outside a well-formed clause, so lengthening an answer never pays.

Subtractions are drawn with the larger digit first, so every result is a whole number 0-81.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Collection
from dataclasses import dataclass

OPS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}
DIGITS = tuple("0123456789")
LABELS = tuple("abcdefghij")
"""Labels of the operations, in order: a prompt has at most len(LABELS) operations."""
SEPARATOR = ";"
MIN_OPS = 3
MAX_OPS = 6

ACCURACY_WEIGHT = 10.0
"""Score of a perfect answer: every clause right, at its position, and nothing else."""

FILLER_PENALTY = 0.25
"""Cost of each word outside a well-formed clause (a filler sentence of 4 words with its full stop
costs 1.25, more than half a wrong clause of a long answer), and of a last clause missing its "."."""

_NUMBER = re.compile(r"-?\d+")

# Filler sentences of the padding policy, wrapped around the answer like a chatty assistant's.
OPENERS = ("let me work it out .", "ok here we go .", "sure , step by step .", "right , let us see .")
CLOSERS = ("all done .", "hope that helps .", "that is all .", "easy enough .")


def make_prompt(ops: list[tuple[str, str, str]]) -> str:
    """The prompt text for (digit, operation, digit) triples, e.g. "a 3 plus 4 ; b 2 times 5"."""
    if len(ops) > len(LABELS):
        raise ValueError(f"at most {len(LABELS)} operations, got {len(ops)}")
    return f" {SEPARATOR} ".join(f"{label} {a} {op} {b}" for label, (a, op, b) in zip(LABELS, ops))


def parse_prompt(prompt: str) -> list[tuple[str, str, str]]:
    """The (digit, operation, digit) triples of an arith prompt; ValueError for anything else."""
    groups = [group.split(" ") for group in prompt.split(f" {SEPARATOR} ")]
    if len(groups) > len(LABELS) or not all(
            len(g) == 4 and g[0] == label and g[1] in DIGITS and g[2] in OPS and g[3] in DIGITS
            for label, g in zip(LABELS, groups)):
        raise ValueError(f"not an arith prompt: {prompt!r} (expected up to {len(LABELS)} groups "
                         f"'<label> <digit> <plus|minus|times> <digit>' labelled a, b, c, ... "
                         f"separated by ' {SEPARATOR} ')")
    return [(g[1], g[2], g[3]) for g in groups]


def reference_clauses(prompt: str) -> list[tuple[str, ...]]:
    """The correct clauses of the answer, without their full stops, e.g. ("a", "3", "plus", "4", "is", "7")."""
    return [(label, a, op, b, "is", str(OPS[op](int(a), int(b))))
            for label, (a, op, b) in zip(LABELS, parse_prompt(prompt))]


def reference_answer(prompt: str) -> str:
    """The correct, concise answer text."""
    return " ".join(" ".join(clause) + " ." for clause in reference_clauses(prompt))


def sample_prompts(
    n: int,
    rng: random.Random,
    exclude: Collection[str] = frozenset(),
    min_len: int = MIN_OPS,
    max_len: int = MAX_OPS,
) -> list[str]:
    """`n` distinct prompts of `min_len`..`max_len` operations not in `exclude`, in draw order
    (uniform length, operation and digits; a subtraction puts the larger digit first)."""
    if not 1 <= min_len <= max_len <= len(LABELS):
        raise ValueError(f"need 1 <= min_len <= max_len <= {len(LABELS)}, got {min_len}..{max_len}")
    per_op = 100 + 100 + 55  # distinct plus, times and (larger-first) minus groups
    in_space = sum(1 for p in exclude if _in_space(p, min_len, max_len))
    available = sum(per_op**k for k in range(min_len, max_len + 1)) - in_space
    if n > available:
        raise ValueError(f"asked for {n} prompts but only {available} distinct ones of {min_len}..{max_len} "
                         "operations remain")
    seen = set(exclude)
    prompts: list[str] = []
    while len(prompts) < n:
        ops = []
        for _ in range(rng.randint(min_len, max_len)):
            op, a, b = rng.choice(tuple(OPS)), rng.choice(DIGITS), rng.choice(DIGITS)
            if op == "minus" and a < b:
                a, b = b, a
            ops.append((a, op, b))
        prompt = make_prompt(ops)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def _in_space(prompt: str, min_len: int, max_len: int) -> bool:
    try:
        ops = parse_prompt(prompt)
    except ValueError:
        return False
    return min_len <= len(ops) <= max_len and all(op != "minus" or a >= b for a, op, b in ops)


@dataclass(frozen=True)
class ArithPolicy:
    """A scripted responder: the reference template, each clause wrong with probability `error_rate`.

    A wrong clause is a plausible slip: mostly a wrong result (off by one or two, or the result of
    another operation on the same digits), otherwise (`misread_share` of slips) a misread operand,
    restated and computed with. With `padding` the answer gets an opening and/or a closing filler
    sentence.
    """

    error_rate: float
    padding: bool = False
    misread_share: float = 0.25

    def respond(self, prompt: str, rng: random.Random) -> str:
        sentences = []
        for label, (a, op, b) in zip(LABELS, parse_prompt(prompt)):
            result = OPS[op](int(a), int(b))
            if rng.random() < self.error_rate:
                misread = _misread(a, op, b, rng) if rng.random() < self.misread_share else None
                if misread:
                    a, b = misread
                    result = OPS[op](int(a), int(b))
                else:
                    result = _wrong_result(op, int(a), int(b), result, rng)
            sentences.append(f"{label} {a} {op} {b} is {result} .")
        if self.padding:
            shape = rng.randrange(3)  # 0: opening only, 1: closing only, 2: both
            if shape != 1:
                sentences.insert(0, rng.choice(OPENERS))
            if shape != 0:
                sentences.append(rng.choice(CLOSERS))
        return " ".join(sentences)


def _wrong_result(op: str, a: int, b: int, right: int, rng: random.Random) -> int:
    slips = {right + d for d in (-2, -1, 1, 2)} | {fn(a, b) for name, fn in OPS.items() if name != op}
    return rng.choice(sorted(s for s in slips if s != right and (s >= 0 or right < 0)))


def _misread(a: str, op: str, b: str, rng: random.Random) -> tuple[str, str] | None:
    """(a, b) with one digit misread, keeping a subtraction's result whole; None when no digit can be."""
    options = [(d, b) for d in DIGITS if d != a and (op != "minus" or d >= b)]
    options += [(a, d) for d in DIGITS if d != b and (op != "minus" or a >= d)]
    return rng.choice(options) if options else None


POLICIES: dict[str, ArithPolicy] = {
    "expert": ArithPolicy(error_rate=0.02),
    "solid": ArithPolicy(error_rate=0.15),
    "shaky": ArithPolicy(error_rate=0.35),
    "guesser": ArithPolicy(error_rate=0.60),
    "chatty": ArithPolicy(error_rate=0.05, padding=True),
}

SFT_MIX = {"expert": 0.15, "solid": 0.25, "shaky": 0.25, "guesser": 0.15, "chatty": 0.20}
"""Policy mixture behind the SFT completions: mostly imperfect, so SFT lands well below `expert`
(about 7.4 against 9.8) and RL has room to show what the value/reward signal adds."""


def judge(prompt: str, completion: str) -> float:
    """Ground-truth score: ACCURACY_WEIGHT * clause accuracy - FILLER_PENALTY * filler words.

    The completion is cut into sentences at each "." word. A sentence of the form
    "<label> <number> <plus|minus|times> <number> is <number>" is a clause; every word of any other
    sentence, its "." included, is filler, and a last clause without its "." costs one filler word.
    Clause accuracy is the number of positions where the completion's clause equals the reference
    clause word for word, over the longer of the two clause lists, so a wrong result, a missing
    clause and an extra clause all cost.
    """
    ref = reference_clauses(prompt)
    clauses, filler = _clauses_and_filler(completion.split())
    longest = max(len(ref), len(clauses))
    accuracy = sum(c == r for c, r in zip(clauses, ref)) / longest if longest else 0.0
    return ACCURACY_WEIGHT * accuracy - FILLER_PENALTY * filler


def _clauses_and_filler(words: list[str]) -> tuple[list[tuple[str, ...]], int]:
    clauses: list[tuple[str, ...]] = []
    filler = 0
    sentence: list[str] = []
    for word in words + [None]:  # None: the end, which closes an unterminated last sentence
        if word is not None and word != ".":
            sentence.append(word)
            continue
        terminated = word == "."
        if _is_clause(sentence):
            clauses.append(tuple(sentence))
            filler += 0 if terminated else 1
        else:
            filler += len(sentence) + terminated
        sentence = []
    return clauses, filler


def _is_clause(words: list[str]) -> bool:
    return (len(words) == 6 and words[0] in LABELS and words[2] in OPS and words[4] == "is"
            and all(_NUMBER.fullmatch(words[i]) for i in (1, 3, 5)))
