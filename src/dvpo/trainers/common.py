"""Pieces every offline stage shares: TrainingArguments from our options, LoRA wrapping, logging."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from accelerate.utils import gather_object
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback, TrainingArguments

from dvpo.distributed import parameters_held, trainer_device_arguments
from dvpo.trainers.run_dir import CHECKPOINTS
from dvpo.trainers.trackers import report_targets


def training_arguments(cfg, folder: Path, scheduler: str, **overrides) -> TrainingArguments:
    """Our option names mapped onto transformers' TrainingArguments (which bring resume, accelerate, DeepSpeed);
    `scheduler` is the stage's own schedule, which `--lr-scheduler` may replace."""
    chosen = {"auto": scheduler, "constant": "constant_with_warmup"}  # transformers' "constant" skips warm-up
    scheduler = chosen.get(cfg.lr_scheduler, cfg.lr_scheduler)
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and torch.cuda.is_available()
                                        and torch.cuda.is_bf16_supported())
    kwargs = dict(
        output_dir=str(folder / CHECKPOINTS),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=report_targets(cfg.report_to),
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run), not be averaged away
        ddp_find_unused_parameters=False,  # every trained parameter takes part in every step
    )
    kwargs.update(trainer_device_arguments())
    if cfg.optimizer == "adafactor":  # transformers' Adafactor: no relative step, no parameter scaling
        kwargs["optim"] = "adafactor"
    if cfg.gradient_checkpointing:
        kwargs["activation_checkpointing"] = True
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def maybe_lora(model, cfg, task_type: str):
    """Wrap in LoRA adapters when --lora-r > 0 (the paper: r 8, alpha 32, dropout 0.1)."""
    if cfg.lora_r <= 0:
        return model
    return with_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, task_type)


def with_lora(model, rank: int, alpha: int, dropout: float, task_type: str):
    """LoRA adapters on every linear layer; a scalar head ("score") is trained in full (peft's
    modules_to_save), never adapted."""
    head = ["score"] if task_type in ("TOKEN_CLS", "SEQ_CLS") else None
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type=task_type,
                        target_modules="all-linear", exclude_modules=head)
    return get_peft_model(model, config)


@contextlib.contextmanager
def whole_weights(model):
    """Every parameter of `model` whole on every process for the block under DeepSpeed ZeRO-3, which partitions
    them (a save or a LoRA merge on the main process would otherwise read empty shards); a no-op otherwise.
    Gathering is collective: enter it on every process. Forward passes need no gathering: run them on every
    process, as ZeRO-3 fetches the shards layer by layer."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the HTTP client of huggingface_hub and the LLM judge


def write_process_record(folder: Path, entry: dict, world_size: int, is_main: bool) -> None:
    """Gather each process's entry (rank, world size, rows it took) into `processes.json`, by the main process.

    It is the record of how the data was sharded, and the multi-process tests check it: a launch
    that silently runs N copies of a single process shows up as N rank-0 entries.
    """
    entries = gather_object([entry]) if world_size > 1 else [entry]
    if is_main:
        (folder / "processes.json").write_text(json.dumps(sorted(entries, key=lambda e: e["rank"]), indent=1))


class RowRecorder(TrainerCallback):
    """Wraps a collator to note the dataset rows (their `row` column) this process collated."""

    def __init__(self, folder: Path, collator):
        self.folder, self.collator, self.rows = folder, collator, []

    def __call__(self, features: list[dict]):
        self.rows.extend(int(f["row"]) for f in features)
        return self.collator(features)

    def on_train_end(self, args, state, control, **kwargs):
        entry = {"rank": args.process_index, "world_size": args.world_size,
                 "distributed_type": args.distributed_state.distributed_type.value,
                 "parameters_held": parameters_held(kwargs["model"]), "rows": self.rows}
        write_process_record(self.folder, entry, args.world_size, state.is_world_process_zero)
