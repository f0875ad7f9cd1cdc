"""`dvpo dpo` on TRL's DPOTrainer: pairs from rated or preference data, a finished run, clear errors."""

from __future__ import annotations

import json

import pytest

from dvpo.cli import main


def _dpo(tiny_model, data, out, *extra):
    main(["dpo", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "3",
          "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64", "--logging-steps", "1", *extra])


def test_dpo_on_rated_pairs_moves_the_implicit_rewards(tiny_model, lab_data, tmp_path):
    _dpo(tiny_model, lab_data["rated"], tmp_path / "dpo")
    summary = json.loads((tmp_path / "dpo" / "dvpo_complete.json").read_text())
    assert summary["stage"] == "dpo" and summary["steps"] == 3
    assert summary["pairs"] == 200  # best vs worst: one pair per rated prompt
    records = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards/margins"] for r in records if "rewards/margins" in r]
    assert margins[0] == 0.0 and margins[-1] != 0.0  # the policy left the reference
    assert (tmp_path / "dpo" / "model.safetensors").exists()


def test_dpo_on_a_preference_file(tiny_model, lab_data, tmp_path):
    _dpo(tiny_model, lab_data["preference"], tmp_path / "pref", "--max-steps", "1")
    assert (tmp_path / "pref" / "dvpo_complete.json").exists()


def test_dpo_without_any_pair_is_a_clear_error(tiny_model, tmp_path, capsys):
    data = tmp_path / "ties.jsonl"
    data.write_text(json.dumps({"prompt": "sort 1 2", "completion": "1 2", "score": 1.0}) + "\n"
                    + json.dumps({"prompt": "sort 1 2", "completion": "2 1", "score": 1.0}) + "\n")
    with pytest.raises(SystemExit) as stop:
        _dpo(tiny_model, data, tmp_path / "none")
    assert stop.value.code == 2 and "ties.jsonl: no preference pairs" in capsys.readouterr().err
