"""README.md in the Hugging Face Hub's model-card format, written into every finished stage's folder.

Front matter (huggingface_hub's `ModelCardData`: base model, library, tags) that the Hub reads, then what a
reader needs to judge the model: stage and algorithm, the data and its size, the final metrics, the metrics
plot, the resolved config, what the model is not, and the paper's citation for DVPO.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

STAGE_TITLES = {"sft": "supervised fine-tuning", "gvm": "a global value model (DVPO's frozen scorer)",
                "rm": "a reward model", "dpo": "DPO", "rl": "online RL"}
DATA_OPTIONS = ("data", "prompts", "eval_data", "eval_prompts")
BASE_OPTIONS = ("model", "policy")
DVPO_RUNS = {"gvm", "dvpo"}  # the stage or algorithm of a run that cites the paper
DVPO_CITATION = """@article{huang2025dvpo,
  title   = {Decoupled Value Policy Optimization with Global Value Guidance},
  author  = {Huang, Chenghua and Wang, Lu and Yang, Fangkai and Zhao, Pu and Li, Zhixu and Lin, Qingwei and
             Zhang, Dongmei and Rajmohan, Saravan and Zhang, Qi},
  journal = {arXiv preprint arXiv:2502.16944},
  year    = {2025}
}"""


def what_it_is_not(base: str) -> str:
    """The caveat a reader needs about the starting point: a lab model knows only the lab."""
    base_path = Path(base)
    if (base_path / "dvpo_init.json").is_file():
        return ("A model of a few million parameters trained from scratch on dvpo's synthetic lab (short digit "
                "tasks). It knows nothing else: it is for testing training methods, not for use.")
    if (base_path / "dvpo_provenance.json").is_file():
        provenance = json.loads((base_path / "dvpo_provenance.json").read_text())
        return (f"Its base was dequantised from a quantised GGUF file ({provenance.get('quantization', 'GGUF')}), "
                "so it is not the original weights; what it was trained on here is listed below.")
    return "Not evaluated beyond the metrics below; check it on your own task before use."


def write_model_card(folder: Path, summary: dict) -> Path:
    """README.md from the run's saved options (dvpo_config.yaml) and its completion summary."""
    config = yaml.safe_load((folder / "dvpo_config.yaml").read_text()) or {}
    stage, algo = summary.get("stage", ""), summary.get("algo")
    base = next((str(config[key]) for key in BASE_OPTIONS if config.get(key)), "")
    tags = ["dvpo", stage] + ([algo] if algo else []) + (["rlhf"] if stage in ("gvm", "rm", "rl", "dpo") else [])
    data = ModelCardData(base_model=base or None, library_name="transformers", tags=tags)
    title = f"{algo.upper()} ({STAGE_TITLES[stage]})" if algo else STAGE_TITLES.get(stage, stage)
    datasets = [f"- `{key}`: {config[key]}" for key in DATA_OPTIONS if config.get(key)]
    sizes = {k: v for k, v in summary.items() if k in ("rows", "pairs", "validation_rows", "steps", "pairs_dropped")}
    metrics = {k: v for k, v in summary.items() if k not in sizes and k not in ("stage", "algo", "finished_at")}
    lines = [f"# {folder.name}: {title}", "", f"Trained with dvpo (`dvpo {stage}`) from `{base}`, "
             f"finished {summary.get('finished_at', '')}.", "", "## What it is not", "", what_it_is_not(base), "",
             "## Data", "", *datasets, *(f"- {k}: {v}" for k, v in sizes.items()), "", "## Final metrics", "",
             "```json", json.dumps(metrics, indent=2, default=str), "```", ""]
    if (folder / "metrics.png").is_file():
        lines += ["![metrics during training](metrics.png)", ""]
    lines += ["## Config", "", "The resolved options (`dvpo_config.yaml`; `dvpo <stage> --config` repeats the run):",
              "", "```yaml", yaml.safe_dump(config, sort_keys=False).strip(), "```", ""]
    if DVPO_RUNS & {stage, algo}:
        lines += ["## Citation", "", "```bibtex", DVPO_CITATION, "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(folder / "README.md")
    return folder / "README.md"
