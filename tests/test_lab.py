"""The lab task: reference answers, judge arithmetic, policy traits, data files and the file judge."""

from __future__ import annotations

import json
import math
import random

import pytest

from dvpo.data.jsonl import write_jsonl
from dvpo.eval.lab_judge import format_report, judge_file, policy_scores, score_rows
from dvpo.lab.make_data import DEFAULT_SFT_MIX, _preference_rows, make_lab_data
from dvpo.lab.task import DIGITS, POLICIES, judge, parse_prompt, reference_answer, sample_prompts

SMALL = dict(n_sft=30, n_rated=50, n_rl=20, n_test=10, n_rated_test=10)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def prompts():
    return sample_prompts(400, random.Random(0))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab_data(tmp_path_factory.mktemp("lab"), seed=0)


def test_reference_answers():
    assert reference_answer("repeat 3 1 2") == ["3", "1", "2"]
    assert reference_answer("reverse 3 1 2 9") == ["9", "2", "1", "3"]
    assert reference_answer("sort 7 2 9 4") == ["2", "4", "7", "9"]


@pytest.mark.parametrize("bad", ["", "sort", "sort ", "shuffle 1 2 3", "sort 1 12 3", "sort 1  2", "sort a b"])
def test_reference_answer_rejects_other_text(bad):
    with pytest.raises(ValueError, match="not a lab prompt"):
        reference_answer(bad)


def test_sample_prompts_distinct_seeded_and_in_range():
    exclude = set(sample_prompts(50, random.Random(1)))
    got = sample_prompts(300, random.Random(2), exclude=exclude, min_len=3, max_len=4)
    assert got == sample_prompts(300, random.Random(2), exclude=exclude, min_len=3, max_len=4)
    assert len(set(got)) == 300 and not set(got) & exclude
    assert all(3 <= len(parse_prompt(p)[1]) <= 4 for p in got)
    with pytest.raises(ValueError, match="only"):
        sample_prompts(3001, random.Random(0), min_len=3, max_len=3)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("2 4 7 9", 10.0),  # perfect
        ("2 4 8 9", 7.5),  # one wrong digit of four
        ("ok so 2 4 7 9", 9.0),  # two filler words cost 0.5 each
        ("2 4 7 9 9 9", 10 * 4 / 6),  # extra digits dilute accuracy
        ("2 4 7", 7.5),  # a missing digit counts as wrong
        ("4 7 9", 0.0),  # right digits at the wrong positions earn nothing
        ("", 0.0),  # empty
        ("12 4 7 9", 10 * 0 / 3 - 0.5),  # "12" is not a single digit: filler
    ],
)
def test_judge_hand_computed(completion, expected):
    assert judge("sort 7 2 9 4", completion) == pytest.approx(expected)


def test_policy_traits(prompts):
    rng = random.Random(0)
    scores = policy_scores(prompts, seed=0)
    assert scores["careful"] > scores["verbose"] + 1 and scores["careful"] > scores["sloppy"] + 1
    verbose = [POLICIES["verbose"].respond(p, rng) for p in prompts]
    assert all(any(w not in DIGITS for w in c.split()) for c in verbose)
    assert len({c.split()[0] for c in verbose if c.split()[0] not in DIGITS}) > 2  # varied fillers
    assert any(c.split()[0] in DIGITS for c in verbose) and any(c.split()[-1] in DIGITS for c in verbose)
    assert all(POLICIES["lazy"].respond(p, rng) == " ".join(parse_prompt(p)[1]) for p in prompts)
    for name in ("careful", "sloppy", "lazy"):
        assert all(w in DIGITS for p in prompts for w in POLICIES[name].respond(p, rng).split()), name
    for name, policy in POLICIES.items():
        completion = policy.respond(prompts[0], rng)
        assert completion == " ".join(completion.split()), name  # plain single-spaced words


def test_sft_mixture_leaves_room_for_rl(prompts):
    scores = policy_scores(prompts, seed=0)
    mixture = sum(w * scores[name] for name, w in DEFAULT_SFT_MIX.items())
    assert scores["careful"] > mixture + 1.5


def test_make_lab_data_writes_all_files(lab):
    assert set(lab) == {"sft", "rated", "preference", "prompts", "test_prompts", "rated_test", "validation_prompts",
                        "rated_validation", "manifest"}
    manifest = json.loads(lab["manifest"].read_text())
    assert manifest["seed"] == 0
    for kind, name in manifest["files"].items():
        assert lab[kind].name == name and len(_read(lab[kind])) == manifest["counts"][kind]
    assert all(set(r) == {"prompt", "completion"} for r in _read(lab["sft"]))
    assert all(set(r) == {"prompt", "completion", "score", "policy"} for r in _read(lab["rated"]))
    assert all(set(r) == {"prompt"} for r in _read(lab["prompts"]) + _read(lab["test_prompts"]))


def test_prompt_sets_disjoint_and_split_30_50_20(lab):
    sets = {
        "sft": [r["prompt"] for r in _read(lab["sft"])],
        "rated": list(dict.fromkeys(r["prompt"] for r in _read(lab["rated"]))),
        "rl": [r["prompt"] for r in _read(lab["prompts"])],
        "test": [r["prompt"] for r in _read(lab["test_prompts"])],
        "rated_test": list(dict.fromkeys(r["prompt"] for r in _read(lab["rated_test"]))),
        "validation": [r["prompt"] for r in _read(lab["validation_prompts"])],
        "rated_validation": list(dict.fromkeys(r["prompt"] for r in _read(lab["rated_validation"]))),
    }
    everything = [p for prompts in sets.values() for p in prompts]
    assert len(everything) == len(set(everything))
    assert len(sets["validation"]) == len(sets["test"]) and len(sets["rated_validation"]) == len(sets["rated_test"])
    train = len(sets["sft"]) + len(sets["rated"]) + len(sets["rl"])
    assert [len(sets[k]) / train for k in ("sft", "rated", "rl")] == [0.3, 0.5, 0.2]


def test_rated_rows_cover_every_policy_and_preferences_agree(lab):
    for kind in ("rated", "rated_test", "rated_validation"):
        by_prompt = {}
        for row in _read(lab[kind]):
            by_prompt.setdefault(row["prompt"], []).append(row["policy"])
        assert all(sorted(p) == sorted(POLICIES) for p in by_prompt.values())
    scores = {(r["prompt"], r["completion"]): r["score"] for r in _read(lab["rated"])}
    pairs = _read(lab["preference"])
    assert len(pairs) + json.loads(lab["manifest"].read_text())["preference_skipped"] == 2000
    assert all(scores[(p["prompt"], p["chosen"])] > scores[(p["prompt"], p["rejected"])] for p in pairs)


def test_make_lab_data_is_deterministic(tmp_path):
    a = make_lab_data(tmp_path / "a", seed=3, **SMALL)
    b = make_lab_data(tmp_path / "b", seed=3, **SMALL)
    c = make_lab_data(tmp_path / "c", seed=4, **SMALL)
    for kind in a:
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind
    assert a["sft"].read_bytes() != c["sft"].read_bytes()


def test_make_lab_data_rejects_bad_mix(tmp_path):
    with pytest.raises(ValueError, match="sft_mix"):
        make_lab_data(tmp_path, sft_mix={"genius": 1.0}, **SMALL)


def test_preference_skips_ties():
    rows = [
        {"prompt": "repeat 1 2 3", "completion": "1 2 3", "score": 10.0},
        {"prompt": "repeat 1 2 3", "completion": "ok 1 2 3", "score": 9.5},
        {"prompt": "sort 2 1 3", "completion": "1 2 3", "score": 10.0},  # all scores equal
        {"prompt": "sort 2 1 3", "completion": "well 1 2 3", "score": 10.0},
        {"prompt": "reverse 1 2 3", "completion": "3 2 1", "score": 9.0},  # same text both ends
        {"prompt": "reverse 1 2 3", "completion": "3 2 1", "score": 10.0},
    ]
    pairs, skipped = _preference_rows(rows)
    assert pairs == [{"prompt": "repeat 1 2 3", "chosen": "1 2 3", "rejected": "ok 1 2 3"}]
    assert skipped == 2


def test_judge_file_stats_and_win_rate(tmp_path):
    gen = tmp_path / "gen.jsonl"
    base = tmp_path / "base.jsonl"
    write_jsonl(gen, [
        {"prompt": "sort 7 2 9 4", "completion": "2 4 7 9"},  # 10
        {"prompt": "sort 7 2 9 4", "completion": "2 4 8 9"},  # 7.5 -> prompt mean 8.75
        {"prompt": "repeat 1 2 3", "completion": "ok so 1 2 3"},  # 9
        {"prompt": "reverse 1 2 3", "completion": "3 2 1"},  # 10, not in baseline
    ])
    write_jsonl(base, [
        {"prompt": "sort 7 2 9 4", "completion": "2 4 7 9"},  # 10: loss
        {"prompt": "repeat 1 2 3", "completion": "ok so 1 2 3"},  # 9: tie
        {"prompt": "sort 1 2 3", "completion": "1 2 3"},  # not in generations
    ])
    result = judge_file(gen, base)
    assert result["n"] == 4 and result["mean"] == pytest.approx(36.5 / 4)
    assert result["std"] == pytest.approx(math.sqrt(4.1875 / 3))  # sample std of 10, 7.5, 9, 10
    assert result["sem"] == pytest.approx(result["std"] / 2)
    assert result["compared_prompts"] == 2 and result["win_rate"] == pytest.approx(0.25)
    assert "win rate 25.0% on 2 prompts" in format_report(result)
    assert "win_rate" not in judge_file(gen)

    other = tmp_path / "other.jsonl"
    write_jsonl(other, [{"prompt": "sort 9 9 9", "completion": "9 9 9"}])
    with pytest.raises(ValueError, match="gen.jsonl.*other.jsonl"):
        judge_file(gen, other)


def test_score_rows_names_missing_field():
    assert score_rows([{"prompt": "repeat 1 2 3", "completion": "1 2 3"}]) == [10.0]
    with pytest.raises(ValueError, match="row 0.*completion"):
        score_rows([{"prompt": "repeat 1 2 3"}])


def test_the_validation_sets_leave_every_earlier_set_as_it_was(lab, tmp_path):
    """They are drawn last, so data (and results) from before they existed are reproduced exactly."""
    without = make_lab_data(tmp_path / "without", seed=0, n_validation=0)
    for kind in ("sft", "rated", "preference", "prompts", "test_prompts", "rated_test"):
        assert without[kind].read_bytes() == lab[kind].read_bytes(), kind
