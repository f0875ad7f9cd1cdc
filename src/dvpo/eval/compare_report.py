"""The report of `dvpo compare`: the paper's Table 1 (quality), Table 3 (efficiency), Figure 3
(learning curves) and Appendix C (GVM accuracy), as markdown, JSON and PNGs.

Everything here reads what the runs wrote (judge results, metrics.jsonl, completion markers),
so the report can be rebuilt from a finished comparison folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path

import matplotlib
import torch

from dvpo.eval.gvm_accuracy import format_table
from dvpo.trainers.sources import SOURCE_NAMES, SOURCES

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WARMUP_STEPS = 2  # first RL steps left out of the per-step time (allocator and cache warm-up)
ONLINE = SOURCE_NAMES
NAMES = {"sft": "SFT", **{name: entry.display for name, entry in SOURCES.items()}, "dpo": "DPO"}


def _records(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def quality(scores: dict[str, dict[int, dict]]) -> dict:
    """Judge score mean and spread over seeds, and the mean per-seed win rate against SFT."""
    table = {}
    for method, per_seed in scores.items():
        row = _spread([s["mean"] for s in per_seed.values()])
        wins = [s["win_rate"] for s in per_seed.values() if "win_rate" in s]
        if wins:
            row["win_rate_vs_sft"] = statistics.fmean(wins)
        table[method] = row
    return table


def run_efficiency(run: Path) -> dict:
    """Peak memory, median seconds per step (and its split) after warm-up, and the step of the best eval score."""
    records = _records(run / "metrics.jsonl")
    result: dict = {"peak_memory_bytes": max((r.get("peak_memory_bytes", 0) for r in records), default=0)}
    timed = [r for r in records if "time_step" in r][WARMUP_STEPS:]
    for key in ("time_step", "time_generation", "time_forward", "time_update"):
        if timed:
            result[key] = statistics.median(r[key] for r in timed)
    evals = [(r["step"], r["eval_score"]) for r in records if "eval_score" in r]
    if evals:
        result["best_eval_step"] = max(evals, key=lambda point: point[1])[0]
    return result


def efficiency(runs: dict[str, dict[int, Path]], seconds: dict[str, float]) -> dict:
    """Per method, the mean over seeds of each run's figures and its wall-clock training seconds."""
    table = {}
    for method, per_seed in runs.items():
        figures = [run_efficiency(path) for path in per_seed.values()]
        row = {key: statistics.fmean(f[key] for f in figures) for key in figures[0] if all(key in f for f in figures)}
        walls = [seconds[f"seed{seed}-{method}"] for seed in per_seed if f"seed{seed}-{method}" in seconds]
        if walls:
            row["train_seconds"] = statistics.fmean(walls)
        if method == "dpo":
            steps = [json.loads((p / "dvpo_complete.json").read_text()).get("steps") for p in per_seed.values()]
            row["optimizer_steps"] = statistics.fmean(steps)
        table[method] = row
    ppo = table.get("ppo", {})
    for row in table.values():
        for key, ratio in (("peak_memory_bytes", "memory_vs_ppo"), ("time_step", "time_vs_ppo")):
            if key in row and ppo.get(key):
                row[ratio] = row[key] / ppo[key]
    return table


def ordering(table: dict) -> list[str]:
    """The paper's ordering (DVPO about equal to PPO, both above DPO and ReMax), claim by claim, as measured."""
    mean = {m: row["mean"] for m, row in table.items()}
    lines = []
    if "dvpo" in mean and "ppo" in mean:
        ratio = mean["dvpo"] / mean["ppo"]
        verdict = "holds" if ratio >= 0.95 else "does not hold"
        lines.append(f"DVPO within 5% of PPO or above: {verdict} (DVPO/PPO = {ratio:.3f})")
    for top in ("dvpo", "ppo"):
        for below in ("dpo", "remax"):
            if top in mean and below in mean:
                verdict = "holds" if mean[top] > mean[below] else "does not hold"
                lines.append(f"{NAMES[top]} above {NAMES[below]}: {verdict} "
                             f"({mean[top]:.2f} vs {mean[below]:.2f})")
    return lines


def _style_step_axis(ax, title: str) -> None:
    ax.set_xlabel("RL step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def _save(fig, out_png: Path, drawn: bool) -> Path | None:
    """The figure as `out_png` when anything was drawn (None otherwise); closed either way."""
    fig.tight_layout()
    if drawn:
        fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png if drawn else None


def plot_curves(runs: dict[str, dict[int, Path]], out_png: Path) -> Path | None:
    """Figure 3-style: held-out and training-batch judge score per RL step, mean over seeds with min-max band."""
    keys = (("eval_score", "held-out judge score"), ("score", "judge score of the rollout batch"))
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 3.8))
    drawn = False
    for ax, (key, title) in zip(axes, keys):
        for method in (m for m in ONLINE if m in runs):
            curves = [{r["step"]: r[key] for r in _records(p / "metrics.jsonl") if key in r}
                      for p in runs[method].values()]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            per_step = [[c[s] for c in curves] for s in steps]
            line, = ax.plot(steps, [statistics.fmean(v) for v in per_step], label=NAMES[method],
                            marker="o" if key == "eval_score" else None, markersize=3)
            ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.15,
                            color=line.get_color())
            drawn = True
        _style_step_axis(ax, title)
    return _save(fig, out_png, drawn)


def proxy_and_gold(runs: dict[str, dict[int, Path]]) -> dict[str, dict]:
    """Per method, mean over seeds: how much its own scorer's score (`proxy_score`), the second scorer's
    (`second_score`, when the run had `--eval-scorer`) and the judge's score of the rollouts (`score`) rose from
    the first RL step to the last. A proxy that rises while the judge or the second scorer stays or falls is a
    scorer being over-optimised (Gao et al. 2022)."""
    table = {}
    for method in (m for m in ONLINE if m in runs):
        rises = {"proxy": [], "second": [], "gold": []}
        for path in runs[method].values():
            records = [r for r in _records(path / "metrics.jsonl") if "proxy_score" in r and "score" in r]
            if len(records) >= 2:
                rises["proxy"].append(records[-1]["proxy_score"] - records[0]["proxy_score"])
                rises["gold"].append(records[-1]["score"] - records[0]["score"])
                if "second_score" in records[0]:
                    rises["second"].append(records[-1]["second_score"] - records[0]["second_score"])
        if rises["proxy"]:
            table[method] = {f"{key}_rise": statistics.fmean(values) if values else None
                             for key, values in rises.items()}
    return table


def plot_proxy_against_gold(runs: dict[str, dict[int, Path]], out_png: Path) -> Path | None:
    """Each method's proxy (its own scorer's score of its samples) and gold (the judge's) per RL step, as the
    change from the first step, mean over seeds, in the manner of Gao et al. 2022."""
    keys = (("proxy_score", "proxy: the run's own scorer (change from step 1)"),
            ("second_score", "second scorer: --eval-scorer (change from step 1)"),
            ("score", "gold: the judge (change from step 1)"))
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 3.8))
    drawn = False
    for ax, (key, title) in zip(axes, keys):
        for method in (m for m in ONLINE if m in runs):
            curves = []
            for path in runs[method].values():
                records = [r for r in _records(path / "metrics.jsonl") if key in r]
                if records:
                    curves.append({r["step"]: r[key] - records[0][key] for r in records})
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if steps:
                ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], label=NAMES[method])
                drawn = True
        ax.axhline(0.0, color="grey", linewidth=0.8)
        _style_step_axis(ax, title)
    return _save(fig, out_png, drawn)


def _mib(value: float | None) -> str:
    return f"{value / 2**20:.0f}" if value else "—"


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "—"


def format_report(report: dict) -> str:
    q, e = report["quality"], report["efficiency"]
    seeds = report["seeds"]
    lines = [f"# dvpo compare: {', '.join(NAMES[m] for m in report['methods'])} against SFT",
             "", f"Command: `{report['command']}`", f"Machine: {report['machine']}", "",
             f"## Quality (Table 1): held-out judge score, mean ± std over seeds {seeds}", "",
             "| method | judge score | per seed | win rate vs SFT |", "| --- | --- | --- | --- |"]
    for method, row in q.items():
        win = f"{100 * row['win_rate_vs_sft']:.0f}%" if "win_rate_vs_sft" in row else "—"
        lines.append(f"| {NAMES[method]} | {row['mean']:.2f} ± {row['std']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in row['per_seed'])} | {win} |")
    if report["ordering"]:  # its claims need DVPO and PPO, or one of them with DPO or ReMax
        lines += ["", "Paper's ordering on this data:", *[f"- {line}" for line in report["ordering"]]]
    lines += ["",
              "## Efficiency (Table 3): mean over seeds of each run, same machine (how many runs shared it: Settings)", "",
              "| method | peak memory MiB | × PPO | s/step (median) | × PPO | generation / forward / update s "
              "| best held-out step | training s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, row in e.items():
        split = " / ".join(_fmt(row.get(k), ".3f") for k in ("time_generation", "time_forward", "time_update"))
        lines.append(f"| {NAMES[method]} | {_mib(row.get('peak_memory_bytes'))} | {_fmt(row.get('memory_vs_ppo'), '.2f')} "
                     f"| {_fmt(row.get('time_step'), '.3f')} | {_fmt(row.get('time_vs_ppo'), '.2f')} | "
                     f"{split if 'time_step' in row else '—'} | {_fmt(row.get('best_eval_step'), '.0f')} | "
                     f"{_fmt(row.get('train_seconds'), '.0f')} |")
    if "dpo" in e:
        lines.append(f"\nDPO is offline: {e['dpo'].get('optimizer_steps', 0):.0f} optimizer steps on rated pairs, "
                     "no sampling; its per-step time is not comparable and is left out.")
    lines += ["", "## Learning curves (Figure 3)", "", "![learning curves](learning_curves.png)", ""]
    if report.get("proxy_and_gold"):
        lines += ["## Proxy against gold (over-optimisation)", "",
                  "Each run's own scorer (DVPO: the GVM's standardised final value; the others: the reward) against "
                  "the second scorer (the reward model for DVPO, the GVM for the others, standardised alike; — "
                  "without `--second-scorers`, or where the comparison trained none) and the judge, on the "
                  "rollouts, from the first RL step to the last (mean over seeds). A proxy that rises while the "
                  "others do not is a scorer being over-optimised.", "",
                  "| method | proxy rise | second scorer rise | judge rise |", "| --- | --- | --- | --- |",
                  *[f"| {NAMES[m]} | {row['proxy_rise']:+.2f} | {_fmt(row.get('second_rise'), '+.2f')} | "
                    f"{row['gold_rise']:+.2f} |"
                    for m, row in report["proxy_and_gold"].items()],
                  "", "![proxy against gold](proxy_gold.png)", ""]
    if report.get("gvm_accuracy"):
        lines += ["## GVM (Appendix C)", "", format_table(report["gvm_accuracy"])]
    if report.get("rm_accuracy") is not None:
        lines.append(f"Reward model held-out pairwise accuracy: {100 * report['rm_accuracy']:.1f}%\n")
    lines += ["## Settings", "", report["settings"], "",
              "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items())]
    return "\n".join(lines) + "\n"


def command_line(cfg) -> str:
    """`dvpo compare` with every option that differs from its default: the command that made the report."""
    parts = ["dvpo compare"]
    for field in dataclasses.fields(cfg):
        value, default = getattr(cfg, field.name), (field.default_factory() if field.default_factory is not
                                                    dataclasses.MISSING else field.default)
        if value == default or field.name == "overwrite":
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        elif isinstance(value, dict):
            parts.append(f"{flag} '{json.dumps(value)}'")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def write_report(root: Path, cfg, budget, seeds: list[int], scores: dict, runs: dict, gvm_accuracy: dict | None,
                 rm_accuracy: float | None, seconds: dict, settings: str) -> dict:
    table = quality(scores)
    report = {
        "command": command_line(cfg),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "methods": list(cfg.methods), "seeds": seeds, "budget": asdict(budget), "quality": table,
        "ordering": ordering(table), "efficiency": efficiency(runs, seconds), "gvm_accuracy": gvm_accuracy,
        "rm_accuracy": rm_accuracy, "scores": {m: {str(s): v for s, v in per.items()} for m, per in scores.items()},
        "seconds": seconds,
        "settings": settings,
        "proxy_and_gold": proxy_and_gold(runs),
    }
    plot_curves({m: r for m, r in runs.items() if m in ONLINE}, root / "learning_curves.png")
    plot_proxy_against_gold({m: r for m, r in runs.items() if m in ONLINE}, root / "proxy_gold.png")
    (root / "report.json").write_text(json.dumps(report, indent=2))
    text = format_report(report)
    (root / "report.md").write_text(text)
    print(text)
    return report
