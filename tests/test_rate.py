"""`dvpo rate`: responses of several models scored by a reward function into rated rows, resumed after a kill,
and the path the issue asked for: rate -> gvm -> rl --algo dvpo, end to end at the tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dvpo.cli import main
from dvpo.data.formats import load_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lab_rewards.py"


EXAMPLE_SCORER = ("--reward-fn", f"{EXAMPLE}:exact_answer", f"{EXAMPLE}:digits_only", "--reward-weights", "1", "0.5")


def rate_args(tiny_model, prompts, out, scorer=EXAMPLE_SCORER):
    """Two models (the same weights under two policy names), two samples per prompt, batches of 8 prompts."""
    return ["rate", "--prompts", str(prompts), "--model", str(tiny_model), str(tiny_model), "--names", "a", "b",
            "--samples", "2", "--max-new-tokens", "8", "--batch-size", "8", "--out", str(out), *scorer]


def few_prompts(lab_data, tmp_path, n=12) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = load_rows(lab_data["prompts"], "prompts")[:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rate_writes_rated_rows_scored_by_the_reward_functions(tiny_model, lab_data, tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    import lab_rewards

    prompts = few_prompts(lab_data, tmp_path)
    out = tmp_path / "rated.jsonl"
    main(rate_args(tiny_model, prompts, out))
    rows = load_rows(out, "rated")  # valid rated data, as `dvpo gvm` reads it
    assert len(rows) == 12 * 2 * 2 and {r["policy"] for r in rows} == {"a", "b"}
    for row in rows:
        expected = (lab_rewards.exact_answer([row["prompt"]], [row["completion"]])[0]
                    + 0.5 * lab_rewards.digits_only([row["prompt"]], [row["completion"]])[0])
        assert row["score"] == pytest.approx(expected, abs=1e-6)
    sys.path.remove(str(EXAMPLE.parent))


def test_an_interrupted_rate_resumes_to_the_same_rows(tiny_model, lab_data, tmp_path):
    prompts = few_prompts(lab_data, tmp_path)
    whole = tmp_path / "whole.jsonl"
    main(rate_args(tiny_model, prompts, whole))
    cut = tmp_path / "cut.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:16]) + lines[16][:20])  # the first batch of model a, then a line cut short
    main(rate_args(tiny_model, prompts, cut))
    assert cut.read_text() == whole.read_text()


def test_rate_needs_one_kind_of_scorer(tiny_model, lab_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["rate", "--prompts", str(lab_data["prompts"]), "--model", str(tiny_model), "--out",
              str(tmp_path / "r.jsonl")])
    assert stop.value.code == 2 and "name a scorer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rate", "--prompts", str(lab_data["prompts"]), "--model", str(tiny_model), str(tiny_model),
              "--out", str(tmp_path / "r.jsonl"), "--reward-fn", f"{EXAMPLE}:exact_answer"])
    assert "share the policy name" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_rate_then_gvm_then_dvpo_runs_end_to_end(tiny_model, lab_data, tmp_path):
    """Any scorer becomes a GVM: rated rows from a reward function train it, and DVPO follows it. (The untrained
    tiny model never answers right, so a length rule gives its responses different scores.)"""
    prompts = few_prompts(lab_data, tmp_path, n=24)
    rated = tmp_path / "rated.jsonl"
    rule = tmp_path / "rule.py"
    rule.write_text("def words(prompts, completions, **kwargs):\n    return [float(len(c.split())) for c in completions]\n")
    main(rate_args(tiny_model, prompts, rated, scorer=("--reward-fn", f"{rule}:words")))
    gvm = tmp_path / "gvm"
    main(["gvm", "--model", str(tiny_model), "--data", str(rated), "--out", str(gvm), "--max-steps", "3",
          "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "96"])
    out = tmp_path / "rl"
    main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(gvm), "--prompts", str(prompts),
          "--out", str(out), "--steps", "2", "--rollout-batch-size", "4", "--mini-batch-size", "4",
          "--ppo-epochs", "1", "--max-new-tokens", "6"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "advantage_mean" in records[-1] and (out / "dvpo_complete.json").exists()
