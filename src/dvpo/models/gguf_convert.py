"""A GGUF file as a plain Hugging Face folder (float32 safetensors, tokenizer, chat template).

transformers reads GGUF through the `gguf` package and dequantises every tensor as it loads, but a
model loaded that way keeps a GGUF quantisation config and refuses `save_pretrained`. So the
dequantised weights are moved into a model of the same class built from the config without it,
which saves and loads like any other folder.

A conversion is written into a temporary folder beside the target and renamed into place only
when complete, so a failure or an interrupt never leaves a half-written model where a later
run would find it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from dvpo.errors import ModelError

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "dvpo_provenance.json"
GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: Path) -> None:
    """A readable file that starts with GGUF's magic; else one ModelError line naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


@contextlib.contextmanager
def staged_folder(target: Path):
    """A fresh temporary folder beside `target`, renamed to `target` when the block succeeds and removed
    when it fails; if another process finished `target` meanwhile, its copy is kept and ours dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        yield staging
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / PROVENANCE_FILE).is_file():
                raise
            logger.info("%s was written by another process meanwhile; keeping it", target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def gguf_metadata(path: Path) -> dict:
    """What the file says of itself: its quantisation (llama.cpp's file type), architecture and license."""
    from gguf import GGUFReader, LlamaFileType

    fields = GGUFReader(path).fields
    found = {}
    for key, name in (("general.architecture", "architecture"), ("general.license", "license"),
                      ("general.name", "gguf_name")):
        if key in fields:
            found[name] = fields[key].contents()
    if "general.file_type" in fields:
        code = int(fields["general.file_type"].contents())
        with contextlib.suppress(ValueError):
            found["quantization"] = LlamaFileType(code).name.removeprefix("MOSTLY_")
    return found


def convert_gguf(gguf_path: str | Path, out: str | Path, provenance: dict | None = None) -> Path:
    """Write the model and tokenizer of `gguf_path` to the folder `out` (which must not exist yet), with
    `dvpo_provenance.json` recording where the weights came from; returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path).resolve(), Path(out)
    check_gguf_file(gguf_path)
    if out.exists():
        raise ModelError(f"{out} already exists; choose a new --out folder or remove it")
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("reading %s (dequantising to float32)", gguf_path)
    try:
        metadata = gguf_metadata(gguf_path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # the gguf reader raises many kinds on a cut or corrupt file
        text = " ".join(str(error).split())[:200]
        raise ModelError(f"cannot convert {gguf_path}: {type(error).__name__}: {text} (a cut or corrupt download, "
                         "or an architecture transformers cannot read from GGUF)") from error
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    config.architectures = [type(loaded).__name__]
    plain = type(loaded)(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [key for key in missing if not (config.tie_word_embeddings and key == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"cannot convert {gguf_path}: its tensors do not match {type(loaded).__name__} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    plain.tie_weights()
    del loaded
    record = {"gguf_file": name, **metadata, "dequantized_to": "float32",
              "note": "weights dequantised from the GGUF's quantisation, so not the original release's weights",
              **(provenance or {})}
    with staged_folder(out) as staging:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    logger.info("wrote %s: %s, %.1fM parameters", out, type(plain).__name__,
                sum(p.numel() for p in plain.parameters()) / 1e6)
    return out


def run_convert_gguf(cfg) -> None:
    """`dvpo models convert-gguf FILE --out DIR`."""
    convert_gguf(cfg.file, cfg.out, {"source": str(Path(cfg.file).resolve())})
