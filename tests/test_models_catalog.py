"""Pretrained models without a hub (`dvpo models get`, `convert-gguf`), and scorers whose tokenizer differs
from the policy's (refused for token values, re-encoded for sequence scores), and PPO's LoRA critic."""

from __future__ import annotations

import json
import zipfile

import pytest

from dvpo.cli import main
from dvpo.models.catalog import CATALOG, cached_folder, default_cache, get_model, is_cached
from dvpo.models.gguf_convert import convert_gguf
from dvpo.errors import ModelError

SMOLLM2 = CATALOG["smollm2-135m-instruct"]


@pytest.fixture(scope="session")
def kept_wheel():
    """The pinned wheel as `scripts/install.sh --dev` left it in the cache (never downloaded by a test)."""
    wheel = default_cache() / "wheels" / SMOLLM2.wheel_file
    assert wheel.is_file(), f"{wheel} is missing: run `bash scripts/install.sh --dev`, which fetches it"
    return wheel


def test_a_wrong_or_cut_wheel_is_refused_and_leaves_nothing_in_the_cache(kept_wheel, tmp_path, capsys):
    cut = tmp_path / SMOLLM2.wheel_file
    cut.write_bytes(kept_wheel.read_bytes()[: 1 << 20])
    with pytest.raises(SystemExit) as stop:
        main(["models", "get", SMOLLM2.name, "--cache", str(tmp_path / "cache"), "--wheel", str(cut)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sha256" in error[0] and SMOLLM2.sha256 in error[0]
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_a_damaged_wheel_in_the_cache_is_dropped_so_the_next_call_downloads_it(tmp_path):
    kept = tmp_path / "wheels" / SMOLLM2.wheel_file
    kept.parent.mkdir()
    kept.write_bytes(b"PK not a wheel")
    with pytest.raises(ModelError, match="sha256"):
        get_model(SMOLLM2.name, tmp_path)
    assert not kept.exists() and not is_cached(cached_folder(SMOLLM2.name, tmp_path))


@pytest.mark.parametrize("damage", ["magic", "cut"])
def test_a_corrupt_gguf_is_one_clear_error_and_no_folder(damage, kept_wheel, tmp_path):
    gguf = tmp_path / "model.gguf"
    if damage == "magic":
        gguf.write_bytes(b"NOTGGUF" + bytes(100))
    else:
        with zipfile.ZipFile(kept_wheel) as archive, archive.open(SMOLLM2.gguf_member) as member:
            gguf.write_bytes(member.read(20 << 20))  # the first 20 MB of 98
    with pytest.raises(ModelError, match="model.gguf"):
        convert_gguf(gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no staging folder left behind


def test_models_list_names_the_catalog(capsys):
    main(["models", "list"])
    out = capsys.readouterr().out
    assert SMOLLM2.name in out and SMOLLM2.original in out and SMOLLM2.license in out


def test_an_unknown_catalog_name_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["models", "get", "no-such-model"])
    assert stop.value.code == 2 and "known: smollm2-135m-instruct" in capsys.readouterr().err


@pytest.fixture(scope="module")
def other_tokenizer_model(lab_data, tmp_path_factory):
    """A lab model whose tokenizer (a smaller vocabulary) differs from `tiny_model`'s."""
    from dvpo.models.init import init_model

    out = tmp_path_factory.mktemp("other") / "init"
    init_model([str(lab_data["sft"])], "tiny", str(out), seed=1, vocab_size=600)
    return out


@pytest.fixture(scope="module")
def other_scorers(other_tokenizer_model, lab_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("other-scorers")
    common = ["--model", str(other_tokenizer_model), "--data", str(lab_data["rated"]), "--max-steps", "2",
              "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64"]
    main(["gvm", *common, "--out", str(root / "gvm")])
    main(["rm", *common, "--out", str(root / "rm")])
    return root / "gvm", root / "rm"


def _rl(policy, lab_data, out, *extra):
    return ["rl", "--policy", str(policy), "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "1",
            "--rollout-batch-size", "4", "--mini-batch-size", "2", "--ppo-epochs", "1", "--max-new-tokens", "8",
            *extra]


@pytest.mark.parametrize("case", ["gvm", "critic"])
def test_token_values_of_another_tokenizer_are_refused_before_any_file(case, tiny_model, other_tokenizer_model,
                                                                       other_scorers, tiny_rm, lab_data, tmp_path,
                                                                       capsys):
    gvm, _ = other_scorers
    extra = (["--algo", "dvpo", "--gvm", str(gvm)] if case == "gvm" else
             ["--algo", "ppo", "--reward-model", str(tiny_rm), "--critic-init", str(other_tokenizer_model)])
    with pytest.raises(SystemExit) as stop:
        main(_rl(tiny_model, lab_data, tmp_path / "run", *extra))
    error = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(error) == 1
    assert "another tokenizer" in error[0] and error[0].count(" tokens)") == 2 and str(tiny_model) in error[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_reward_model_of_another_tokenizer_scores_re_encoded_text(algo, tiny_model, other_scorers, lab_data,
                                                                     tmp_path, caplog):
    """PPO's default critic then starts from the policy, not from the reward model of the other tokenizer."""
    _, rm = other_scorers
    out = tmp_path / algo
    with caplog.at_level("INFO"):
        main(_rl(tiny_model, lab_data, out, "--algo", algo, "--reward-model", str(rm),
                 *(["--group-size", "2"] if algo == "grpo" else [])))
    assert "re-encoded with its own tokenizer" in caplog.text
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["proxy_score"] == record["proxy_score"]  # a finite score came back


@pytest.fixture(scope="module")
def tiny_rm(tiny_model, lab_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("catalog-rm") / "rm"
    main(["rm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(out), "--max-steps", "2",
          "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64", "--lora-r", "0"])
    return out


@pytest.mark.parametrize("critic_lora", [None, "0"])
def test_ppo_critic_follows_the_policy_lora_unless_told(critic_lora, tiny_model, tiny_rm, lab_data, tmp_path):
    from peft import PeftModel

    from dvpo.options import build_parser, resolve
    from dvpo.stage_options import RlConfig
    from dvpo.trainers.rl import set_up
    import argparse

    parser = argparse.ArgumentParser()
    build_parser(parser, RlConfig)
    args = _rl(tiny_model, lab_data, tmp_path / "run", "--algo", "ppo", "--reward-model", str(tiny_rm),
               "--lora-r", "4", *(["--critic-lora-r", critic_lora] if critic_lora else []))[1:]
    run = set_up(resolve(RlConfig, parser.parse_args(args)))
    critic = run.loop.source.critic
    trained = sum(p.numel() for p in critic.parameters() if p.requires_grad)
    total = sum(p.numel() for p in critic.parameters())
    if critic_lora is None:
        assert isinstance(critic, PeftModel) and trained < total / 4
        assert critic.base_model.model.score.modules_to_save  # the value head is trained in full
    else:
        assert not isinstance(critic, PeftModel) and trained == total


@pytest.mark.parametrize("lora_r", ["0", "4"])
def test_ppo_critic_starts_from_the_reward_model_with_its_head(lora_r, tiny_model, lab_data, tmp_path):
    """The critic's value of a whole row is the reward model's score of it, a LoRA reward model merged in."""
    import torch

    from dvpo.models.reward_model import load_reward_model
    from dvpo.options import build_parser, resolve
    from dvpo.stage_options import RlConfig
    from dvpo.trainers.sources.ppo import build_critic
    import argparse

    rm = tmp_path / "rm"
    main(["rm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(rm), "--max-steps", "3",
          "--batch-size", "4", "--learning-rate", "1e-2", "--max-length", "64", "--lora-r", lora_r])
    parser = argparse.ArgumentParser()
    build_parser(parser, RlConfig)
    cfg = resolve(RlConfig, parser.parse_args(_rl(tiny_model, lab_data, tmp_path / "run", "--algo", "ppo",
                                                  "--reward-model", str(rm))[1:]))
    reward = load_reward_model(rm, device="cpu")
    critic = build_critic(cfg, reward.tokenizer).eval()
    rows = [reward.tokenizer("a b c").input_ids, reward.tokenizer("one two").input_ids]
    with torch.no_grad():
        values = [critic(input_ids=torch.tensor([row])).logits[0, -1, 0] for row in rows]
    expected = reward.score_rows(rows)
    assert expected.abs().min() > 0  # the head is not zero
    torch.testing.assert_close(torch.stack(values), expected, rtol=1e-4, atol=1e-5)
