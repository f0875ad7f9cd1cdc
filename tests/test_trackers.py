"""Experiment trackers (`--report-to`), read back from what each wrote: TensorBoard event files and an offline
wandb run, for the RL loop (accelerate's trackers) and an offline stage (transformers' callbacks)."""

from __future__ import annotations

import json

import pytest

from dvpo.cli import main

pytest.importorskip("tensorboard", reason="the trackers extra: pip install 'dvpo[trackers]'")
pytest.importorskip("wandb", reason="the trackers extra: pip install 'dvpo[trackers]'")


def rl(tiny_model, tiny_gvm, lab_data, out, *extra):
    return ["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(tiny_gvm), "--prompts",
            str(lab_data["prompts"]), "--out", str(out), "--steps", "3", "--rollout-batch-size", "4",
            "--mini-batch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "8", *extra]


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under `folder`: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in folder.rglob("events.out.tfevents*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return scalars


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline wandb run file (`run-<id>.wandb`): LevelDB-log blocks of wandb's own
    `Record` protobufs, after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, payload, history = 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        if left < 7 or (length == 0 and kind == 0):  # the padding at a block's end
            position += left
            continue
        payload += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(payload)
            payload = b""
            if record.HasField("history"):
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
    return history


def test_rl_logs_its_metrics_to_tensorboard_and_wandb_at_once(tiny_model, tiny_gvm, lab_data, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    main(rl(tiny_model, tiny_gvm, lab_data, out, "--report-to", "tensorboard,wandb"))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard_scalars(out)
    assert [step for step, _ in scalars["kl"]] == [1, 2, 3]
    assert [value for _, value in scalars["proxy_score"]] == pytest.approx([r["proxy_score"] for r in logged])
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = [row for row in wandb_history(run_file) if "kl" in row]
    assert [row["_step"] for row in history] == [1, 2, 3]
    assert [row["gvm_value_mean"] for row in history] == pytest.approx([r["gvm_value_mean"] for r in logged])


def test_rl_logs_its_metrics_to_trackio_and_mlflow_local_stores(tiny_model, tiny_gvm, lab_data, tmp_path,
                                                                monkeypatch):
    import sqlite3

    import os
    import subprocess
    import sys

    pytest.importorskip("trackio")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file://{tmp_path / 'mlruns'}"
    out = tmp_path / "run"
    # a fresh process: trackio reads TRACKIO_DIR once, when it is first imported
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": uri,
           "MLFLOW_ALLOW_FILE_STORE": "true"}
    done = subprocess.run([sys.executable, "-m", "dvpo", *rl(tiny_model, tiny_gvm, lab_data, out, "--report-to",
                                                             "trackio,mlflow")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with sqlite3.connect(tmp_path / "trackio" / "dvpo-rl.db") as db:
        rows = [json.loads(metrics) for (metrics,) in db.execute("select metrics from metrics order by step")]
    assert [row["kl"] for row in rows] == pytest.approx([r["kl"] for r in logged])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for reading it back here too
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "dvpo-rl"]
    [run] = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "proxy_score")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["proxy_score"])) for r in logged]


def test_an_offline_stage_logs_its_loss_to_tensorboard(tiny_model, lab_data, tmp_path):
    out = tmp_path / "gvm"
    main(["gvm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(out), "--max-steps", "4",
          "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "96", "--logging-steps", "2",
          "--report-to", "tensorboard"])
    scalars = tensorboard_scalars(out)
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]


@pytest.mark.parametrize("case", ["unknown", "not installed", "mlflow store"])
def test_an_unknown_missing_or_unusable_tracker_stops_the_run_before_any_file(case, tiny_model, tiny_gvm, lab_data,
                                                                              tmp_path, monkeypatch, capsys):
    report_to, message = {"unknown": ("tensorbord", "unknown tracker 'tensorbord'"),
                          "not installed": ("tensorboard,mlflow", "needs the mlflow_absent package: pip install"),
                          "mlflow store": ("mlflow", "the tracking store file://")}[case]
    if case == "not installed":  # every tracker is installed in the dev set: name a package that is not
        monkeypatch.setitem(__import__("dvpo.trainers.trackers").trainers.trackers.TRACKER_PACKAGES, "mlflow",
                            "mlflow_absent")
    if case == "mlflow store":  # MLflow 3 refuses its file store unless told
        pytest.importorskip("mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "run"
    for stage in (rl(tiny_model, tiny_gvm, lab_data, out, "--report-to", report_to),
                  ["sft", "--model", str(tiny_model), "--data", str(lab_data["sft"]), "--out", str(out),
                   "--report-to", report_to]):
        with pytest.raises(SystemExit) as stop:
            main(stage)
        error = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(error) == 1 and message in error[0]
        assert not out.exists() and not (tmp_path / "mlruns").exists()
