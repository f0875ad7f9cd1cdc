"""Hostile input through the user-facing entry point (`dvpo.cli.main`), and the safe defaults.

Each case asserts one clear line on stderr (exit code 2, no traceback) naming the file, line
and field or the model folder, and that the output left behind does not look complete: no
`dvpo_complete.json` in a training folder, no output file from `generate`. Fallbacks
(truncation, pad = eos, no chat template, auto_map ignored, pickled weights) are asserted to
be logged and to let the run finish. Property tests cover the data layer; GAE and TD targets
against a loop reference are in test_algos.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvpo.cli import main
from dvpo.data.formats import KINDS, load_rows
from dvpo.errors import DataError
from dvpo.data.jsonl import write_jsonl
from dvpo.data.tokenize import truncate_prompts
from dvpo.errors import ModelError
from dvpo.models.loading import check_model_path
from dvpo.trainers.run_dir import COMPLETE_MARKER

SRC = Path(__file__).resolve().parents[1] / "src" / "dvpo"


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run `dvpo ARGV`; returns (exit code, the `dvpo: error:` line or '')."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dvpo: error:")]
    assert len(lines) <= 1
    return code, lines[0] if lines else ""


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def _model_copy(tiny_model: Path, tmp_path: Path, name: str = "model") -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model, folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# --- bad data: file:line:field, exit 2, nothing complete left behind ----------------------

SFT = '{"prompt": "sort 3 1 2", "completion": "1 2 3"}'
RATED = '{"prompt": "sort 3 1 2", "completion": "1 2 3", "score": 1.5, "policy": "careful"}'
PROMPT = '{"prompt": "sort 3 1 2"}'

# stage, lines of the data file, line and field the error names (None: the row as a whole)
BAD_DATA = {
    "malformed json": ("sft", [SFT, SFT, '{"prompt": "a", "completion": '], 3, None, "malformed JSON"),
    "trailing garbage": ("sft", [SFT, SFT, SFT + " x"], 3, None, "malformed JSON"),
    "row not an object": ("sft", [SFT, '["a", "b"]'], 2, None, "expected a JSON object"),
    "score is a string": ("gvm", [RATED, '{"prompt": "a", "completion": "b", "score": "high"}'], 2, "score",
                          "must be a finite number, got str"),
    "score is NaN": ("gvm", [RATED, RATED, '{"prompt": "a", "completion": "b", "score": NaN}'], 3, "score",
                     "must be a finite number, got nan"),
    "score is Infinity": ("gvm", ['{"prompt": "a", "completion": "b", "score": Infinity}'], 1, "score",
                          "must be a finite number, got inf"),
    "score is -Infinity": ("gvm", [RATED, '{"prompt": "a", "completion": "b", "score": -1e999}'], 2, "score",
                           "must be a finite number, got -inf"),
    "prompt is a number": ("sft", [SFT, '{"prompt": 3, "completion": "b"}'], 2, "prompt",
                           "must be a string or a list of messages, got int"),
    "completion is a dict": ("sft", ['{"prompt": "a", "completion": {"text": "b"}}'], 1, "completion",
                             "got dict"),
    "policy is a number": ("gvm", [RATED, RATED.replace('"careful"', "7")], 2, "policy", "must be a string"),
    "empty prompt": ("sft", [SFT, '{"prompt": "", "completion": "b"}'], 2, "prompt", "must not be empty"),
    "whitespace prompt": ("generate", [PROMPT, '{"prompt": " \\n\\t"}'], 2, "prompt", "must not be empty"),
    "empty completion": ("sft", [SFT, SFT, '{"prompt": "a", "completion": ""}'], 3, "completion",
                         "must not be empty"),
    "empty rated completion": ("gvm", ['{"prompt": "a", "completion": " ", "score": 1}'], 1, "completion",
                               "must not be empty"),
    "empty message list": ("generate", ['{"prompt": []}'], 1, "prompt", "non-empty list"),
    "missing field": ("gvm", [RATED, '{"prompt": "a", "completion": "b"}'], 2, "score", "missing"),
    "not utf-8": ("sft", [SFT, b'{"prompt": "caf\xe9", "completion": "b"}'], 2, None, "not valid UTF-8"),
    "utf-16 file": ("generate", [PROMPT.encode("utf-16")], 1, None, "not valid UTF-8"),
}


@pytest.mark.parametrize(("stage", "lines", "line", "field", "problem"), BAD_DATA.values(), ids=BAD_DATA.keys())
def test_bad_data_is_one_clear_line_and_leaves_nothing_complete(tiny_model, tmp_path, capsys, stage, lines, line,
                                                                 field, problem):
    data = _write_lines(tmp_path / "data.jsonl", lines)
    out = tmp_path / ("out.jsonl" if stage == "generate" else "run")
    flag = "--prompts" if stage == "generate" else "--data"
    argv = [stage, "--model", tiny_model, flag, data, "--out", out]
    code, error = _cli(argv + ([] if stage == "generate" else ["--max-steps", "1"]), capsys)
    assert code == 2
    where = f"dvpo: error: {data}:{line}: " + ("" if field is None else f"field '{field}': ")
    assert error.startswith(where), error
    assert problem in error
    if stage == "generate":
        assert not out.exists() and not list(tmp_path.glob(".out.jsonl.tmp*"))
    else:
        assert not (out / COMPLETE_MARKER).exists()


def test_generated_completion_may_be_empty_but_is_still_checked(tmp_path):
    """Documented exception: a model may generate an empty response, so generations allow it."""
    path = _write_lines(tmp_path / "gen.jsonl", ['{"prompt": "a", "completion": ""}',
                                                 '{"prompt": "a", "completion": "", "score": NaN}'])
    with pytest.raises(DataError, match=r"gen.jsonl:2: field 'score'"):
        load_rows(path, "generations")


def test_missing_data_file_never_reaches_the_hub(tiny_model, tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("tried the Hub"))
    code, error = _cli(["sft", "--model", tiny_model, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "r"],
                       capsys)
    assert code == 2 and "nope.jsonl: no such file or folder" in error


# --- prompts longer than the context: left truncation, counted in the log ------------------

def test_long_rows_are_truncated_logged_and_training_finishes(tiny_model, tmp_path, capsys, caplog):
    digits = " ".join(str(i % 10) for i in range(120))
    rows = [
        {"prompt": "sort 3 1 2", "completion": "1 2 3"},
        {"prompt": "sort " + digits, "completion": "1 2 3"},  # the prompt alone is longer than max_length
        {"prompt": "sort 3 1 2", "completion": digits},  # the response alone is longer: cut on the right
        {"prompt": "sort 5 4", "completion": "4 5"},
    ]
    data = tmp_path / "sft.jsonl"
    write_jsonl(data, rows)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code, error = _cli(["sft", "--model", tiny_model, "--data", data, "--out", out, "--max-length", "32",
                            "--max-steps", "1", "--batch-size", "4"], capsys)
    assert (code, error) == (0, "")
    [record] = [r for r in caplog.records if "rows tokenized" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "4 rows tokenized (max_length 32): 1 prompts cut on the left, 1 responses cut on the right" in (
        record.getMessage())
    summary = json.loads((out / COMPLETE_MARKER).read_text())
    assert summary["rows"] == 4  # nothing dropped
    assert summary["truncation"] == {"rows": 4, "prompt_truncated": 1, "response_truncated": 1}


def test_truncate_prompts_for_sampling_keeps_the_end_and_logs(caplog):
    with caplog.at_level(logging.WARNING, logger="dvpo.data.tokenize"):
        out = truncate_prompts([[1, 2, 3, 4, 5], [6, 7]], 3, source="prompts.jsonl")
    assert out == [[3, 4, 5], [6, 7]]
    assert "prompts.jsonl: 1 of 2 prompts longer than 3 tokens cut on the left" in caplog.text
    with pytest.raises(ValueError):
        truncate_prompts([[1]], 0)


# --- tokenizers without a pad token or a chat template --------------------------------------

def test_tokenizer_without_pad_token_pads_with_eos_logged(tiny_model, tmp_path, capsys, caplog):
    model = _model_copy(tiny_model, tmp_path)
    _edit_json(model / "tokenizer_config.json", pad_token=None)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code, error = _cli(["sft", "--model", model, "--data", _write_lines(tmp_path / "d.jsonl", [SFT] * 4),
                            "--out", out, "--max-steps", "1", "--batch-size", "4"], capsys)
    assert (code, error) == (0, "")
    assert "tokenizer has no pad token; using eos '<|eos|>' for padding" in caplog.text
    assert (out / COMPLETE_MARKER).is_file()


def test_tokenizer_without_chat_template_falls_back_to_plain_text_logged(tiny_model, tmp_path, capsys, caplog):
    model = _model_copy(tiny_model, tmp_path)
    (model / "chat_template.jinja").unlink()
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code, error = _cli(["sft", "--model", model, "--data", _write_lines(tmp_path / "d.jsonl", [SFT] * 4),
                            "--out", out, "--max-steps", "1", "--batch-size", "4"], capsys)
    assert (code, error) == (0, "")
    assert f"the tokenizer of {model} has no chat template: a prompt and its response are joined as plain text" in (
        caplog.text)
    assert (out / COMPLETE_MARKER).is_file()


def test_conversational_rows_without_chat_template_are_a_clear_error(tiny_model, tmp_path, capsys):
    model = _model_copy(tiny_model, tmp_path)
    (model / "chat_template.jinja").unlink()
    row = {"messages": [{"role": "user", "content": "sort 2 1"}, {"role": "assistant", "content": "1 2"}]}
    data = tmp_path / "chat.jsonl"
    write_jsonl(data, [row] * 2)
    out = tmp_path / "run"
    code, error = _cli(["sft", "--model", model, "--data", data, "--out", out, "--max-steps", "1"], capsys)
    assert code == 2
    assert error.startswith("dvpo: error: a conversational (messages) row needs a tokenizer with a chat template")
    assert str(model) in error and "chat_template" in error
    assert not (out / COMPLETE_MARKER).exists()


# --- model folders with files missing, Hub names offline ------------------------------------

def _no_weights(folder):
    (folder / "model.safetensors").unlink()


def _no_config(folder):
    (folder / "config.json").unlink()


def _bad_config(folder):
    (folder / "config.json").write_text('{"model_type": "llama",')


def _no_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink()


def _no_vocabulary(folder):
    (folder / "tokenizer.json").unlink()


def _truncated_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


BROKEN_FOLDERS = {
    "missing folder": (shutil.rmtree, "model folder {m} does not exist"),
    "no config.json": (_no_config, "model folder {m} has no config.json"),
    "config.json not json": (_bad_config, "model folder {m}: config.json is not valid JSON"),
    "no weights": (_no_weights, "model folder {m} has no weights: none of model.safetensors"),
    "truncated weights": (_truncated_weights, "cannot load the model from {m}: "),
    "no tokenizer files": (_no_tokenizer, "model folder {m} has no tokenizer: none of tokenizer_config.json"),
    "tokenizer.json missing": (_no_vocabulary, "cannot load the tokenizer from {m}: it has no vocabulary file "
                                               "(none of tokenizer.json"),
}


@pytest.mark.parametrize(("breaks", "message"), BROKEN_FOLDERS.values(), ids=BROKEN_FOLDERS.keys())
def test_broken_model_folder_is_one_clear_line(tiny_model, lab_data, tmp_path, capsys, breaks, message):
    model = _model_copy(tiny_model, tmp_path)
    breaks(model)
    out = tmp_path / "gen.jsonl"
    code, error = _cli(["generate", "--model", model, "--prompts", lab_data["test_prompts"], "--out", out],
                       capsys)
    assert code == 2
    assert error.startswith("dvpo: error: " + message.format(m=model)), error
    assert not out.exists()


@pytest.mark.parametrize("stage", ["sft", "generate", "gvm"])
def test_hub_name_while_offline_is_one_clear_line(lab_data, tmp_path, capsys, monkeypatch, stage):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    out = tmp_path / ("gen.jsonl" if stage == "generate" else "run")
    data = ["--prompts", lab_data["test_prompts"]] if stage == "generate" else ["--data", lab_data[
        "rated" if stage == "gvm" else "sft"]]
    code, error = _cli([stage, "--model", "some-org/not-a-local-model", *data, "--out", out], capsys)
    assert code == 2
    assert error == ("dvpo: error: model 'some-org/not-a-local-model' is not a local folder and not in the Hugging "
                     "Face cache, and HF_HUB_OFFLINE is set, so it cannot be downloaded: pass a local model folder, "
                     "or unset HF_HUB_OFFLINE to download it")
    assert not (out / COMPLETE_MARKER).exists() and not out.is_file()


@pytest.mark.parametrize("name", ["no-such/runs/sft", "./no-such-sft", "~/no-such-model-folder"])
def test_missing_local_model_path_is_never_sent_to_the_hub(name):
    with pytest.raises(FileNotFoundError, match=f"model folder {re.escape(name)} does not exist"):
        check_model_path(name)


def test_cached_hub_name_passes_the_offline_check(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--some-org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    check_model_path("some-org/cached")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        check_model_path("some-org/other")


# --- safe defaults: no remote code, no code from pickles -----------------------------------

def _with_custom_code(folder: Path, sentinel: Path, model_type: str) -> None:
    """config.json and tokenizer_config.json point at custom.py, which would leave `sentinel` if run."""
    (folder / "custom.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n"
        "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n"
    )
    auto_map = {key: "custom.Custom" + ("Config" if key == "AutoConfig" else "Model")
                for key in ("AutoConfig", "AutoModelForCausalLM", "AutoModelForTokenClassification",
                            "AutoModelForSequenceClassification")}
    _edit_json(folder / "config.json", auto_map=auto_map, model_type=model_type)


@pytest.mark.parametrize("stage", ["generate", "sft", "gvm"])
def test_custom_code_in_a_model_folder_is_never_run(tiny_model, lab_data, tmp_path, capsys, stage):
    model = _model_copy(tiny_model, tmp_path)
    sentinel = tmp_path / "custom_code_ran"
    _with_custom_code(model, sentinel, "custom-llama")
    out = tmp_path / ("gen.jsonl" if stage == "generate" else "run")
    data = ["--prompts", lab_data["test_prompts"]] if stage == "generate" else ["--data", lab_data[
        "rated" if stage == "gvm" else "sft"]]
    code, error = _cli([stage, "--model", model, *data, "--out", out], capsys)
    assert code == 2
    assert error.startswith(f"dvpo: error: model folder {model} needs custom code"), error
    assert "trust_remote_code is off" in error
    assert not sentinel.exists()


def test_auto_map_on_a_built_in_model_type_uses_the_built_in_class(tiny_model, lab_data, tmp_path, capsys,
                                                                     caplog):
    model = _model_copy(tiny_model, tmp_path)
    sentinel = tmp_path / "custom_code_ran"
    _with_custom_code(model, sentinel, "llama")
    out = tmp_path / "gen.jsonl"
    with caplog.at_level(logging.WARNING):
        code, error = _cli(["generate", "--model", model, "--prompts", lab_data["test_prompts"], "--out", out,
                            "--max-new-tokens", "2"], capsys)
    assert (code, error) == (0, "")
    assert "config.json maps to custom code (auto_map); it is not run" in caplog.text
    assert out.is_file() and not sentinel.exists()


def _pickled_weights(model: Path, extra=None) -> None:
    from safetensors.torch import load_file

    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    if extra is not None:
        state["extra"] = extra
    torch.save(state, model / "pytorch_model.bin")


class _Payload:
    """Unpickling this runs os.system: exactly what weights_only=True must refuse."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_pickled_weights_load_only_as_tensors(tiny_model, lab_data, tmp_path, capsys, caplog):
    plain = _model_copy(tiny_model, tmp_path, "plain")
    _pickled_weights(plain)
    with caplog.at_level(logging.WARNING):
        code, error = _cli(["generate", "--model", plain, "--prompts", lab_data["test_prompts"],
                            "--out", tmp_path / "plain.jsonl", "--max-new-tokens", "2"], capsys)
    assert (code, error) == (0, "")
    assert "has pickled weights only; loading them with torch.load(weights_only=True)" in caplog.text

    hostile = _model_copy(tiny_model, tmp_path, "hostile")
    sentinel = tmp_path / "pickle_code_ran"
    _pickled_weights(hostile, extra=_Payload(sentinel))
    out = tmp_path / "hostile.jsonl"
    code, error = _cli(["generate", "--model", hostile, "--prompts", lab_data["test_prompts"], "--out", out],
                       capsys)
    assert code == 2
    assert error.startswith(f"dvpo: error: cannot load the model from {hostile}: its pickled weights hold more "
                            "than tensors"), error
    assert not sentinel.exists() and not out.exists()


def test_source_never_trusts_remote_code_or_unpickles_freely():
    """The behavioural tests above cover our loaders; this guards every other call site in src."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for call in re.finditer(r"torch\.load\(", text):
            depth, end = 1, call.end()
            while depth:  # the call's text up to its matching parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            assert "weights_only=True" in text[call.start():end], f"{path}: {text[call.start():end]}"


# --- properties of the data layer ---------------------------------------------------------

# Any text but lone surrogates (not encodable); \u2028, \x85, \r and the like must survive JSONL lines.
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(str.strip)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text})
reply = st.one_of(text, st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": text}),
                                 min_size=1, max_size=2))
prompt = st.one_of(text, st.lists(message, min_size=1, max_size=2))
score = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False))
ROWS = {
    "sft": st.fixed_dictionaries({"prompt": prompt, "completion": reply}),
    "rated": st.fixed_dictionaries({"prompt": prompt, "completion": reply, "score": score},
                                   optional={"policy": text}),
    "preference": st.fixed_dictionaries({"prompt": prompt, "chosen": reply, "rejected": reply}),
    "prompts": st.fixed_dictionaries({"prompt": prompt}),
    "generations": st.fixed_dictionaries({"prompt": prompt, "completion": reply}, optional={"score": score}),
}
# Values that no field accepts: wrong types, empties, non-finite numbers.
WRONG = st.one_of(st.integers(), st.booleans(), st.just(""), st.just("  "), st.just([]),
                  st.dictionaries(text, text, max_size=1), st.lists(st.integers(), min_size=1, max_size=2),
                  st.sampled_from([math.nan, math.inf, -math.inf]))
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_score(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _same(a, b) -> bool:
    """Equality that also distinguishes -0.0 and int/float, as a round trip should preserve them."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(list(KINDS)))
def test_any_valid_rows_round_trip_through_jsonl(tmp_path_factory, data, kind):
    rows = data.draw(st.lists(ROWS[kind], min_size=1, max_size=4))
    path = tmp_path_factory.mktemp("rt") / "rows.jsonl"
    assert write_jsonl(path, rows) == len(rows)
    assert _same(load_rows(path, kind), rows)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(list(KINDS)))
def test_any_broken_field_is_named_with_its_line(tmp_path_factory, data, kind):
    rows = data.draw(st.lists(ROWS[kind], min_size=1, max_size=4))
    index = data.draw(st.integers(0, len(rows) - 1))
    row = dict(rows[index])
    field = data.draw(st.sampled_from(sorted(row)))
    action = data.draw(st.sampled_from(["drop", "null", "wrong"]))
    optional = field == "policy" or (field == "score" and kind == "generations")
    if action == "drop":
        del row[field]
        broken = not optional
    elif action == "null":  # null counts as absent (datasets fills missing fields with None)
        row[field] = None
        broken = not optional
    else:
        row[field] = data.draw(WRONG.filter(lambda v: field != "score" or not _valid_score(v)))
        broken = not (kind == "generations" and field == "completion" and row[field] == "")  # may be empty
    rows[index] = row
    path = tmp_path_factory.mktemp("bad") / "rows.jsonl"
    write_jsonl(path, rows)
    if not broken:
        assert len(load_rows(path, kind)) == len(rows)
        return
    with pytest.raises(DataError) as info:
        load_rows(path, kind)
    err = info.value
    assert err.line == index + 1
    assert err.field is not None and (err.field == field or err.field.startswith(field + "["))
    assert str(err).startswith(f"{path}:{index + 1}: field '{err.field}': ")


@pytest.mark.parametrize("stage", ["sft", "generate"])
def test_local_runs_open_no_connection_even_when_online(tiny_model, lab_data, tmp_path, capsys, monkeypatch,
                                                        stage):
    """Nothing but the judge endpoint and a Hub model or dataset the user named may reach the network."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    if stage == "sft":
        argv = ["sft", "--data", lab_data["sft"], "--out", tmp_path / "run", "--max-steps", "1", "--batch-size", "4"]
    else:
        argv = ["generate", "--prompts", lab_data["test_prompts"], "--out", tmp_path / "g.jsonl",
                "--max-new-tokens", "2"]
    assert _cli([*argv, "--model", tiny_model], capsys) == (0, "")
    assert attempts == []


def test_generation_cuts_prompts_longer_than_the_context_and_logs(tiny_model, tmp_path, caplog):
    """Sampling keeps prompt + response inside the model's positions: long prompts lose their start."""
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_model).max_position_embeddings
    prompts = tmp_path / "long.jsonl"
    prompts.write_text(json.dumps({"prompt": "repeat " + " ".join(["7"] * (context + 50))}) + "\n"
                       + json.dumps({"prompt": "sort 3 1 2"}) + "\n")
    out = tmp_path / "gen.jsonl"
    with caplog.at_level("WARNING"):
        main(["generate", "--model", str(tiny_model), "--prompts", str(prompts), "--out", str(out),
              "--max-new-tokens", "8"])
    assert len(out.read_text().splitlines()) == 2
    assert any("1 of 2 prompts longer than" in r.getMessage() for r in caplog.records)


def test_a_validation_split_with_nothing_to_rank_is_one_clear_line_before_training(tiny_model, tmp_path, capsys):
    """Every prompt's responses tie: the GVM could regress on the scores, but no checkpoint can be picked."""
    data = tmp_path / "tied.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"sort {i} 2 1", "completion": answer, "score": 1.0}) + "\n"
                            for i in range(20) for answer in ("1 2", "2 1")))
    code, err = _cli(["gvm", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "gvm"),
                      "--max-steps", "2", "--batch-size", "4"], capsys)
    assert code == 2 and "has no pair of responses to one prompt with different scores" in err
    assert str(data) in err and "--validation-fraction" in err
    assert not (tmp_path / "gvm" / "checkpoints").exists()
