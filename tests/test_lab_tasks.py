"""The lab task registry and the "arith" task: recognition, judge, policy traits, data files, CLI, configs."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from dvpo import stage_options
from dvpo.cli import main
from dvpo.data.jsonl import write_jsonl
from dvpo.eval.lab_judge import judge_file, policy_scores, score_rows
from dvpo.eval.rl_eval import PromptScorer
from dvpo.lab.tasks import LAB_SCORE_FN, is_lab_prompt
from dvpo.lab import arith, tasks
from dvpo.lab import task as digits
from dvpo.lab.make_data import make_lab_data
from dvpo.lab.tasks import LAB_TASKS, TASK_NAMES, get_task, task_for_prompt

ARITH = get_task("arith")
DIGITS = get_task("digits")
SMALL = dict(n_sft=30, n_rated=40, n_rl=20, n_test=10, n_rated_test=10)
PROMPT = "a 3 plus 4 ; b 2 times 5 ; c 9 minus 1 ; d 0 plus 8"
ANSWER = "a 3 plus 4 is 7 . b 2 times 5 is 10 . c 9 minus 1 is 8 . d 0 plus 8 is 8 ."
TEMPLATE = {"plus", "minus", "times", "is", ".", *arith.LABELS[:arith.MAX_OPS]}  # every word but the numbers
ACCURACY_ONLY = ("expert", "solid", "shaky", "guesser")  # the policies that differ in accuracy alone


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def prompts():
    return ARITH.sample_prompts(500, random.Random(0))


@pytest.fixture(scope="module")
def responses(prompts):
    rng = random.Random(0)
    return {name: [policy.respond(p, rng) for p in prompts] for name, policy in ARITH.policies.items()}


def test_registry_names_and_lookup():
    assert TASK_NAMES == ("digits", "arith") and list(LAB_TASKS) == list(TASK_NAMES)
    assert all(get_task(name).name == name for name in TASK_NAMES)
    with pytest.raises(ValueError, match="unknown lab task 'algebra'.*digits, arith"):
        get_task("algebra")


def test_digits_task_is_the_existing_lab():
    assert dict(DIGITS.policies) == digits.POLICIES and dict(DIGITS.sft_mix) == digits.SFT_MIX
    assert DIGITS.sample_prompts(200, random.Random(5)) == digits.sample_prompts(200, random.Random(5))
    assert DIGITS.judge("sort 7 2 9 4", "ok so 2 4 7 9") == digits.judge("sort 7 2 9 4", "ok so 2 4 7 9") == 9.0


def test_each_task_recognises_only_its_own_prompts(prompts):
    digit_prompts = digits.sample_prompts(500, random.Random(0))
    assert all(ARITH.is_prompt(p) and not DIGITS.is_prompt(p) for p in prompts)
    assert all(DIGITS.is_prompt(p) and not ARITH.is_prompt(p) for p in digit_prompts)
    assert all(task_for_prompt(p) is ARITH for p in prompts)
    assert all(task_for_prompt(p) is DIGITS for p in digit_prompts)
    for other in ["", "a", "a 3", "a 3 plus", "a 3 plus 4 ;", "a 3 plus 4 ; ", "a 3 plus 4 5", "3 plus 4",
                  "b 3 plus 4", "a 3 plus 4 ; c 2 times 5", "a 13 plus 4", "a 3 plus 4; b 2 times 5", "a 3  plus 4",
                  "a 8 over 2", "a plus 3 4", "sort 1 2 ; a 3 plus 4", "a 3 plus 4 is 7 .", None, 7, ["a 3 plus 4"]]:
        assert task_for_prompt(other) is None and not is_lab_prompt(other), other
    assert task_for_prompt("a 3 plus 4") is ARITH and is_lab_prompt(PROMPT)  # any number of operations parses
    eleven = " ; ".join(f"{label} 1 plus 1" for label in "abcdefghijk")
    assert task_for_prompt(eleven[:-len(" ; k 1 plus 1")]) is ARITH and task_for_prompt(eleven) is None


def test_sample_prompts_distinct_seeded_and_in_range():
    exclude = set(ARITH.sample_prompts(50, random.Random(1)))
    got = ARITH.sample_prompts(300, random.Random(2), exclude=exclude)
    assert got == ARITH.sample_prompts(300, random.Random(2), exclude=exclude)
    assert len(set(got)) == 300 and not set(got) & exclude
    ops = [arith.parse_prompt(p) for p in got]
    assert {len(o) for o in ops} == set(range(arith.MIN_OPS, arith.MAX_OPS + 1))
    assert all(a >= b for o in ops for a, op, b in o if op == "minus")  # results never negative
    assert {op for o in ops for _, op, _ in o} == set(arith.OPS)
    with pytest.raises(ValueError, match="only 255"):
        ARITH.sample_prompts(256, random.Random(0), min_len=1, max_len=1)
    with pytest.raises(ValueError, match="max_len <= 10"):
        ARITH.sample_prompts(1, random.Random(0), max_len=11)


def test_reference_answer():
    assert arith.reference_answer(PROMPT) == ANSWER
    assert arith.reference_answer("a 9 times 9 ; b 5 minus 5 ; c 9 plus 9") == \
        "a 9 times 9 is 81 . b 5 minus 5 is 0 . c 9 plus 9 is 18 ."


@pytest.mark.parametrize(
    "completion, expected",
    [
        (ANSWER, 10.0),  # perfect
        (ANSWER.replace("is 10", "is 11"), 7.5),  # one wrong result of four clauses
        (ANSWER.replace("9 minus 1", "9 plus 1"), 7.5),  # a clause must restate its operation too
        (ANSWER.replace("b 2", "a 2"), 7.5),  # and its label
        ("let me see . " + ANSWER, 10 - 0.25 * 4),  # a filler sentence: 3 words and its full stop
        (ANSWER + " all done .", 10 - 0.25 * 3),
        (ANSWER + " d 0 plus 8 is 8 .", 10 * 4 / 5),  # an extra clause dilutes accuracy
        (ANSWER[:-2], 10 - 0.25),  # a last clause without its full stop
        (ANSWER.replace("b 2 times 5 is 10 . ", ""), 10 * 1 / 4),  # a missing clause shifts the rest
        ("b 2 times 5 is 10 . a 3 plus 4 is 7 . c 9 minus 1 is 8 . d 0 plus 8 is 8 .", 10 * 2 / 4),  # positions
        (ANSWER.replace(" .", ""), -0.25 * 24),  # no full stops: one sentence of 24 filler words
        ("", 0.0),
    ],
)
def test_judge_hand_computed(completion, expected):
    assert ARITH.judge(PROMPT, completion) == pytest.approx(expected)


def test_concise_answer_beats_padding_and_extra_clauses(prompts):
    for prompt in prompts[:100]:
        answer = arith.reference_answer(prompt)
        assert ARITH.judge(prompt, answer) == 10.0
        for opener in arith.OPENERS:
            assert ARITH.judge(prompt, f"{opener} {answer}") < 10.0
        last = answer.rsplit(" . ", 1)[-1]
        assert ARITH.judge(prompt, f"{answer} {last}") < 10.0  # restating the last clause


def test_one_wrong_result_token_costs_its_clause(prompts):
    for prompt in prompts[:100]:
        words = arith.reference_answer(prompt).split()
        n = len(words) // 7
        for clause in range(n):
            wrong = list(words)
            wrong[7 * clause + 5] = str(int(wrong[7 * clause + 5]) + 1)
            assert ARITH.judge(prompt, " ".join(wrong)) == pytest.approx(10.0 - 10.0 / n)


def test_policy_means_ordered_and_sft_mix_leaves_room(prompts):
    scores = policy_scores(prompts, seed=0, task="arith")
    assert scores == policy_scores(prompts, seed=0)  # the task is inferred from the prompts
    assert max(scores, key=scores.get) == "expert" and min(scores, key=scores.get) == "guesser"
    assert scores["expert"] > 9.5 and scores["expert"] > scores["solid"] + 1 > scores["shaky"] + 2
    assert scores["chatty"] < scores["expert"] - 1.5  # padding costs despite near-perfect results
    mixture = sum(w * scores[name] for name, w in ARITH.sft_mix.items())
    assert set(ARITH.sft_mix) == set(ARITH.policies) and scores["expert"] > mixture + 2


def test_response_lengths(responses):
    for name, texts in responses.items():
        counts = [len(t.split()) for t in texts]
        assert 20 <= min(counts) and max(counts) <= 60, name
        if name in ACCURACY_ONLY:
            assert min(counts) == 7 * arith.MIN_OPS and max(counts) == 7 * arith.MAX_OPS, name
        assert all(t == " ".join(t.split()) for t in texts), name  # plain single-spaced words


def _clauses(text):
    words = text.split()
    return [tuple(words[i:i + 6]) for i in range(0, len(words), 7)]


def test_policies_share_one_template(prompts, responses):
    def words(name):
        return {w for t in responses[name] for w in t.split() if not w.isdigit()}

    assert all(words(name) == TEMPLATE for name in ACCURACY_ONLY)
    for name in ACCURACY_ONLY:  # the reference's clauses, in its order: only numbers differ
        for prompt, text in zip(prompts, responses[name]):
            got, ref = text.split(), arith.reference_answer(prompt).split()
            assert len(got) == len(ref)
            assert all(g == r for i, (g, r) in enumerate(zip(got, ref)) if i % 7 in (0, 2, 4, 6))  # label, op, is, .
    error_rates = {name: sum(c != r for p, t in zip(prompts, responses[name])
                             for c, r in zip(_clauses(t), arith.reference_clauses(p)))
                   / sum(len(arith.parse_prompt(p)) for p in prompts) for name in ACCURACY_ONLY}
    assert error_rates["expert"] < 0.05 < error_rates["solid"] < 0.25 < error_rates["shaky"] < 0.5 \
        < error_rates["guesser"]
    assert words("chatty") > words("expert")  # the padding policy adds filler sentences, and always pads
    assert all(len(t.split()) > 7 * len(arith.parse_prompt(p)) for p, t in zip(prompts, responses["chatty"]))


def test_slips_are_plausible(prompts, responses):
    """A wrong clause has either a near-miss result or one misread digit that it computes with."""
    kinds = {"result": 0, "misread": 0}
    for prompt, text in zip(prompts, responses["guesser"]):
        for (a, op, b), (_, ga, gop, gb, _, result) in zip(arith.parse_prompt(prompt), _clauses(text)):
            assert gop == op and int(result) >= 0
            if (ga, gb) == (a, b):
                right = arith.OPS[op](int(a), int(b))
                slips = {right + d for d in (-2, -1, 1, 2)} | {fn(int(a), int(b)) for fn in arith.OPS.values()}
                assert int(result) in slips
                kinds["result"] += int(result) != right
            else:
                assert (ga == a) != (gb == b) and int(result) == arith.OPS[op](int(ga), int(gb))
                kinds["misread"] += 1
    assert 2 * kinds["misread"] < kinds["result"] < 4 * kinds["misread"]  # about a quarter of slips misread


def test_make_lab_data_arith(tmp_path):
    paths = make_lab_data(tmp_path / "a", seed=3, task="arith", **SMALL)
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["task"] == "arith" and manifest["sft_mix"] == dict(ARITH.sft_mix)
    assert (manifest["min_len"], manifest["max_len"]) == (arith.MIN_OPS, arith.MAX_OPS)
    for kind, name in manifest["files"].items():
        assert paths[kind].name == name and len(_read(paths[kind])) == manifest["counts"][kind] > 0
    sets = {
        "sft": [r["prompt"] for r in _read(paths["sft"])],
        "rated": list(dict.fromkeys(r["prompt"] for r in _read(paths["rated"]))),
        "rl": [r["prompt"] for r in _read(paths["prompts"])],
        "test": [r["prompt"] for r in _read(paths["test_prompts"])],
        "rated_test": list(dict.fromkeys(r["prompt"] for r in _read(paths["rated_test"]))),
    }
    everything = [p for ps in sets.values() for p in ps]
    assert len(everything) == len(set(everything)) == sum(SMALL.values())
    assert all(task_for_prompt(p) is ARITH for p in everything)
    for kind in ("rated", "rated_test"):
        by_prompt = {}
        for row in _read(paths[kind]):
            by_prompt.setdefault(row["prompt"], []).append(row["policy"])
        assert all(sorted(p) == sorted(ARITH.policies) for p in by_prompt.values())
    rated = _read(paths["rated"])
    assert all(abs(judge - r["score"]) < 3 for judge, r in zip(score_rows(rated), rated))  # judge + noise
    again = make_lab_data(tmp_path / "b", seed=3, task="arith", **SMALL)
    assert all(paths[k].read_bytes() == again[k].read_bytes() for k in paths)
    with pytest.raises(ValueError, match="sft_mix"):
        make_lab_data(tmp_path / "c", task="arith", sft_mix={"careful": 1.0}, **SMALL)  # a digits policy
    with pytest.raises(ValueError, match="unknown lab task"):
        make_lab_data(tmp_path / "d", task="algebra", **SMALL)


def test_cli_make_data_task(tmp_path):
    out = tmp_path / "cli"
    assert main(["lab", "make-data", "--task", "arith", "--out", str(out), "--seed", "3",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]) == 0
    direct = make_lab_data(tmp_path / "fn", seed=3, task="arith", **SMALL)
    for kind, path in direct.items():
        assert (out / path.name).read_bytes() == path.read_bytes(), kind
    with pytest.raises(SystemExit):
        main(["lab", "make-data", "--task", "algebra", "--out", str(tmp_path / "bad")])
    assert main(["lab", "make-data", "--out", str(tmp_path / "default"), *[f"--{k.replace('_', '-')}={v}"
                                                                            for k, v in SMALL.items()]]) == 0
    assert json.loads((tmp_path / "default" / "manifest.json").read_text())["task"] == "digits"


def test_judge_file_and_scorers_handle_both_tasks(tmp_path):
    gen = tmp_path / "gen.jsonl"
    write_jsonl(gen, [
        {"prompt": PROMPT, "completion": ANSWER},  # 10
        {"prompt": PROMPT, "completion": ANSWER.replace("is 10", "is 11")},  # 7.5
        {"prompt": "a 9 times 9", "completion": "ok . a 9 times 9 is 81 ."},  # 10 - 0.5
        {"prompt": "sort 7 2 9 4", "completion": "2 4 8 9"},  # digits: 7.5
    ])
    result = judge_file(gen)
    assert result["n"] == 4 and result["mean"] == pytest.approx((10 + 7.5 + 9.5 + 7.5) / 4)
    scorer = PromptScorer(LAB_SCORE_FN)  # the lab's judge as the RL loop's monitoring score
    assert scorer.score([PROMPT, "sort 7 2 9 4"], [ANSWER, "2 4 8 9"]) == {"score": pytest.approx(8.75)}
    assert PromptScorer(None).score([PROMPT], [ANSWER]) == {}
    with pytest.raises(ValueError, match="not a lab prompt"):
        tasks.judge("Write a poem.", "no")


@pytest.mark.parametrize("config", [stage_options.LabDataConfig, stage_options.DemoConfig, stage_options.CompareConfig])
def test_config_task_choices_match_registry(config):
    field = {f.name: f for f in dataclasses.fields(config)}["task"]
    assert field.default == "digits" and tuple(field.metadata["choices"]) == TASK_NAMES
