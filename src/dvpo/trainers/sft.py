"""`dvpo sft`: supervised fine-tuning with the loss on completion tokens only.

Tokenisation and masks come from the data layer; the optimisation, checkpointing, resume and
multi-process plumbing come from `transformers.Trainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import Trainer

from dvpo.stage_options import SftConfig
from dvpo.data.collate import SftCollator
from dvpo.data.formats import load_rows
from dvpo.data.tokenize import ensure_pad_token, tokenize_rows
from dvpo.models.loading import load_causal_lm, load_tokenizer
from dvpo.trainers.common import RowRecorder, maybe_lora, training_arguments, whole_weights
from dvpo.trainers.interrupts import StopOnSignal, raise_if_stopped
from dvpo.trainers.metrics import MetricsFileCallback
from dvpo.trainers.run_dir import CHECKPOINTS, mark_complete, start_run

logger = logging.getLogger(__name__)


def run_sft(cfg: SftConfig, callbacks=()) -> Path:
    """The whole stage; `callbacks` are transformers `TrainerCallback`s, added to the stage's own."""
    folder, resume_from = start_run(cfg)
    tokenizer = load_tokenizer(cfg.model)
    ensure_pad_token(tokenizer)
    rows = load_rows(cfg.data, "sft", split=cfg.split)
    features, stats = tokenize_rows(rows, tokenizer, cfg.max_length, source=cfg.data)
    dataset = Dataset.from_list([{"input_ids": f["input_ids"], "response_mask": f["response_mask"], "row": i}
                                 for i, f in enumerate(features)])
    recorder = RowRecorder(folder, SftCollator(tokenizer.pad_token_id))
    model = maybe_lora(load_causal_lm(cfg.model, cfg.dtype), cfg, task_type="CAUSAL_LM")
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, folder, scheduler="cosine"),
        train_dataset=dataset,
        data_collator=recorder,
        callbacks=[StopOnSignal(), MetricsFileCallback(folder, plot_keys=("loss", "learning_rate", "grad_norm")),
                   recorder, *callbacks],
    )
    result = trainer.train(resume_from_checkpoint=resume_from)
    raise_if_stopped(trainer.state, folder / CHECKPOINTS)
    if cfg.lora_r > 0:
        with whole_weights(trainer.model):
            if trainer.is_world_process_zero():
                trainer.model.merge_and_unload().save_pretrained(folder)
    else:
        trainer.save_model(str(folder))  # every process: gathers ZeRO-3 shards; the main one writes
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        mark_complete(folder, stage="sft", rows=len(rows), truncation=vars(stats),
                      train_loss=result.training_loss, steps=result.global_step)
    return folder
