"""`dvpo.rate_responses`: rated data for a GVM from a reward function alone (the `dvpo rate` stage, from Python)."""

from __future__ import annotations

from pathlib import Path

from dvpo.api.inputs import Inputs, function_specs
from dvpo.stage_options import RateConfig


def rate_responses(models, prompts, output_file: str | Path, reward_funcs=None, reward_model=None,
                   names=None, **options):
    """Sample `samples` responses per prompt from each model and score them; returns the rated rows
    (prompt, completion, score, policy) as a `datasets.Dataset`, ready for `GVMTrainer(train_dataset=...)`.

    Args:
        models (`str` or `list[str]`): model names or folders whose responses are rated (several policies of
            different quality teach a GVM best).
        prompts (`datasets.Dataset`, `list[dict]` or path): rows with a `prompt`.
        output_file (`str`): the rated JSON lines, appended as they are scored; calling again resumes.
        reward_funcs (callable, "file.py:name", or a list of them): TRL's `reward_funcs` convention.
        reward_model (`str`, *optional*): a reward model folder from `dvpo rm` / `RewardTrainer`.
        names (`list[str]`, *optional*): each model's `policy` name (default: its folder's name).
        **options: any other `dvpo rate` option (`samples`, `max_new_tokens`, `temperature`, `seed`, ...).
    """
    from datasets import Dataset

    from dvpo.data.formats import load_rows
    from dvpo.rate import run_rate

    output_file = Path(output_file)
    models = [str(models)] if isinstance(models, (str, Path)) else [str(m) for m in models]
    prompts_path = Inputs(output_file.with_suffix("")).rows(prompts, "prompts")
    cfg = RateConfig(prompts=prompts_path, model=models, out=str(output_file), names=list(names or []),
                     reward_fn=function_specs(reward_funcs), reward_model=reward_model, **options)
    return Dataset.from_list(load_rows(run_rate(cfg), "rated"))
