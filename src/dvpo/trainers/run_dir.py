"""One output folder per run: fresh, resumable from its last checkpoint, or already complete.

A stage writes its final artefacts and then `COMPLETE_MARKER`; a folder without the marker
is a run that stopped part-way, and re-running the same command resumes it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from dvpo.options import save_config
from dvpo.errors import RunComplete

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "dvpo_complete.json"
CHECKPOINTS = "checkpoints"


def prepare_run_dir(out: str | Path, overwrite: bool) -> tuple[Path, str | None]:
    """Returns (folder, checkpoint to resume from or None). Raises if the run is complete."""
    folder = Path(out)
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    if is_complete(folder):
        raise RunComplete(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints = folder / CHECKPOINTS
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    return folder, last


def start_run(cfg) -> tuple[Path, str | None]:
    """Prepare `cfg.out`, record the resolved options beside the outputs, say whether this resumes.

    With several processes the main one prepares the folder (and deletes it under --overwrite)
    before the others look at it. Seeds every generator with the run's seed.
    """
    from dvpo.distributed import check_optimizer, process_state
    from dvpo.trainers.trackers import report_targets

    report_targets(getattr(cfg, "report_to", "none"))  # a missing tracker package stops the run before any file
    check_optimizer(getattr(cfg, "optimizer", "adamw"))
    if is_complete(cfg.out) and not cfg.overwrite:  # every process stops alike, before any waits
        raise RunComplete(Path(cfg.out))
    state = process_state()
    with state.main_process_first():
        folder, resume_from = prepare_run_dir(cfg.out, cfg.overwrite and state.is_main_process)
        if state.is_main_process:
            save_config(cfg, folder / "dvpo_config.yaml")
    if resume_from:
        logger.info("resuming from %s", resume_from)
    set_seed(cfg.seed)  # fresh heads and adapters are drawn before the Trainer seeds: same seed, same start
    return folder, resume_from


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def mark_complete(folder: Path, **summary) -> None:
    """The model card (README.md), then the marker, written last, so its presence means every other artefact
    is in place."""
    from dvpo.trainers.model_card import write_model_card

    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if (folder / "dvpo_config.yaml").is_file():
        write_model_card(folder, summary)
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(folder / COMPLETE_MARKER)
