"""What a Python trainer is handed, as the stages read it: a folder or name for a model, a file for data, a spec
for a function.

The stages load models and data from paths (so that a run can be repeated from its saved config and resume
from its folder). Objects held in memory are written once into `<output_dir>-inputs/`: a loaded model with
its tokenizer as a model folder, a `datasets.Dataset` or a list of dicts as JSON lines. Functions stay in
memory, registered under a "python:" spec (`dvpo.user_functions.register_function`).
"""

from __future__ import annotations

import json
from pathlib import Path

from dvpo.distributed import process_state
from dvpo.errors import ConfigError
from dvpo.user_functions import register_function


class Inputs:
    """Where one trainer's in-memory inputs are written: `<output_dir>-inputs/` (beside the run, so that an
    `overwrite` of the run keeps them, and a LoRA model saved by the run can find the base it was trained on)."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(f"{Path(output_dir)}-inputs")

    def model(self, model, processing_class, role: str) -> str:
        """A name or folder as given; a loaded `PreTrainedModel` saved with its tokenizer."""
        if isinstance(model, (str, Path)):
            if processing_class is not None:
                raise ConfigError(f"{role}: processing_class goes with a loaded model; a model named by folder "
                                  f"or id ({model}) brings its own tokenizer")
            return str(model)
        if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
            raise ConfigError(f"{role}: expected a model name, a folder or a transformers PreTrainedModel, "
                              f"got {type(model).__name__}")
        if hasattr(model, "peft_config"):
            raise ConfigError(f"{role}: a PEFT model; merge it first (model.merge_and_unload()) or pass its "
                              "folder, and let lora_r in the config add the adapters this stage trains")
        if processing_class is None:
            raise ConfigError(f"{role}: a loaded model needs its tokenizer: pass processing_class=tokenizer")
        folder = self.root / role
        with process_state().main_process_first():
            if process_state().is_main_process:
                model.save_pretrained(folder)
                processing_class.save_pretrained(folder)
        return str(folder)

    def rows(self, data, role: str) -> str | None:
        """A file, folder or Hub name as given; a `datasets.Dataset` or a list of dicts written as JSON lines."""
        if data is None or isinstance(data, (str, Path)):
            return None if data is None else str(data)
        if hasattr(data, "keys") and hasattr(data, "column_names") and not hasattr(data, "to_list"):
            raise ConfigError(f"{role}: a DatasetDict; pass one of its splits ({', '.join(data.keys())})")
        if hasattr(data, "to_list"):
            data = data.to_list()
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise ConfigError(f"{role}: expected a datasets.Dataset, a list of dicts, or a path; got "
                              f"{type(data).__name__}")
        path = self.root / f"{role}.jsonl"
        with process_state().main_process_first():
            if process_state().is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in data),
                                encoding="utf-8")
        return str(path)


def function_specs(functions) -> list[str]:
    """TRL's `reward_funcs`: one callable or "file.py:name" string, or a list of them, as specs."""
    if functions is None:
        return []
    if callable(functions) or isinstance(functions, str):
        functions = [functions]
    return [register_function(fn) for fn in functions]


def run_folder(value, role: str) -> str | None:
    """A trained scorer as the RL stage reads it: its folder, or the trainer that wrote it."""
    if value is None or isinstance(value, (str, Path)):
        return None if value is None else str(value)
    output_dir = getattr(getattr(value, "args", None), "output_dir", None)
    if output_dir is None:
        raise ConfigError(f"{role}: expected the folder written by `dvpo gvm`/`dvpo rm` or the trainer that "
                          f"wrote it, got {type(value).__name__}")
    return str(output_dir)
