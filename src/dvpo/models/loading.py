"""Loading models and tokenizers from a local folder or a Hub id, with safe defaults.

Safe defaults: `trust_remote_code` stays off unless a caller passes it (no `dvpo` option does),
so code shipped in a model folder (`auto_map`) is never run; weights load from safetensors
where the folder has them, and a pickled `pytorch_model.bin` only with
`torch.load(weights_only=True)`, which refuses anything but tensors. Nothing is downloaded
except the Hub model the user named.

Hostile folders fail early and in one line naming the folder and what is missing or wrong
(`ModelError` / `FileNotFoundError`, exit code 2 through `dvpo.errors.user_facing_errors`):
a local path that does not exist is reported as such instead of being sent to the Hub, and a
Hub id that is not cached while `HF_HUB_OFFLINE` is set is reported before any load is tried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dvpo.errors import ModelError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Any one of these makes a folder's weights loadable (sharded checkpoints come with an index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Any one of these is the start of a tokenizer (the vocabulary files vary by tokenizer family).
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
TOKENIZER_FILES = ("tokenizer_config.json", *VOCAB_FILES)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' means bf16 on a GPU that supports it, else fp32 (CPU matmuls are fastest in fp32)."""
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def _looks_local(path: str) -> bool:
    """Hub ids are `name` or `owner/name`; a path of any other shape is local even when it does not exist."""
    return (os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or path.count("/") > 1
            or (os.sep != "/" and os.sep in path))


def check_model_path(path: str, weights: bool = True, tokenizer: bool = False,
                     trust_remote_code: bool = False) -> None:
    """Fail early, and clearly, on a model that cannot load; returns None when it looks loadable.

    A local folder must exist and hold `config.json` (valid JSON), and, as asked, weights
    (`WEIGHT_FILES`) and tokenizer files (`TOKENIZER_FILES`). A config that maps to custom code
    (`auto_map`) is not run: the built-in class of its `model_type` is used (logged), or, when
    transformers has none, it is refused here. A Hub id is checked only while offline: it
    must then be in the local Hugging Face cache, since nothing can be downloaded.
    """
    if not _looks_local(path):
        _check_hub_id(path)
        return  # online, transformers resolves the id (the one download the user asked for)
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model folder {path} has no config.json: is it a Hugging Face model folder?")
    try:
        config_dict = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model folder {path}: config.json is not valid JSON ({error})") from None
    if weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model folder {path} has no weights: none of {', '.join(WEIGHT_FILES)} "
                                "(was it saved completely?)")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"model folder {path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} "
                                "(save the tokenizer beside the model with tokenizer.save_pretrained)")
    if isinstance(config_dict, dict) and config_dict.get("auto_map") and not trust_remote_code:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = config_dict.get("model_type")
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ModelError(f"model folder {path} needs custom code (config.json has auto_map and model_type "
                             f"{model_type!r} is not built into transformers), and dvpo never runs code from a "
                             "model folder (trust_remote_code is off)")
        logger.warning("%s: config.json maps to custom code (auto_map); it is not run (trust_remote_code is "
                       "off), the built-in %r classes are used", path, model_type)


def _check_hub_id(name: str) -> None:
    """Offline, a Hub id must already be cached; else say so now rather than as a connection error."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not even a valid repo id (huggingface_hub's HFValidationError)
        raise FileNotFoundError(f"model {name!r} is neither a local folder nor a valid Hub id") from None
    if not isinstance(cached, str):
        raise ModelError(f"model {name!r} is not a local folder and not in the Hugging Face cache, and "
                         "HF_HUB_OFFLINE is set, so it cannot be downloaded: pass a local model folder, "
                         "or unset HF_HUB_OFFLINE to download it")


@contextlib.contextmanager
def loading_errors(what: str, path: str):
    """Turn a failure inside `from_pretrained` into one ModelError line naming `path` (cause chained)."""
    try:
        yield
    except (ModelError, FileNotFoundError):
        raise
    except Exception as error:  # whatever broke, it broke on this folder's files; -v logs the traceback
        text = " ".join(str(error).split())
        problem = f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"
        if type(error).__name__ == "UnpicklingError":
            found = re.search(r"unsupported GLOBAL (\S+)", text)
            problem = (f"its pickled weights hold more than tensors ({found.group(1) if found else 'not a tensor'}); "
                       "pickles are loaded with torch.load(weights_only=True) so that no code in them runs: "
                       "convert the weights to safetensors where you trust them")
        elif "auto_map" in text or "trust_remote_code" in text:
            problem += " (it needs custom code, and dvpo never runs code from a model folder)"
        elif what == "tokenizer" and _looks_local(path):
            folder = Path(path).expanduser()
            if not any((folder / name).is_file() for name in VOCAB_FILES):
                problem = f"it has no vocabulary file (none of {', '.join(VOCAB_FILES)}); {problem}"
        raise ModelError(f"cannot load the {what} from {path}: {problem}") from error


def resolve_model(path: str) -> str:
    """The folder behind a name of dvpo's model catalog (`dvpo models get`, fetched on first use); a folder
    or Hub id unchanged. Every loader calls this first, so each stage takes a catalog name as its model."""
    from dvpo.models.catalog import resolve_model_name

    return resolve_model_name(path)


def model_reference(path: str) -> str:
    """How a trained model records its base: a catalog model's name (fetched on first use wherever the folder is
    loaded), an absolute path for another local folder (`StageMeta` adds one relative to the trained folder, so a
    copied run tree still loads), else the Hub id."""
    from dvpo.models.catalog import catalog_name_of

    path = resolve_model(path)
    if not Path(path).exists():
        return path
    return catalog_name_of(path) or str(Path(path).resolve())


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or Hub id; a missing chat template is a logged fallback.

    Without a chat template, a string prompt and its response are joined as plain text
    (prompt, response, eos; see `dvpo.data.tokenize.encode_example`), the same way at training
    and at sampling time; conversational rows then fail with a ModelError naming the folder.
    """
    path = resolve_model(path)
    check_model_path(path, weights=False, tokenizer=True, trust_remote_code=trust_remote_code)
    with loading_errors("tokenizer", path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tokenizer.chat_template:
        logger.warning("the tokenizer of %s has no chat template: a prompt and its response are joined as plain "
                       "text (prompt, response, eos); conversational rows need a template", path)
    return tokenizer


def load_causal_lm(path: str, dtype: str = "auto", trust_remote_code: bool = False,
                   fsdp: bool = False) -> PreTrainedModel:
    """Safetensors when the folder has them; a pickled checkpoint only with weights_only=True.
    With `fsdp`, sharded over the processes as it loads (see `dvpo.distributed.fsdp_loading`)."""
    from dvpo.distributed import fsdp_loading

    path = resolve_model(path)
    check_model_path(path, trust_remote_code=trust_remote_code)
    folder = Path(path).expanduser()
    if _looks_local(path) and not any((folder / n).is_file() for n in WEIGHT_FILES if n not in PICKLE_WEIGHTS):
        logger.warning("%s has pickled weights only; loading them with torch.load(weights_only=True)", path)
    with loading_errors("model", path):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=None,
            weights_only=True, **fsdp_loading(fsdp),
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
