"""Runs pipeline stages (`dvpo <stage> --config FILE`) as subprocesses, several at once where they are independent.

`dvpo demo` and `dvpo compare` both train through it. A subprocess per run keeps each run's peak memory its own
(a process's resident set only grows) and leaves its options on disk next to its log. Independent runs (the GVM
and the reward model; the RL runs) share the machine's cores: each of `jobs` concurrent runs gets an equal share
of torch threads, which on a small model is faster than one run after another with all the threads (measured in
the README). Finished runs are skipped, so re-running an interrupted pipeline resumes it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from dvpo.options import apply_overrides, save_config

from dvpo.errors import ConfigError
from dvpo.errors import StageFailed
from dvpo.trainers.run_dir import is_complete

logger = logging.getLogger(__name__)


def thread_budget() -> int:
    """Threads the pipeline may use in all: OMP_NUM_THREADS when the user set it, else the cores this process may
    run on (the affinity mask where the platform has one)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class StageRunner:
    """Runs stages as `dvpo` subprocesses, skipping finished ones, and keeps their wall-clock seconds."""

    def __init__(self, root: Path, overrides: dict, total: int, jobs: int = 0, desc: str = "runs"):
        if jobs < 0:
            raise ConfigError(f"--jobs must be 0 (one run per thread) or more, not {jobs}")
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds_file = root / "stage_seconds.json"
        self.seconds = json.loads(self.seconds_file.read_text()) if self.seconds_file.exists() else {}
        self.overrides = overrides
        self.jobs = jobs if jobs > 0 else thread_budget()
        self.progress = tqdm(total=total, desc=desc, unit="run")
        self.lock = threading.Lock()

    def __call__(self, name: str, stage: str, stage_cfg) -> Path:
        """One run with every core."""
        return self.together([(name, stage, stage_cfg)])[0]

    def together(self, runs: list[tuple[str, str, object]]) -> list[Path]:
        """Independent runs, up to `jobs` at a time with an equal share of the cores each; their output
        folders in order. A failed run stops the rest from starting and raises once the running ones end."""
        prepared = [(name, stage, self.prepare(stage, stage_cfg)) for name, stage, stage_cfg in runs]
        pending = [(name, stage, cfg) for name, stage, cfg in prepared if not is_complete(Path(cfg.out))]
        self.progress.update(len(prepared) - len(pending))
        workers = max(1, min(self.jobs, len(pending)))
        threads = max(1, thread_budget() // workers)
        failures: list[StageFailed] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(self.launch, name, stage, cfg, threads, failures) for name, stage, cfg in pending]:
                future.result()
        if failures:
            raise failures[0]
        return [Path(cfg.out) for _, _, cfg in prepared]

    def prepare(self, stage: str, stage_cfg):
        stage_cfg = apply_overrides(stage_cfg, self.overrides.get(stage, {}), f"overrides: {stage}")
        check_same_settings(Path(stage_cfg.out), stage_cfg)
        return stage_cfg

    def launch(self, name: str, stage: str, stage_cfg, threads: int, failures: list) -> None:
        if failures:  # an earlier run failed: start nothing new
            return
        config_file, log = self.logs / f"{name}.yaml", self.logs / f"{name}.log"
        save_config(stage_cfg, config_file)
        logger.info("stage %s started with %d thread(s) (log: %s)", name, threads, log)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        with open(log, "a", encoding="utf-8") as sink:
            returncode = subprocess.run([sys.executable, "-m", "dvpo", stage, "--config", str(config_file)],
                                        stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
        seconds = round(time.perf_counter() - started, 1)
        with self.lock:
            if returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                failures.append(StageFailed(f"{name} failed with exit code {returncode}; log {log}:\n{tail}"))
                return
            self.seconds[name] = seconds
            self.seconds_file.write_text(json.dumps(self.seconds, indent=2))
            logger.info("stage %s took %.1f s", name, seconds)
            self.progress.update()

    def close(self) -> None:
        self.progress.close()


def check_same_settings(out: Path, stage_cfg) -> None:
    """A run folder is reused only for the same options: a report must not label old runs with new settings."""
    saved = out / "dvpo_config.yaml"
    if not saved.is_file():
        return
    before = {k: v for k, v in yaml.safe_load(saved.read_text()).items() if k != "overwrite"}
    now = {k: v for k, v in asdict(stage_cfg).items() if k != "overwrite"}
    changed = sorted(k for k in now.keys() | before.keys() if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} was trained with other settings ({', '.join(changed)}); pass --overwrite to "
                          "start afresh, or choose another --out")
