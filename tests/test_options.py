"""Every option works in the YAML file and on the command line; the command line wins."""

from __future__ import annotations

import pytest

from dvpo.cli import build_cli
from dvpo.options import resolve
from dvpo.errors import ConfigError
from dvpo.stage_options import GvmConfig, SftConfig


def parse(argv):
    return build_cli().parse_args(argv)


def test_defaults_yaml_and_cli_merge(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("model: m\ndata: d.jsonl\nout: o\nlearning-rate: 0.001\nbatch_size: 4\ngradient_checkpointing: true\n")
    cfg = resolve(SftConfig, parse(["sft", "--config", str(config), "--batch-size", "8"]))
    assert (cfg.model, cfg.learning_rate, cfg.batch_size, cfg.gradient_checkpointing) == ("m", 1e-3, 8, True)
    assert cfg.epochs == 3.0  # untouched default


def test_every_option_is_on_the_command_line():
    cfg = resolve(GvmConfig, parse(["gvm", "--model", "m", "--data", "d", "--out", "o", "--tau", "none",
                                    "--td-lambda", "1", "--no-gradient-checkpointing"]))
    assert cfg.tau == "none" and cfg.td_lambda == 1.0 and cfg.gradient_checkpointing is False


@pytest.mark.parametrize("yaml_text, message", [
    ("model: m\ndata: d\nout: o\nlearning_rat: 1\n", "unknown option 'learning_rat'"),
    ("model: m\ndata: d\nout: o\nbatch_size: many\n", "option 'batch_size'"),
    ("model: m\ndata: d\nout: o\ndtype: float8\n", "must be one of"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_yaml_names_file_and_option(tmp_path, yaml_text, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        resolve(SftConfig, parse(["sft", "--config", str(config)]))


def test_missing_required_option_is_named():
    with pytest.raises(ConfigError, match="--data, --out"):
        resolve(SftConfig, parse(["sft", "--model", "m"]))


def test_help_documents_each_option(capsys):
    with pytest.raises(SystemExit):
        parse(["gvm", "--help"])
    text = capsys.readouterr().out
    for flag in ("--tau", "--td-lambda", "--gamma", "--value-normalization", "--lora-r", "--config"):
        assert flag in text
