"""`dvpo compare`: the report's pure parts against hand values, and a small comparison end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dvpo.errors import ConfigError
from dvpo.stage_options import CompareConfig
from dvpo.compare import check_options
from dvpo.eval.compare_report import ordering, quality, run_efficiency


def test_quality_is_the_mean_and_spread_over_seeds_with_the_mean_win_rate():
    table = quality({"sft": {0: {"mean": 5.0}, 1: {"mean": 7.0}},
                     "dvpo": {0: {"mean": 6.0, "win_rate": 0.5}, 1: {"mean": 9.0, "win_rate": 1.0}}})
    assert table["sft"] == {"mean": 6.0, "std": pytest.approx(2 ** 0.5), "per_seed": [5.0, 7.0]}
    assert table["dvpo"]["mean"] == 7.5 and table["dvpo"]["win_rate_vs_sft"] == 0.75


def test_ordering_states_each_claim_of_the_paper_as_measured():
    lines = ordering({"dvpo": {"mean": 5.8}, "ppo": {"mean": 6.0}, "dpo": {"mean": 6.5}, "remax": {"mean": 5.0}})
    assert lines[0] == "DVPO within 5% of PPO or above: holds (DVPO/PPO = 0.967)"
    assert "DVPO above DPO: does not hold (5.80 vs 6.50)" in lines
    assert "PPO above ReMax: holds (6.00 vs 5.00)" in lines


def test_run_efficiency_skips_warm_up_steps_and_finds_the_best_step(tmp_path):
    records = [{"step": s, "time_step": t, "time_generation": 0.1, "time_forward": 0.2, "time_update": 0.3,
                "peak_memory_bytes": m} for s, t, m in ((1, 9.0, 10), (2, 8.0, 30), (3, 1.0, 20), (4, 3.0, 20),
                                                       (5, 2.0, 20))]
    records[2]["eval_score"], records[4]["eval_score"] = 4.0, 3.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_efficiency(tmp_path)
    assert result["time_step"] == 2.0  # median of steps 3-5
    assert result["peak_memory_bytes"] == 30 and result["best_eval_step"] == 3


@pytest.mark.parametrize("changes, message", [({"methods": ["dvpo", "sac"]}, "unknown sac"),
                                              ({"seeds": 0}, "at least 1"),
                                              ({"overrides": {"critic": {}}}, "unknown stage critic")])
def test_bad_options_are_clear(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_options(CompareConfig(**changes))


@pytest.mark.slow
def test_a_small_comparison_writes_the_report_and_resumes(tmp_path):
    overrides = ("{sft: {max_steps: 30}, gvm: {max_steps: 10}, rm: {max_steps: 10}, dpo: {max_steps: 5}, "
                 "rl: {steps: 3, eval_every: 3}}")
    command = [sys.executable, "-m", "dvpo", "compare", "--quick", "--seeds", "2", "--methods", "dvpo", "grpo",
               "dpo", "--out", str(tmp_path), "--overrides", overrides, "--second-scorers"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["quality"]) == {"sft", "dvpo", "grpo", "dpo"}
    assert all(len(row["per_seed"]) == 2 for row in report["quality"].values())
    assert set(report["efficiency"]) == {"dvpo", "grpo", "dpo"}
    assert report["efficiency"]["dvpo"]["time_step"] > 0 and "best_eval_step" in report["efficiency"]["grpo"]
    assert report["gvm_accuracy"]["pairs"] > 0 and report["rm_accuracy"] is not None
    assert "Overrides" in report["settings"]
    for name in ("report.md", "learning_curves.png", "proxy_gold.png", "logs/seed1-dvpo.yaml",
                 "seed1/dvpo/dvpo_complete.json"):
        assert (tmp_path / name).exists(), name
    assert set(report["proxy_and_gold"]) == {"dvpo", "grpo"}
    assert all(row["second_rise"] is not None for row in report["proxy_and_gold"].values())  # each watched
    assert "Quality (Table 1)" in (tmp_path / "report.md").read_text()
    assert "Proxy against gold" in (tmp_path / "report.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "stage sft started" not in again.stderr  # finished runs are reused


def test_a_run_folder_is_reused_only_with_the_same_settings(tmp_path):
    from dvpo.stage_runner import check_same_settings
    from dvpo.options import save_config
    from dvpo.stage_options import RlConfig

    cfg = RlConfig(algo="dvpo", policy="p", prompts="x.jsonl", out=str(tmp_path), steps=10)
    check_same_settings(tmp_path, cfg)  # nothing saved yet
    save_config(cfg, tmp_path / "dvpo_config.yaml")
    check_same_settings(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"other settings \(learning_rate, steps\)"):
        check_same_settings(tmp_path, RlConfig(algo="dvpo", policy="p", prompts="x.jsonl", out=str(tmp_path),
                                               steps=20, learning_rate=1e-3))


def test_proxy_and_gold_rises_from_the_first_step_to_the_last(tmp_path):
    from dvpo.eval.compare_report import plot_proxy_against_gold, proxy_and_gold

    runs = {}
    for seed, (proxy, gold) in enumerate([([0.1, 0.5, 0.9], [5.0, 5.1, 4.9]), ([0.0, 0.2, 0.5], [5.2, 5.2, 5.0])]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        second = [1.0 - p for p in proxy]
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "proxy_score": p, "score": g,
                                                                  "second_score": r}) + "\n"
                                                      for i, (p, g, r) in enumerate(zip(proxy, gold, second))))
        runs.setdefault("dvpo", {})[seed] = folder
    table = proxy_and_gold(runs)
    assert table["dvpo"]["proxy_rise"] == pytest.approx((0.8 + 0.5) / 2)
    assert table["dvpo"]["second_rise"] == pytest.approx(-(0.8 + 0.5) / 2)
    assert table["dvpo"]["gold_rise"] == pytest.approx((-0.1 - 0.2) / 2)
    assert plot_proxy_against_gold(runs, tmp_path / "p.png").exists()


def test_judging_on_validation_moves_every_held_out_read_off_test(tmp_path):
    """--judge-on validation: RL monitoring, the reward model's accuracy and the judge read the validation sets."""
    import dataclasses

    from dvpo.lab.make_data import make_lab_data
    from dvpo.pipeline import QUICK, Timer, prepare_lab, rl_config, rm_config

    budget = dataclasses.replace(QUICK, held_out="validation")
    data = tmp_path / "data"
    make_lab_data(data, seed=0, n_sft=30, n_rated=20, n_rl=20, n_test=10, n_rated_test=10)
    rl = rl_config("ppo", tmp_path / "sft", data, tmp_path / "ppo", budget, 0, reward_model="rm")
    assert rl.eval_prompts == str(data / "validation_prompts.jsonl")
    assert rm_config(tmp_path / "sft", data, tmp_path / "rm", budget, 0).eval_data == str(data / "rated_validation.jsonl")
    # A lab folder written before the validation sets existed gets them, its other files unchanged.
    manifest = json.loads((data / "manifest.json").read_text())
    before = (data / "test_prompts.jsonl").read_bytes()
    (data / "validation_prompts.jsonl").unlink()
    for key in ("validation_prompts", "rated_validation"):
        del manifest["files"][key]
    (data / "manifest.json").write_text(json.dumps(manifest))
    sized = dataclasses.replace(budget, n_sft=30, n_rated=20, n_rl=20, n_test=10)
    prepare_lab(tmp_path, sized, 0, Timer(), base_model="m")
    assert (data / "validation_prompts.jsonl").is_file() and (data / "test_prompts.jsonl").read_bytes() == before


def test_the_settings_sentence_names_the_recipe_and_dvpos_lambda(tmp_path):
    """The report says which recipe's files its stages ran with, and DVPO's GAE lambda (a default chosen per recipe)."""
    import dataclasses

    from dvpo.compare import lab_settings
    from dvpo.pipeline import SMOLLM2, dpo_config, rl_config

    (tmp_path / "test_prompts.jsonl").write_text('{"prompt": "sort 3 1 2"}\n')
    rl = rl_config("dvpo", tmp_path / "sft", tmp_path, tmp_path / "dvpo", SMOLLM2, 0, gvm="gvm")
    dpo = dpo_config(tmp_path / "sft", tmp_path, tmp_path, SMOLLM2, 0)
    sentence = lab_settings(rl, dpo, SMOLLM2.recipe, 0)
    assert "Stage settings: configs/recipes/smollm2/*.yaml." in sentence
    assert "DVPO's advantage: gae λ 1 (GVM value normalisation: reliability)" in sentence
    changed = lab_settings(dataclasses.replace(rl, dvpo_gae_lambda=0.95), dpo, "small", 0)
    assert "gae λ 0.95" in changed and "configs/recipes/small/*.yaml" in changed
    assert "value (GVM" in lab_settings(dataclasses.replace(rl, dvpo_advantage="value"), dpo, "small", 0)
