"""Loading models and tokenizers from a local folder or a Hub id, with safe defaults.

`trust_remote_code` stays off unless the user asks; weights load from safetensors where the
folder has them. A local path that does not exist is reported as such instead of being
sent to the Hub.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it, else fp32 (CPU matmuls are fastest in fp32)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def check_model_path(path: str) -> None:
    """Fail early, and clearly, on a local path that does not exist or lacks model files."""
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    if not looks_local:
        return  # a Hub id: transformers will resolve it (and honour HF_HUB_OFFLINE)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")


def model_reference(path: str) -> str:
    """How a trained model records its base: an absolute path for a local folder, else the Hub id."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    check_model_path(path)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_causal_lm(path: str, dtype: str = "auto", trust_remote_code: bool = False) -> PreTrainedModel:
    check_model_path(path)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=None
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
