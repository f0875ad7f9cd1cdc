"""Pieces every offline stage shares: TrainingArguments from our options, LoRA wrapping, logging."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from dvpo.trainers.run_dir import CHECKPOINTS


def training_arguments(cfg, folder: Path, scheduler: str, **overrides) -> TrainingArguments:
    """Our option names mapped onto transformers' TrainingArguments (which bring resume, accelerate, DeepSpeed)."""
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
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    if cfg.gradient_checkpointing:
        kwargs["activation_checkpointing"] = True
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def maybe_lora(model, cfg, task_type: str):
    """Wrap in LoRA adapters when --lora-r > 0 (the paper: r 8, alpha 32, dropout 0.1)."""
    if cfg.lora_r <= 0:
        return model
    # The scalar head ("score") is trained in full (peft's modules_to_save), never adapted.
    head = ["score"] if task_type in ("TOKEN_CLS", "SEQ_CLS") else None
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        task_type=task_type, target_modules="all-linear", exclude_modules=head)
    return get_peft_model(model, config)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
