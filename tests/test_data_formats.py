"""Row loading and validation: every kind from JSONL and `datasets` folders, and clear errors."""

from __future__ import annotations

import copy
import json

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo.data import formats
from dvpo.data.formats import KINDS, load_rows, validate_row
from dvpo.errors import DataError
from dvpo.data.jsonl import write_jsonl

CONVERSATION = [
    {"role": "system", "content": "you sort numbers"},
    {"role": "user", "content": "sort 3 1 2"},
]

VALID = {
    "sft": [
        {"prompt": "sort 3 1 2", "completion": "1 2 3", "id": 6},
        {"prompt": "sort 5 4", "completion": "4 5", "id": 7},
    ],
    "rated": [
        {"prompt": "sort 3 1 2", "completion": "1 2 3", "score": 1.0, "policy": "careful"},
        {"prompt": "sort 5 4", "completion": "5 4", "score": -2, "policy": "sloppy"},
    ],
    "preference": [
        {"prompt": "sort 3 1 2", "chosen": "1 2 3", "rejected": "3 2 1"},
        {"prompt": "sort 5 4", "chosen": "4 5", "rejected": "5 5"},
    ],
    "prompts": [{"prompt": "sort 3 1 2"}, {"prompt": "sort 5 4"}],
    "generations": [
        {"prompt": "sort 3 1 2", "completion": "1 2 3", "score": 0.5},
        {"prompt": "sort 5 4", "completion": "4 5", "score": 1.0},
    ],
}


def _write(path, lines: list[str | bytes]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_from_jsonl(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    write_jsonl(path, VALID[kind])
    assert load_rows(path, kind) == VALID[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_from_datasets_folder(tmp_path, kind):
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(VALID[kind]).save_to_disk(str(folder))
    assert load_rows(str(folder), kind) == VALID[kind]


def test_dataset_dict_folder_picks_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(VALID["prompts"][:1]),
        test=datasets.Dataset.from_list(VALID["prompts"][1:]),
    ).save_to_disk(str(folder))
    assert load_rows(folder, "prompts", split="test") == VALID["prompts"][1:]
    with pytest.raises(DataError, match="no split 'valid'"):
        load_rows(folder, "prompts", split="valid")


def test_conversational_rows_load(tmp_path):
    rows = [
        {"prompt": CONVERSATION, "completion": [{"role": "assistant", "content": "1 2 3"}]},
        {"messages": [*CONVERSATION, {"role": "assistant", "content": "1 2 3"}]},
        {"prompt": CONVERSATION, "completion": "1 2 3"},
    ]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, rows)
    assert load_rows(path, "sft") == rows
    assert load_rows(_saved(tmp_path, rows[1:2]), "sft") == rows[1:2]


def _saved(tmp_path, rows):
    folder = tmp_path / "conv"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def test_blank_lines_skipped_and_extra_fields_kept(tmp_path):
    path = tmp_path / "rated.jsonl"
    row = {"prompt": "a", "completion": "b", "score": 1, "extra": {"nested": [1, 2]}}
    _write(path, ["", json.dumps(row), "   ", "\t", json.dumps(row), ""])
    assert load_rows(path, "rated") == [row, row]


def test_optional_fields_may_be_absent_or_null(tmp_path):
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "b", "score": None}]
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, rows)
    assert load_rows(path, "generations") == rows


ROW = '{"prompt": "sort 3 1 2", "completion": "1 2 3", "score": 1.0}'
BAD = {
    "malformed json": ([ROW, '{"prompt": "a", "completion"'], "rated", 2, None),
    "not an object": ([ROW, "[1, 2]"], "rated", 2, None),
    "not utf-8": ([ROW, ROW, b'{"prompt": "\xff\xfe", "completion": "a", "score": 1}'], "rated", 3, None),
    "missing field": ([ROW, '{"prompt": "a", "completion": "b"}'], "rated", 2, "score"),
    "null required": (['{"prompt": null}'], "prompts", 1, "prompt"),
    "score as string": (['{"prompt": "a", "completion": "b", "score": "high"}'], "rated", 1, "score"),
    "score as bool": (['{"prompt": "a", "completion": "b", "score": true}'], "rated", 1, "score"),
    "score nan": ([ROW, "", '{"prompt": "a", "completion": "b", "score": NaN}'], "rated", 3, "score"),
    "score infinite": (['{"prompt": "a", "completion": "b", "score": -Infinity}'], "generations", 1, "score"),
    "prompt as number": (['{"prompt": 5}'], "prompts", 1, "prompt"),
    "policy as number": (
        ['{"prompt": "a", "completion": "b", "score": 1, "policy": 3}'], "rated", 1, "policy",
    ),
    "empty completion": (['{"prompt": "a", "completion": ""}'], "sft", 1, "completion"),
    "whitespace prompt": (
        ['{"prompt": " \\t\\n", "chosen": "a", "rejected": "b"}'], "preference", 1, "prompt",
    ),
    "missing rejected": (['{"prompt": "a", "chosen": "b"}'], "preference", 1, "rejected"),
    "empty message content": (
        ['{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}'],
        "sft", 1, "messages[1].content",
    ),
    "bad role": (['{"messages": [{"role": "bot", "content": "a"}]}'], "sft", 1, "messages[0].role"),
    "no assistant": (['{"messages": [{"role": "user", "content": "a"}]}'], "sft", 1, "messages"),
    "empty messages": (['{"prompt": [], "completion": "a"}'], "sft", 1, "prompt"),
    "user turn in completion": (
        ['{"prompt": "a", "completion": [{"role": "user", "content": "b"}]}'], "sft", 1, "completion[0].role",
    ),
    "message not an object": (['{"prompt": ["hi"]}'], "prompts", 1, "prompt[0]"),
}


@pytest.mark.parametrize(("lines", "kind", "line", "field"), BAD.values(), ids=BAD.keys())
def test_bad_input_names_file_line_and_field(tmp_path, lines, kind, line, field):
    path = tmp_path / "bad.jsonl"
    _write(path, lines)
    with pytest.raises(DataError) as info:
        load_rows(path, kind)
    err = info.value
    assert (err.line, err.field) == (line, field)
    assert f"bad.jsonl:{line}:" in str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)


def test_message_format(tmp_path):
    path = tmp_path / "rated.jsonl"
    _write(path, [ROW] * 11 + ['{"prompt": "a", "completion": "b", "score": NaN}'])
    with pytest.raises(DataError) as info:
        load_rows(path, "rated")
    assert str(info.value) == f"{path}:12: field 'score': must be a finite number, got nan"


def test_bad_row_in_datasets_folder_names_row_number(tmp_path):
    folder = tmp_path / "ds"
    rows = [*VALID["rated"], {"prompt": "a", "completion": "b", "score": float("inf"), "policy": "p"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"ds:3: field 'score'"):
        load_rows(folder, "rated")


@pytest.mark.parametrize("lines", [[], ["", "  "]], ids=["empty", "blank lines only"])
def test_empty_file_is_an_error(tmp_path, lines):
    path = tmp_path / "empty.jsonl"
    _write(path, lines)
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        load_rows(path, "prompts")


@pytest.mark.parametrize(
    "name", ["data/missing.jsonl", "missing.json", "./data", "~/nope", "a/b/c", "{tmp}/gone"]
)
def test_missing_local_path_never_tries_the_hub(tmp_path, monkeypatch, name):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("tried the Hub"))
    name = name.format(tmp=tmp_path)
    with pytest.raises(DataError, match="no such file or folder") as info:
        load_rows(name, "prompts")
    assert name in str(info.value)


def test_hub_name_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(VALID["prompts"])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("someone/prompts", "prompts", split="test") == VALID["prompts"]
    assert calls == [("someone/prompts", "test")]


def test_folder_not_saved_by_datasets(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        load_rows(tmp_path, "prompts")


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown row kind"):
        validate_row({"prompt": "a"}, "chat")


def test_non_object_row_from_code():
    with pytest.raises(DataError, match="rows.py:4: expected a JSON object"):
        validate_row("prompt", "prompts", "rows.py", 4)


# --- property: every valid row passes unchanged -------------------------------------------

text = st.text(min_size=1, max_size=20).filter(str.strip)
message = st.fixed_dictionaries({"role": st.sampled_from(formats.ROLES), "content": text})
assistant = st.fixed_dictionaries({"role": st.just("assistant"), "content": text})
reply = st.one_of(text, st.lists(assistant, min_size=1, max_size=3))
prompt = st.one_of(text, st.lists(message, min_size=1, max_size=3))
score = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
extra = st.dictionaries(st.sampled_from(["id", "meta"]), st.one_of(st.none(), st.integers(), text))
conversation = st.lists(message, max_size=3).map(lambda ms: [*ms, {"role": "assistant", "content": "ok"}])

ROWS = {
    "sft": st.one_of(
        st.fixed_dictionaries({"prompt": prompt, "completion": reply}),
        st.fixed_dictionaries({"messages": conversation}),
    ),
    "rated": st.fixed_dictionaries(
        {"prompt": prompt, "completion": reply, "score": score}, optional={"policy": text}
    ),
    "preference": st.fixed_dictionaries({"prompt": prompt, "chosen": reply, "rejected": reply}),
    "prompts": st.fixed_dictionaries({"prompt": prompt}),
    "generations": st.fixed_dictionaries({"prompt": prompt, "completion": reply}, optional={"score": score}),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), kind=st.sampled_from(list(KINDS)), extras=extra)
def test_valid_rows_pass_unchanged(data, kind, extras):
    row = {**extras, **data.draw(ROWS[kind])}
    before = copy.deepcopy(row)
    assert validate_row(row, kind, "gen.jsonl", 1) is row
    assert row == before


def test_generated_completions_may_be_empty_but_input_completions_may_not(tmp_path):
    from dvpo.data.formats import load_rows
    from dvpo.errors import DataError

    path = tmp_path / "gen.jsonl"
    path.write_text('{"prompt": "sort 1 2", "completion": ""}\n')
    assert load_rows(path, "generations")[0]["completion"] == ""
    with pytest.raises(DataError, match="gen.jsonl:1: field 'completion'"):
        load_rows(path, "sft")
