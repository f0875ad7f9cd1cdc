"""The stage runner: finished runs are skipped, a failed run stops the pipeline with its log's tail, and the
thread budget is shared between runs trained at the same time."""

from __future__ import annotations

import pytest

from dvpo.errors import ConfigError
from dvpo.stage_options import SftConfig
from dvpo.errors import StageFailed
from dvpo.stage_runner import StageRunner, thread_budget
from dvpo.trainers.run_dir import mark_complete


def test_a_finished_run_is_skipped_and_a_failed_one_stops_with_its_log(tmp_path):
    done, broken = tmp_path / "done", tmp_path / "broken"
    done.mkdir()
    mark_complete(done, stage="sft")
    run = StageRunner(tmp_path, {}, total=2, jobs=2)
    with pytest.raises(StageFailed, match=r"(?s)broken failed with exit code 2; log .*broken\.log:\n.*model 'm' is not a local folder"):
        run.together([("done", "sft", SftConfig(model="m", data=str(tmp_path / "missing.jsonl"), out=str(done))),
                      ("broken", "sft", SftConfig(model="m", data=str(tmp_path / "missing.jsonl"),
                                                  out=str(broken)))])
    assert (tmp_path / "logs" / "broken.yaml").is_file()
    assert not (tmp_path / "logs" / "done.yaml").exists()  # skipped: never launched
    assert not (tmp_path / "stage_seconds.json").exists()  # only finished runs are timed
    assert run.progress.n == 1
    run.close()


def test_overrides_apply_before_a_run_is_reused(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    mark_complete(out, stage="sft")
    (out / "dvpo_config.yaml").write_text("model: m\ndata: d.jsonl\nout: " + str(out) + "\nepochs: 3.0\n")
    run = StageRunner(tmp_path, {"sft": {"epochs": 5}}, total=1)
    with pytest.raises(ConfigError, match=r"other settings"):
        run("sft", "sft", SftConfig(model="m", data="d.jsonl", out=str(out)))


def test_the_thread_budget_follows_omp_num_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_budget() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget() >= 1
    with pytest.raises(ConfigError, match="--jobs"):
        StageRunner(tmp_path, {}, total=0, jobs=-1)
