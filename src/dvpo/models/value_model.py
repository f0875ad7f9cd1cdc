"""The global value model (GVM): a causal-LM backbone with a scalar value head on every position.

It is `AutoModelForTokenClassification` with one label — the same backbone, a linear head per
token, saved and loaded in Hugging Face format (or as a LoRA adapter). The logit at the
position of response token y_t, which sees [tau; x; y_<=t], is Q(tau, s_t, a_t); the logit at
the last prompt token is V(s_1).

A saved GVM folder holds `model/` (full model or adapter, plus the tokenizer) and
`dvpo_gvm.json` (the options it was trained with and the value/score statistics).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

from dvpo.algos.masked import standardize
from dvpo.data.tau import conditioned_on, sample_tau_sets
from dvpo.data.tokenize import TruncationStats, encode_example, ensure_pad_token
from dvpo.errors import ModelError
from dvpo.models.frozen import FrozenScorer, StageMeta, active_adapter
from dvpo.models.loading import (check_model_path, default_device, loading_errors, model_reference, resolve_dtype,
                                 resolve_model)

GVM_META = "dvpo_gvm.json"
MODEL_SUBDIR = "model"


def build_value_model(path: str, dtype: str = "auto", fsdp: bool = False):
    """A token-value model whose backbone comes from a causal LM folder; the head starts fresh.
    With `fsdp`, sharded over the processes as it loads (PPO's critic under `dvpo rl --fsdp`)."""
    from dvpo.distributed import fsdp_loading

    path = resolve_model(path)
    check_model_path(path)
    with loading_errors("model", path):
        config = AutoConfig.from_pretrained(path, num_labels=1)
        config.classifier_dropout = 0.0  # dropout before a regression head only adds noise to the targets
        model, info = AutoModelForTokenClassification.from_pretrained(
            path, config=config, dtype=resolve_dtype(dtype), output_loading_info=True, **fsdp_loading(fsdp))
    zero_head(model, [key for key in info["missing_keys"] if key.startswith("score.")])
    return model


def zero_head(model, missing: list[str]) -> None:
    """Start the head's parameters that the folder lacks at exactly zero: every value is 0 until training gives
    it signal, so no TD target is ever built from the random spread of an untrained head. A reward model's
    folder holds the head's weight but no bias (its head has none): the weight is kept, the bias starts at 0."""
    with torch.no_grad():
        for name, parameter in model.score.named_parameters():
            if f"score.{name}" in missing and not parameter.is_meta:
                parameter.zero_()


def value_positions(response_mask: list[int]) -> tuple[int, int]:
    """(start, length) of the value slots of one row: its last prompt token, then every response token.

    A ValueError when the row has no response token, or no prompt token before its response
    (slot 0, V(s_1), lives on the last prompt token; `truncate` keeps it with max_length >= 2).
    """
    mask = [int(m) for m in response_mask]
    if 1 not in mask:
        raise ValueError("a row without any response token has no value slots")
    first = mask.index(1)
    if first == 0:
        raise ValueError("a row whose response starts at its first token has no prompt token for V(s_1); "
                         "keep at least the last prompt token (truncate does so with max_length >= 2)")
    return first - 1, sum(mask) + 1


def gather_values(logits: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row value slots as a right-padded [B, T+1] tensor and its mask (slot 0 is V(s_1))."""
    width = int(lengths.max())
    offsets = torch.arange(width, device=logits.device)
    mask = offsets[None, :] < lengths[:, None]
    index = (starts[:, None] + offsets[None, :]).clamp(max=logits.shape[1] - 1)
    values = logits.gather(1, index) * mask
    return values, mask.to(logits.dtype)


@dataclass
class GvmMeta(StageMeta):
    """What the policy stage needs to use a GVM exactly as it was trained."""

    FILE: ClassVar[str] = GVM_META

    base_model: str
    lora: bool
    tau: bool
    gamma: float
    td_lambda: float
    value_normalization: str            # "batch", "batch-predictions" or "none" (how it was trained)
    value_mean: float = 0.0             # statistics of raw predicted values on the training data
    value_std: float = 1.0
    score_mean: float = 0.0             # z-scoring of the offline scores ("none": 0 and 1)
    score_std: float = 1.0
    max_length: int = 512
    tau_pairs: int = 1                  # (prompt, response) pairs of the acting policy in tau, when tau is on
    validation_accuracy: float | None = None  # pairwise, on the validation split that picked it (None: no split)


class GlobalValueModel(FrozenScorer):
    """A frozen, loaded GVM: scores (tau, prompt, response) triples into per-token values."""

    meta: GvmMeta

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """Raw values mapped with the stored statistics (the paper's normalised Q)."""
        return standardize(values, self.meta.value_mean, self.meta.value_std)

    @torch.no_grad()
    def slot_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, starts: torch.Tensor,
                    lengths: torch.Tensor, normalized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T+1] values of already tokenised inputs: V(s_1), then Q at each response token."""
        values, mask, _ = self.slots_and_row_moments(input_ids, attention_mask, starts, lengths)
        return (self.normalize(values) * mask if normalized else values), mask

    @torch.no_grad()
    def slots_and_row_moments(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, starts: torch.Tensor,
                              lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw slot values [B, T+1], their mask, and each row's (mean, unbiased variance) [B, 2] of the values at
        all its positions, prompt included: the statistics the authors' code whitens values with."""
        with self.scope():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()
        values, mask = gather_values(logits, starts, lengths)
        real = attention_mask.to(logits.dtype)
        count = real.sum(dim=1)
        mean = (logits * real).sum(dim=1) / count
        var = (((logits - mean[:, None]) ** 2) * real).sum(dim=1) / (count - 1).clamp(min=1)
        return values, mask, torch.stack([mean, var], dim=1)

    def encode(self, prompt, response, tau: list[tuple] | None = None) -> tuple[list[int], int, int, str]:
        """Token ids of [tau; prompt; response], its value slots and what truncation cut; tau (a list of
        (prompt, response) pairs) is dropped when the GVM was trained without it."""
        pairs = list(tau or []) if self.meta.tau else []
        ids, mask, what = self.fit(*encode_example(self.tokenizer, conditioned_on(prompt, pairs), response))
        start, length = value_positions(mask)
        return ids, start, length, what

    def score(self, prompts: list, responses: list, tau_prompts: list | None = None,
              tau_responses: list | None = None, normalized: bool = True, batch_size: int = 32,
              taus: list[list[tuple]] | None = None) -> list[torch.Tensor]:
        """Per response: a tensor of its token values Q_1..Q_T (V(s_1) left out).

        tau per row: one pair as `tau_prompts[i]`, `tau_responses[i]` (None: no tau), or several as
        `taus[i]`, a list of (prompt, response) pairs.
        """
        n = len(prompts)
        if taus is None:
            taus = [[(p, r)] if p is not None else [] for p, r in zip(tau_prompts or [None] * n,
                                                                        tau_responses or [None] * n)]
        results: list[torch.Tensor] = []
        cut = TruncationStats()
        for begin in range(0, n, batch_size):
            encoded = [self.encode(*args) for args in zip(prompts[begin:begin + batch_size],
                                                          responses[begin:begin + batch_size],
                                                          taus[begin:begin + batch_size])]
            for e in encoded:
                cut.add(e[3])
            ids, attention = self.padded([e[0] for e in encoded])
            starts = torch.tensor([e[1] for e in encoded], device=self.device)
            lengths = torch.tensor([e[2] for e in encoded], device=self.device)
            values, _ = self.slot_values(ids, attention, starts, lengths, normalized)
            results += [values[i, 1:lengths[i]].cpu() for i in range(len(encoded))]
        cut.log("GVM scoring", self.meta.max_length)
        return results

    def final_values(self, prompts: list, responses: list[str], how: str = "last") -> torch.Tensor:
        """[N] each response's standardised value at its last token (or, `how="mean"`, the mean over its
        tokens), tau (when the GVM was trained with it) drawn among the other responses, as on rollouts: a GVM's
        score of whole samples."""
        picks = (sample_tau_sets(prompts, [None] * len(prompts), 0, self.meta.tau_pairs) if self.meta.tau
                 else [[] for _ in prompts])
        values = self.score(list(prompts), list(responses),
                            taus=[[(prompts[j], responses[j]) for j in pick] for pick in picks])
        return torch.tensor([float(v[-1] if how == "last" else v.mean()) if len(v) else 0.0 for v in values])


def value_model_around(backbone, base_path: str):
    """A token-value model whose decoder IS `backbone` (shared, not copied) and whose head starts fresh.

    The model is built on the meta device, so no second decoder is ever allocated; the decoder is
    then swapped in and a real head added (a LoRA GVM's adapter file holds the trained head).
    """
    config = AutoConfig.from_pretrained(resolve_model(base_path), num_labels=1)  # a catalog name, a folder, a Hub id
    config.classifier_dropout = 0.0
    with torch.device("meta"):
        shell = AutoModelForTokenClassification.from_config(config)
    setattr(shell, shell.base_model_prefix, backbone)
    weight = next(backbone.parameters())
    shell.score = torch.nn.Linear(config.hidden_size, 1, device=weight.device, dtype=weight.dtype)
    if any(p.is_meta for p in shell.parameters()):
        raise ModelError(f"cannot share the backbone of {base_path}: its value model has parts besides the decoder "
                         "and the `score` head")
    return shell


def shares_backbone(folder: str | Path, base: str) -> bool:
    """Whether a GVM is a LoRA adapter on `base` itself, so it can run on `base`'s loaded decoder."""
    meta = GvmMeta.load(Path(folder)) if (Path(folder) / GVM_META).is_file() else None
    return bool(meta and meta.lora and meta.base_model == model_reference(base))


def load_value_model(folder: str | Path, device: str | torch.device | None = None, dtype: str = "auto",
                     backbone=None, backbone_adapter: str | None = None) -> GlobalValueModel:
    """Load a GVM saved by `dvpo gvm` in one call, frozen and ready to score.

    With `backbone` — the decoder of a model loaded from the GVM's base (see `shares_backbone`) —
    a LoRA GVM runs on that decoder instead of a second copy: its adapter is injected there, and
    the base model's own forward must then run with the adapter off (`disable_adapter()`). When the
    decoder already carries a trained LoRA adapter (`backbone_adapter`, a LoRA policy's), the GVM's is
    added beside it as "gvm": that adapter stays the active one, and the GVM's forwards switch to theirs.
    """
    folder = Path(folder)
    if not (folder / GVM_META).is_file():
        raise FileNotFoundError(f"{folder} is not a GVM folder (no {GVM_META}); train one with `dvpo gvm`")
    meta = GvmMeta.load(folder)
    model_dir = folder / MODEL_SUBDIR
    if not meta.lora:
        check_model_path(str(model_dir), tokenizer=True)
    with loading_errors("value model", str(model_dir)):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)  # saved by `dvpo gvm` beside the model or adapter
        ensure_pad_token(tokenizer)
        if meta.lora:
            from peft import PeftModel

            base = build_value_model(meta.base_model, dtype) if backbone is None else \
                value_model_around(backbone, meta.base_model)
            name = "gvm" if backbone_adapter else "default"
            model = PeftModel.from_pretrained(base, str(model_dir), adapter_name=name)
        else:
            model = AutoModelForTokenClassification.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype))
    if not backbone_adapter:
        return GlobalValueModel(model.to(device or default_device()), tokenizer, meta)
    gvm = GlobalValueModel(model.to(device or default_device()), tokenizer, meta,
                           scope=functools.partial(active_adapter, backbone, "gvm", backbone_adapter))
    for layer in (m for m in backbone.modules() if isinstance(m, BaseTunerLayer)):
        layer.set_adapter(backbone_adapter)  # active and trainable again: loading and freezing the GVM took both
    return gvm
