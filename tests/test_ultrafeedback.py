"""`dvpo data ultrafeedback`: UltraFeedback rows to the paper's disjoint 30/50/20 files, skips counted."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import datasets
import pytest

from dvpo.cli import main
from dvpo.errors import ConfigError
from dvpo.stage_options import UltraFeedbackConfig
from dvpo.data.formats import load_rows
from dvpo.errors import DataError
from dvpo.data.jsonl import write_jsonl
from dvpo.data.ultrafeedback import ASPECTS, FILES, SCORES, convert_ultrafeedback

MODELS = ["gpt-4", "alpaca-7b", "falcon-40b-instruct", "vicuna-33b", "wizardlm-7b"]


def _completion(model: str, response: str, ratings: list[str], overall: float) -> dict:
    """One completion in the exact openbmb/UltraFeedback schema."""
    annotations = {aspect: {"Rating": rating, "Rationale": "because"} for aspect, rating in zip(ASPECTS, ratings)}
    for aspect in ("truthfulness", "helpfulness"):
        annotations[aspect].update({"Type": ["1"], "Rationale For Rating": "because"})
    rated = [int(r) for r in ratings if r != "N/A"]
    return {"model": model, "principle": "helpfulness", "custom_system_prompt": "Be helpful.", "response": response,
            "annotations": annotations, "critique": "fine", "overall_score": overall,
            "fine-grained_score": sum(rated) / len(rated) if rated else None}


def _rows(n: int = 20) -> list[dict]:
    """n instructions x 4 completions, with one empty response, N/A ratings, a NaN and a null score."""
    rows = []
    for i in range(n):
        models = [MODELS[(i + j) % len(MODELS)] for j in range(4)]
        completions = [_completion(m, f"answer {j} to question {i}", [str(1 + (i + 2 * j + k) % 5) for k in range(4)],
                                   float(1 + (3 * i + j) % 10)) for j, m in enumerate(models)]
        rows.append({"source": "sharegpt", "instruction": f"question {i}?", "models": models,
                     "completions": completions, "correct_answers": ["None"], "incorrect_answers": ["None"]})
    rows[1]["completions"][2]["response"] = ""
    rows[2]["completions"][0] = _completion("gpt-4", "answer 0 to question 2", ["N/A", "4", "4", "5"], 8.0)
    rows[3]["completions"][1] = _completion("alpaca-7b", "answer 1 to question 3", ["N/A"] * 4, 2.0)
    rows[4]["completions"][3]["fine-grained_score"] = float("nan")
    rows[5]["completions"] = [_completion(m, f"answer {j}", ["N/A"] * 4, 3.0) for j, m in enumerate(MODELS[:4])]
    return rows


def _write_raw(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))  # json writes NaN as the dataset does


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "ultrafeedback.jsonl"
    _write_raw(path, _rows())
    return path


def _load(out) -> dict[str, list[dict]]:
    kinds = {"sft": "sft", "rated": "rated", "prompts": "prompts", "test_prompts": "prompts", "rated_test": "rated"}
    return {key: load_rows(out / FILES[key], kinds[key]) for key in FILES}


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _prompts(rows) -> set[str]:
    return {row["prompt"] for row in rows}


def test_converts_into_disjoint_sets_in_the_papers_proportions(source, tmp_path):
    out = tmp_path / "out"
    paths = convert_ultrafeedback(source, out, test_fraction=0.1, seed=3)
    files, manifest = _load(out), _manifest(out)
    assert set(paths) == {*FILES, "manifest"}
    sets = {key: _prompts(files[name]) for key, name in
            [("test", "test_prompts"), ("sft", "sft"), ("rated", "rated"), ("rl", "prompts")]}
    assert _prompts(files["rated_test"]) == sets["test"]
    usable = {f"question {i}?" for i in range(20)} - {"question 5?"}  # all four of question 5 are unrated
    assert set.union(*sets.values()) == usable and sum(map(len, sets.values())) == len(usable)
    assert manifest["prompt_counts"] == {key: len(prompts) for key, prompts in sets.items()} == \
        {"test": 2, "sft": 5, "rated": 8, "rl": 4}  # 19 usable: 10% test, then 30/50/20 of 17
    assert manifest["counts"] == {key: len(rows) for key, rows in files.items()}
    assert len(files["sft"]) == len(sets["sft"]) and len(files["prompts"]) == len(sets["rl"])


def test_skipped_completions_and_prompts_are_counted(source, tmp_path):
    convert_ultrafeedback(source, tmp_path / "out", test_fraction=0.1)
    manifest = _manifest(tmp_path / "out")
    # empty: question 1; no fine-grained score: question 3 (all N/A), question 4 (NaN), question 5 (x4)
    assert manifest["skipped_completions"] == {"empty_response": 1, "missing_score": 6, "rating_na": 0}
    assert manifest["skipped_prompts"] == {"empty_instruction": 0, "no_usable_completion": 1}
    assert manifest["duplicate_instructions_merged"] == 0
    rows = load_rows(tmp_path / "out" / "rated.jsonl", "rated") + load_rows(tmp_path / "out" / "rated_test.jsonl", "rated")
    used = _prompts(rows)
    assert len(rows) == 4 * len(used) - sum(p in used for p in ("question 1?", "question 3?", "question 4?"))


def test_scores_policies_and_best_sft_completion_follow_the_source(source, tmp_path):
    raw = {row["instruction"]: row["completions"] for row in _rows()}
    for score in ("fine-grained", "overall", "instruction_following"):
        out = tmp_path / score
        convert_ultrafeedback(source, out, score=score, test_fraction=0.1)
        files = _load(out)
        for row in files["rated"] + files["rated_test"]:
            completion = next(c for c in raw[row["prompt"]] if c["response"] == row["completion"])
            expected = (completion[f"{score}_score"] if score in ("fine-grained", "overall")
                        else float(completion["annotations"][score]["Rating"]))
            assert row["score"] == expected and row["policy"] == completion["model"]
        by_prompt = {}
        for row in files["rated"] + files["rated_test"]:
            by_prompt.setdefault(row["prompt"], []).append(row)
        assert files["sft"], "no SFT rows"
        for row in files["sft"]:
            # SFT prompts are not rated; recompute the best completion from the source by the same score
            usable = [c for c in raw[row["prompt"]] if c["response"] and _value(c, score) is not None]
            best = max(usable, key=lambda c: _value(c, score))
            assert row == {"prompt": row["prompt"], "completion": best["response"]}
    skipped = _manifest(tmp_path / "instruction_following")["skipped_completions"]
    assert skipped == {"empty_response": 1, "missing_score": 0, "rating_na": 6}  # question 2, 3 and 5 (x4)
    assert _manifest(tmp_path / "overall")["skipped_completions"] == {"empty_response": 1, "missing_score": 0,
                                                                      "rating_na": 0}


def _value(completion: dict, score: str) -> float | None:
    if score in ("fine-grained", "overall"):
        value = completion[f"{score}_score"]
        return None if value is None or math.isnan(value) else value
    rating = completion["annotations"][score]["Rating"]
    return None if rating == "N/A" else float(rating)


def test_cli_matches_the_function_and_is_deterministic_by_seed(source, tmp_path):
    convert_ultrafeedback(source, tmp_path / "fn", seed=7, test_fraction=0.1)
    assert main(["data", "ultrafeedback", "--data", str(source), "--out", str(tmp_path / "cli"),
                 "--seed", "7", "--test-fraction", "0.1"]) == 0
    convert_ultrafeedback(source, tmp_path / "other", seed=8, test_fraction=0.1)
    for name in [*FILES.values(), "manifest.json"]:
        assert (tmp_path / "fn" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert _load(tmp_path / "other")["prompts"] != _load(tmp_path / "fn")["prompts"]


def test_datasets_folder_gives_the_same_files(tmp_path):
    datasets.Dataset.from_list(_rows()).save_to_disk(str(tmp_path / "ds"))
    _write_raw(tmp_path / "raw.jsonl", _rows())
    convert_ultrafeedback(tmp_path / "raw.jsonl", tmp_path / "a", test_fraction=0.1)
    convert_ultrafeedback(tmp_path / "ds", tmp_path / "b", test_fraction=0.1)
    assert _load(tmp_path / "a") == _load(tmp_path / "b")


def test_repeated_and_blank_instructions_are_counted(tmp_path):
    rows = _rows()
    rows += [copy.deepcopy(rows[0]), {**copy.deepcopy(rows[7]), "instruction": "  "}]
    _write_raw(tmp_path / "raw.jsonl", rows)
    convert_ultrafeedback(tmp_path / "raw.jsonl", tmp_path / "out", test_fraction=0.1)
    manifest = _manifest(tmp_path / "out")
    assert manifest["duplicate_instructions_merged"] == 1
    assert manifest["skipped_prompts"] == {"empty_instruction": 1, "no_usable_completion": 1}
    assert sum(manifest["prompt_counts"].values()) == 19
    files = _load(tmp_path / "out")
    holders = [key for key, rows in files.items() if "question 0?" in _prompts(rows)]
    assert holders in (["sft"], ["rated"], ["prompts"], ["test_prompts", "rated_test"])
    rated = files["rated"] + files["rated_test"]
    assert sum(row["prompt"] == "question 0?" for row in rated) == (0 if holders in (["sft"], ["prompts"]) else 8)


@pytest.mark.parametrize("edit, field", [
    (lambda row: row.pop("instruction"), "instruction"),
    (lambda row: row.update(completions="four answers"), "completions"),
    (lambda row: row["completions"][1].pop("model"), "completions[1].model"),
    (lambda row: row["completions"][2].update(response=None), "completions[2].response"),
    (lambda row: row["completions"][0].update({"fine-grained_score": "high"}), "completions[0].fine-grained_score"),
])
def test_malformed_row_names_line_and_field(tmp_path, edit, field):
    rows = _rows()
    edit(rows[2])
    _write_raw(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as error:
        convert_ultrafeedback(tmp_path / "bad.jsonl", tmp_path / "out")
    assert (error.value.line, error.value.field) == (3, field)
    assert "bad.jsonl:3" in str(error.value)


def test_bad_rating_and_cli_error_exit(tmp_path, capsys):
    rows = _rows()
    rows[0]["completions"][0]["annotations"]["honesty"]["Rating"] = "good"
    _write_raw(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SystemExit) as exit_:
        main(["data", "ultrafeedback", "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out"),
              "--score", "honesty"])
    assert exit_.value.code == 2
    assert "bad.jsonl:1: field 'completions[0].annotations.honesty.Rating'" in capsys.readouterr().err


def test_too_few_prompts_and_bad_options_are_errors(tmp_path):
    write_jsonl(tmp_path / "two.jsonl", _rows()[:2])
    with pytest.raises(DataError, match="too few"):
        convert_ultrafeedback(tmp_path / "two.jsonl", tmp_path / "out")
    with pytest.raises(ConfigError, match="test-fraction"):
        convert_ultrafeedback(tmp_path / "two.jsonl", tmp_path / "out", test_fraction=0.0)
    with pytest.raises(ConfigError, match="score"):
        convert_ultrafeedback(tmp_path / "two.jsonl", tmp_path / "out", score="length")
    assert not (tmp_path / "out").exists()


def test_cli_score_choices_are_the_converters():
    field = {f.name: f for f in dataclasses.fields(UltraFeedbackConfig)}["score"]
    assert tuple(field.metadata["choices"]) == SCORES
