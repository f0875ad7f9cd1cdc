"""`dvpo eval gvm-tokens`: the paper's Appendix B view — each response token coloured by its value."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors  # noqa: E402

from dvpo.data.formats import load_rows
from dvpo.data.tokenize import encode_example
from dvpo.eval.gvm_accuracy import token_values
from dvpo.models.value_model import load_value_model

logger = logging.getLogger(__name__)
COLORMAP = "RdYlGn"


def _response_tokens(tokenizer, prompt, completion) -> list[str]:
    ids, mask = encode_example(tokenizer, prompt, completion)
    return [tokenizer.decode([i]) for i, m in zip(ids, mask) if m]


def render_html(items: list[dict], norm: colors.Normalize) -> str:
    cmap = plt.get_cmap(COLORMAP)
    blocks = []
    for item in items:
        spans = "".join(
            f'<span title="{value:.3f}" style="background:{colors.to_hex(cmap(norm(value)))}">'
            f"{html.escape(token) or '&nbsp;'}</span>"
            for token, value in zip(item["tokens"], item["values"]))
        score = f" (score {item['score']:.2f})" if item.get("score") is not None else ""
        blocks.append(f"<div class='row'><div class='prompt'>{html.escape(str(item['prompt']))}{score}</div>"
                      f"<div class='response'>{spans}</div></div>")
    style = ("body{font-family:monospace} .row{margin:1em 0} .prompt{color:#555} "
             ".response span{padding:2px 1px;white-space:pre}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>GVM token values</title>"
            f"<style>{style}</style></head><body><h1>GVM token values (normalised; hover for the number)</h1>"
            + "".join(blocks) + "</body></html>")


def render_png(items: list[dict], norm: colors.Normalize, path: Path) -> None:
    width = max(len(item["tokens"]) for item in items)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * width), 0.6 * len(items) + 1))
    cmap = plt.get_cmap(COLORMAP)
    for row, item in enumerate(items):
        for col, (token, value) in enumerate(zip(item["tokens"], item["values"])):
            ax.add_patch(plt.Rectangle((col, row), 1, 1, color=cmap(norm(value))))
            ax.text(col + 0.5, row + 0.5, token.strip() or "␣", ha="center", va="center", fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(len(items), 0)
    ax.set_yticks([r + 0.5 for r in range(len(items))],
                  [str(item["prompt"])[:28] for item in items], fontsize=7)
    ax.set_xticks([])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="normalised value")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_gvm_tokens(cfg) -> tuple[Path, Path]:
    """CLI entry: writes OUT.html and OUT.png for the first --rows rows of --data."""
    gvm = load_value_model(cfg.gvm)
    rows = load_rows(cfg.data, "generations")
    values = token_values(gvm, rows, cfg.seed)[: cfg.rows]
    items = [{"prompt": r["prompt"], "score": r.get("score"), "values": v.tolist(),
              "tokens": _response_tokens(gvm.tokenizer, r["prompt"], r["completion"])}
             for r, v in zip(rows, values)]
    bound = max(1e-6, max(abs(x) for item in items for x in item["values"]))
    norm = colors.Normalize(vmin=-bound, vmax=bound)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html_path, png_path = out.with_suffix(".html"), out.with_suffix(".png")
    html_path.write_text(render_html(items, norm), encoding="utf-8")
    render_png(items, norm, png_path)
    print(f"wrote {html_path} and {png_path}")
    return html_path, png_path
