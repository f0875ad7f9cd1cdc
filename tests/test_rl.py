"""The online RL loop: prompt order, tau partners, log-prob consistency, DVPO end to end, exact resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from dvpo.cli import main
from dvpo.data.tokenize import encode_prompt
from dvpo.models.loading import load_tokenizer
from dvpo.rollout.experience import build_sequences, frozen_logprobs, response_logprobs
from dvpo.rollout.sampling import sample
from dvpo.trainers.rl import batch_prompts


def test_prompt_batches_cover_each_pass_once_and_are_seeded():
    prompts = list(range(10))
    first_pass = [p for step in range(5) for p in batch_prompts(prompts, step, 2, seed=1)]
    assert sorted(first_pass) == prompts
    assert batch_prompts(prompts, 7, 3, seed=1) == batch_prompts(prompts, 7, 3, seed=1)
    assert first_pass != [p for step in range(5) for p in batch_prompts(prompts, step, 2, seed=2)]


def test_batched_left_padded_logprobs_match_single_rows(tiny_model):
    """Position ids from the attention mask: padding must not change any token's log-prob."""
    tokenizer = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = ["sort 3 1 2", "reverse 9 8 7 6 5 4"]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    torch.manual_seed(0)
    batch = sample(model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens=6)
    seq = build_sequences(batch)
    with torch.no_grad():
        together = response_logprobs(model, seq, temperature=0.7)
        for i in range(2):
            alone = build_sequences(type(batch)(
                batch.prompt_ids[i:i + 1, -len(ids[i]):], batch.prompt_mask[i:i + 1, -len(ids[i]):],
                batch.response_ids[i:i + 1], batch.response_mask[i:i + 1]))
            torch.testing.assert_close(response_logprobs(model, alone, temperature=0.7)[0], together[i],
                                       atol=1e-5, rtol=1e-5)
    assert (together[seq.response_mask == 0] == 0).all()


def test_response_logprobs_and_entropy_match_a_full_float64_softmax(tiny_model):
    """Logits are computed for the response positions only, the entropy stays out of autograd, and
    the experience phase's chunked log-probs are the same numbers."""
    tokenizer = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = [encode_prompt(tokenizer, p) for p in ["sort 3 1 2", "reverse 9 8 7 6 5 4"]]
    torch.manual_seed(0)
    seq = build_sequences(sample(model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, max_new_tokens=6))
    logprobs, entropy = response_logprobs(model, seq, temperature=0.7, with_entropy=True)
    assert logprobs.requires_grad and not entropy.requires_grad
    with torch.no_grad():
        full = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, position_ids=seq.position_ids).logits
    scaled = full.double()[:, seq.prompt_width - 1:-1] / 0.7
    log_p = scaled.log_softmax(-1)
    expected_logprobs = log_p.gather(-1, seq.response_ids.unsqueeze(-1)).squeeze(-1) * seq.response_mask
    expected_entropy = -(log_p.exp() * log_p).sum(-1) * seq.response_mask
    torch.testing.assert_close(logprobs.detach().double(), expected_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy.double(), expected_entropy, atol=1e-5, rtol=1e-5)
    chunked = frozen_logprobs(model, seq, temperature=0.7, rows=1)  # the experience phase's row chunks
    assert not chunked.requires_grad
    torch.testing.assert_close(chunked.double(), expected_logprobs, atol=1e-5, rtol=1e-5)


def _rl_args(tiny_model, tiny_gvm, lab_data, out, *extra):
    return ["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(tiny_gvm),
            "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "4", "--rollout-batch-size", "4",
            "--mini-batch-size", "2", "--ppo-epochs", "2", "--learning-rate", "1e-3", "--max-new-tokens", "8",
            "--save-every", "2", "--score-fn", "dvpo.lab.tasks:judge_completions", *extra]


def test_dvpo_runs_logs_and_evaluates(tiny_model, tiny_gvm, lab_data, tmp_path):
    out = tmp_path / "rl"
    main(_rl_args(tiny_model, tiny_gvm, lab_data, out, "--eval-prompts", str(lab_data["test_prompts"]),
                  "--eval-every", "2", "--dvpo-advantage", "difference", "--kl-penalty", "loss",
                  "--rollout-engine", "static"))  # rollouts and evaluation on the static engine
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("score", "kl", "kl_coef", "clip_frac", "entropy", "response_length", "clipped_ratio", "proxy_score",
                "gvm_value_mean", "time_generation", "time_forward", "time_update", "peak_memory_bytes"):
        assert key in records[-1], key
    assert "eval_score" in records[1] and "eval_score" not in records[0]
    assert "eval_proxy_score" in records[1]  # the GVM's own score of the held-out samples
    assert (out / "model.safetensors").exists() and (out / "dvpo_complete.json").exists()
    assert (out / "metrics.png").exists()


def test_eval_prompts_without_a_score_function_is_a_clear_error(tiny_model, tiny_gvm, lab_data, tmp_path, capsys):
    """The loop knows no task: held-out prompts need a function to score them."""
    args = [a for a in _rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "x", "--eval-prompts",
                                str(lab_data["test_prompts"])) if a not in ("--score-fn", "dvpo.lab.tasks:judge_completions")]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and "--eval-prompts are scored by --score-fn" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tiny_model, tiny_gvm, lab_data, tmp_path):
    """With generate as the engine (the kill-and-resume test in test_interrupts.py uses the static one)."""
    full = tmp_path / "full"
    main(_rl_args(tiny_model, tiny_gvm, lab_data, full) + ["--rollout-engine", "hf"])
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    # Make the copy look like a run stopped after the step-2 checkpoint.
    (resumed / "dvpo_complete.json").unlink()
    (resumed / "model.safetensors").unlink()
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["step-2"]
    main(_rl_args(tiny_model, tiny_gvm, lab_data, resumed) + ["--rollout-engine", "hf"])
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("algo", ["dvpo", "ppo"])
def test_one_update_per_step_reuses_its_forward_as_the_old_logprobs(algo, tiny_model, tiny_gvm, tiny_rm, lab_data,
                                                                    tmp_path):
    source = ["--gvm", str(tiny_gvm)] if algo == "dvpo" else ["--reward-model", str(tiny_rm)]
    out = tmp_path / algo
    main(["rl", "--algo", algo, "--policy", str(tiny_model), *source, "--prompts", str(lab_data["prompts"]),
          "--out", str(out), "--steps", "2", "--rollout-batch-size", "4", "--mini-batch-size", "4",
          "--ppo-epochs", "1", "--learning-rate", "1e-3", "--max-new-tokens", "8"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The old log-probs are the update's own (detached): the ratio is exactly 1, so nothing clips.
    assert all(r["approx_kl"] == 0.0 and r["clip_frac"] == 0.0 for r in records)
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    start = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert any(not torch.equal(trained[name], start[name]) for name in start)


def test_dvpo_without_gvm_is_a_clear_error(tiny_model, lab_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]),
              "--out", str(tmp_path / "x"), "--steps", "1"])
    assert stop.value.code == 2 and "--algo dvpo needs --gvm" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_rm(tiny_model, lab_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl-rm") / "rm"
    main(["rm", "--model", str(tiny_model), "--data", str(lab_data["rated"]), "--out", str(out), "--max-steps", "2",
          "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64"])
    return out


def _run_reward_algo(algo, tiny_model, tiny_rm, lab_data, out, *extra):
    main(["rl", "--algo", algo, "--policy", str(tiny_model), "--reward-model", str(tiny_rm),
          "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "2", "--rollout-batch-size", "4",
          "--mini-batch-size", "2", "--ppo-epochs", "1", "--learning-rate", "1e-3", "--max-new-tokens", "8",
          "--score-fn", "dvpo.lab.tasks:judge_completions", *extra])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algo", ["dvpo", "ppo"])
def test_the_run_s_own_scorer_as_eval_scorer_gives_its_proxy_score(algo, tiny_model, tiny_gvm, tiny_rm, lab_data,
                                                                   tmp_path):
    """Given the run's own scorer, --eval-scorer must reproduce proxy_score on every rollout (it reads the same
    token ids, tau and truncation, not the decoded text: text re-encoded would score responses cut at
    --max-new-tokens as if they had ended) and on the held-out samples."""
    scorer = tiny_gvm if algo == "dvpo" else tiny_rm
    signal = ["--gvm", str(tiny_gvm)] if algo == "dvpo" else ["--reward-model", str(tiny_rm)]
    out = tmp_path / algo
    main(["rl", "--algo", algo, "--policy", str(tiny_model), *signal, "--eval-scorer", str(scorer),
          "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "3", "--rollout-batch-size", "4",
          "--mini-batch-size", "2", "--ppo-epochs", "1", "--learning-rate", "1e-3", "--max-new-tokens", "8",
          "--score-fn", "dvpo.lab.tasks:judge_completions", "--eval-prompts", str(lab_data["test_prompts"]),
          "--eval-every", "3"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert record["second_score"] == pytest.approx(record["proxy_score"], abs=1e-4)
        timed = ("time_generation", "time_forward", "time_update", "time_second_scorer")
        assert record["time_step"] == pytest.approx(sum(record[k] for k in timed))  # the extra model's time counts
    assert records[-1]["eval_second_score"] == pytest.approx(records[-1]["eval_proxy_score"], abs=1e-4)


def test_dvpo_reward_mean_trains_and_its_proxy_is_the_mean_value(tiny_model, tiny_gvm, lab_data, tmp_path):
    """With --dvpo-reward mean the held-out proxy is the GVM's mean token value of the samples, which is not its last
    token's: the run pushes up, and reports, the aggregate it was told to."""
    last, mean = tmp_path / "last", tmp_path / "mean"
    for out, reward in ((last, "last"), (mean, "mean")):
        main(_rl_args(tiny_model, tiny_gvm, lab_data, out, "--steps", "1", "--dvpo-reward", reward,
                      "--eval-prompts", str(lab_data["test_prompts"]), "--eval-every", "1"))
    records = {out.name: json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]) for out in (last, mean)}
    assert all("proxy_score" in r and "eval_proxy_score" in r for r in records.values())
    # same seed, same first rollout and held-out samples: only the aggregate differs
    assert records["last"]["score"] == records["mean"]["score"]
    assert records["last"]["eval_proxy_score"] != pytest.approx(records["mean"]["eval_proxy_score"], abs=1e-6)


def test_dvpo_reward_mean_without_gae_is_refused_before_any_file(tiny_model, tiny_gvm, lab_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "x", "--dvpo-reward", "mean",
                      "--dvpo-advantage", "value"))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "--dvpo-reward mean applies to --dvpo-advantage gae, sequence or blend" in error
    assert not (tmp_path / "x").exists()


def test_an_eval_scorer_that_is_no_scorer_is_refused_before_any_file(tiny_model, tiny_gvm, lab_data, tmp_path,
                                                                     capsys):
    with pytest.raises(SystemExit) as stop:
        main(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "x", "--eval-scorer", str(tiny_model)))
    assert stop.value.code == 2 and "not a GVM folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ppo_trains_policy_and_critic_on_the_same_loop(tiny_model, tiny_rm, lab_data, tmp_path):
    records = _run_reward_algo("ppo", tiny_model, tiny_rm, lab_data, tmp_path / "ppo")
    for key in ("proxy_score", "value_mean", "value_loss", "value_clip_frac", "kl", "score"):
        assert key in records[-1], key
    assert (tmp_path / "ppo" / "dvpo_complete.json").exists()


def test_remax_scores_a_greedy_baseline(tiny_model, tiny_rm, lab_data, tmp_path):
    records = _run_reward_algo("remax", tiny_model, tiny_rm, lab_data, tmp_path / "remax",
                               "--rollout-engine", "static")  # its greedy baseline too
    assert {"proxy_score", "greedy_proxy_score", "clip_frac"} <= set(records[-1])
    assert "value_loss" not in records[-1]  # no critic


def test_grpo_samples_groups_and_checks_the_batch(tiny_model, tiny_rm, lab_data, tmp_path, capsys):
    records = _run_reward_algo("grpo", tiny_model, tiny_rm, lab_data, tmp_path / "grpo", "--group-size", "2")
    assert "proxy_score" in records[-1] and len(records) == 2
    with pytest.raises(SystemExit):
        _run_reward_algo("grpo", tiny_model, tiny_rm, lab_data, tmp_path / "bad", "--group-size", "3")
    assert "multiple of --group-size 3" in capsys.readouterr().err


def test_grpo_prompts_are_prompt_major_groups():
    from dvpo.algos.advantages import group_normalized_advantages

    # Two prompts x two samples, as the loop lays them out: rewards normalise within each pair.
    advantages = group_normalized_advantages(torch.tensor([1.0, 3.0, 10.0, 10.0]), 2)
    assert advantages[0] < 0 < advantages[1] and advantages[2] == advantages[3] == 0


def test_lora_policy_uses_the_adapter_free_model_as_reference(tiny_model, tiny_gvm, lab_data, tmp_path):
    out = tmp_path / "lora"
    main(_rl_args(tiny_model, tiny_gvm, lab_data, out, "--lora-r", "4"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kl"] == 0.0  # LoRA starts as the identity: policy and reference agree exactly
    assert records[-1]["kl"] != 0.0
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()  # adapters merged into a plain model
    start = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in start)


def test_gradient_checkpointing_changes_memory_not_results(tiny_model, tiny_gvm, lab_data, tmp_path):
    main(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "plain", "--steps", "2"))
    main(_rl_args(tiny_model, tiny_gvm, lab_data, tmp_path / "checkpointed", "--steps", "2",
                  "--gradient-checkpointing"))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpointed").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("policy_lora", ["0", "4"], ids=["full-policy", "lora-policy"])
def test_a_lora_gvm_on_the_policy_base_shares_the_reference_backbone(policy_lora, tiny_model, lab_data, tmp_path,
                                                                     caplog):
    """Sharing changes memory, not results: same run as with the GVM on its own copy of the base. A LoRA
    policy's decoder carries both adapters, each forward with its own active."""
    copy = tmp_path / "base-copy"
    shutil.copytree(tiny_model, copy)  # same weights, another path: no sharing
    for base, name in ((tiny_model, "shared"), (copy, "apart")):
        main(["gvm", "--model", str(base), "--data", str(lab_data["rated"]), "--out", str(tmp_path / f"gvm-{name}"),
              "--max-steps", "3", "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "96",
              "--lora-r", "4"])
    with caplog.at_level("INFO"):
        main(_rl_args(tiny_model, tmp_path / "gvm-shared", lab_data, tmp_path / "shared", "--steps", "2",
                      "--lora-r", policy_lora))
    assert any("share one frozen backbone" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO"):
        main(_rl_args(tiny_model, tmp_path / "gvm-apart", lab_data, tmp_path / "apart", "--steps", "2",
                      "--lora-r", policy_lora))
    assert not any("share one frozen backbone" in r.getMessage() for r in caplog.records)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "shared").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "apart").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    shared, apart = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                     for run in ("shared", "apart"))
    assert shared[0]["kl"] == 0.0  # the reference is the base model itself, every adapter off
    for a, b in zip(shared, apart):  # the same values, so the same advantages
        assert a["proxy_score"] == pytest.approx(b["proxy_score"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-6)


def test_a_runaway_response_length_stops_the_run_with_exit_code_3(tiny_model, tiny_gvm, lab_data, tmp_path, capsys):
    out = tmp_path / "runaway"
    # a limit below 1x trips on the first step; the step is still logged, with its length ratio
    with pytest.raises(SystemExit) as stopped:
        main(_rl_args(tiny_model, tiny_gvm, lab_data, out, "--max-length-ratio", "0.5"))
    assert stopped.value.code == 3
    assert "--max-length-ratio 0.5" in capsys.readouterr().err
    [record] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["length_ratio"] == 1.0


def test_rewards_are_standardised_by_the_reward_models_stored_statistics(tiny_rm, tiny_model):
    from dvpo.models.reward_model import load_reward_model
    from dvpo.trainers.sources.scoring import reward_scores

    rm = load_reward_model(tiny_rm)
    tokenizer = load_tokenizer(str(tiny_model))
    rows = [(encode_prompt(tokenizer, "sort 3 1 2"), tokenizer("1 2 3")["input_ids"]),
            (encode_prompt(tokenizer, "repeat 4 5"), tokenizer("4 5 hope this helps")["input_ids"])]
    raw = reward_scores(rm, rows, normalize=False)
    normalized = reward_scores(rm, rows)
    expected = (raw.double() - rm.meta.score_mean) / (rm.meta.score_std + 1e-6)
    torch.testing.assert_close(normalized.double(), expected, atol=1e-5, rtol=1e-5)


def test_reliability_weights_a_standardised_signal_by_validation_accuracy(tiny_rm, tiny_gvm, tiny_model, lab_data,
                                                                         tmp_path, caplog):
    """`reliability`: the stored standardisation times 2 * validation accuracy - 1, for the RM and the GVM alike."""
    import logging

    from dvpo.errors import ConfigError
    from dvpo.models.reward_model import load_reward_model
    from dvpo.models.value_model import load_value_model
    from dvpo.trainers.sources.scoring import reward_scores, signal_weight, warn_if_near_chance

    rm = load_reward_model(tiny_rm)
    recorded = json.loads((tiny_rm / "dvpo_complete.json").read_text())["validation_accuracy"]
    assert rm.meta.validation_accuracy == recorded
    weight = signal_weight(rm.meta, str(tiny_rm), "--reward-normalization")
    assert weight == max(0.0, 2 * recorded - 1)
    tokenizer = load_tokenizer(str(tiny_model))
    rows = [(encode_prompt(tokenizer, "sort 3 1 2"), tokenizer("1 2 3")["input_ids"]),
            (encode_prompt(tokenizer, "repeat 4 5"), tokenizer("4 5 hope this helps")["input_ids"])]
    torch.testing.assert_close(reward_scores(rm, rows, weight=0.25), 0.25 * reward_scores(rm, rows))

    gvm = load_value_model(tiny_gvm)
    assert gvm.meta.validation_accuracy == json.loads((tiny_gvm / "dvpo_complete.json").read_text())[
        "validation_accuracy"]
    caplog.clear()
    gvm.meta.validation_accuracy = 0.55
    with caplog.at_level(logging.INFO):
        warn_if_near_chance(gvm.meta, "lab-2 GVM")
        gvm.meta.validation_accuracy = 0.6
        warn_if_near_chance(gvm.meta, "a fair GVM")
    assert [r.getMessage()[:39] for r in caplog.records] == ["lab-2 GVM ranks only 55.0% of its valid"]
    gvm.meta.validation_accuracy = None  # as for a GVM trained with --validation-fraction 0
    with pytest.raises(ConfigError, match="records no validation accuracy"):
        signal_weight(gvm.meta, str(tiny_gvm), "--dvpo-normalization")

    out = tmp_path / "rl"
    with caplog.at_level(logging.INFO):
        main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(tiny_gvm), "--prompts",
              str(lab_data["prompts"]), "--out", str(out), "--steps", "1", "--rollout-batch-size", "4",
              "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "6",
              "--dvpo-normalization", "reliability"])
    assert (out / "dvpo_complete.json").is_file()
    assert any("so its standardised signal is weighted 2 * accuracy - 1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO):  # the blend's trust is the same weight, whatever the normalisation
        main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(tiny_gvm), "--prompts",
              str(lab_data["prompts"]), "--out", str(tmp_path / "blend"), "--steps", "1", "--rollout-batch-size", "4",
              "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "6",
              "--dvpo-normalization", "stored", "--dvpo-advantage", "blend"])
    logged = [r.getMessage() for r in caplog.records]
    assert any("the blend trusts its values of partial responses by 2 * accuracy - 1" in m for m in logged)
    assert not any("standardised signal is weighted" in m for m in logged)


@pytest.mark.parametrize("advantage", ["value", "difference", "gae"])
def test_dvpo_reliability_advantages_are_the_stored_ones_times_the_weight(advantage, tiny_gvm):
    """Without a KL penalty, every DVPO advantage is linear in the standardised values (gae's whitening aside)."""
    from dvpo.distributed import BatchStats
    from dvpo.models.value_model import load_value_model
    from dvpo.rollout.sampling import SampledBatch
    from dvpo.rollout.experience import Rollout
    from dvpo.trainers.sources.dvpo import DvpoSource

    gvm = load_value_model(tiny_gvm, device="cpu")
    tok = gvm.tokenizer
    prompts = ["sort 3 1 2", "reverse 7 8 9"]
    responses = [tok("1 2 3", add_special_tokens=False)["input_ids"], tok("9 8", add_special_tokens=False)["input_ids"]]
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    width, p_width = max(map(len, responses)), max(map(len, prompt_ids))
    seq = build_sequences(SampledBatch(
        prompt_ids=torch.tensor([[tok.pad_token_id] * (p_width - len(p)) + p for p in prompt_ids]),
        prompt_mask=torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p in prompt_ids]),
        response_ids=torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses]),
        response_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])))
    texts = [tok.decode(r) for r in responses]
    rollout = Rollout(seq, prompts, texts, prompts, texts, 0, BatchStats())
    kl = torch.zeros(2, width)

    def advantages(normalization, weight=1.0):
        source = DvpoSource(gvm, advantage, normalization, gamma=1.0, lam=0.95, weight=weight)
        return source.advantages(rollout, kl, kl_coef=0.0).advantages

    stored = advantages("stored")
    assert stored.abs().sum() > 0
    torch.testing.assert_close(advantages("reliability", 0.3), 0.3 * stored)
    assert advantages("reliability", 0.0).eq(0).all()


# --- every algorithm learns: a toy reward that a sign error would turn into a loss ------------------------

SHORT_REWARD = ("def short(prompts, completions, **kwargs):\n"
                "    return [-float(len(c.split())) for c in completions]\n")


@pytest.fixture(scope="module")
def short_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "short.py"
    path.write_text(SHORT_REWARD)
    return f"{path}:short"


@pytest.fixture(scope="module")
def short_gvm(tiny_model, lab_data, tmp_path_factory):
    """A GVM trained on the lab's rated responses rescored by the toy reward (fewer words score higher)."""
    root = tmp_path_factory.mktemp("toy-gvm")
    rows = [json.loads(line) for line in lab_data["rated"].read_text().splitlines()]
    (root / "rated.jsonl").write_text("".join(json.dumps({**row, "score": -float(len(row["completion"].split()))})
                                              + "\n" for row in rows))
    main(["gvm", "--model", str(tiny_model), "--data", str(root / "rated.jsonl"), "--out", str(root / "gvm"),
          "--max-steps", "60", "--batch-size", "16", "--learning-rate", "1e-3", "--max-length", "96", "--tau", "none",
          "--td-lambda", "1", "--value-normalization", "none", "--lora-r", "0", "--validation-fraction", "0"])
    return root / "gvm"


@pytest.mark.parametrize("algo", ["dvpo", "ppo", "remax", "grpo", "rloo"])
def test_every_algorithm_shortens_responses_for_a_reward_that_pays_for_brevity(algo, tiny_model, short_reward,
                                                                                short_gvm, lab_data, tmp_path):
    """From an untrained model, whose samples run to the token limit, each algorithm's responses get shorter
    when shorter ones are paid more: a negated advantage or loss would lengthen them. DVPO is paid by a GVM
    trained on the lab's responses, which on an untrained model's random tokens pays for more than brevity
    (lengths 11.9 -> 10.8 with 1 thread, 11.9 -> 12.0 with 2, while its value rose alike): so DVPO is held to
    what it optimises, its GVM's value of its samples (proxy_score), which a sign error would lower."""
    out = tmp_path / algo
    signal = ["--gvm", str(short_gvm), "--dvpo-normalization", "stored"] if algo == "dvpo" else \
        ["--reward-fn", short_reward]
    main(["rl", "--algo", algo, "--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]), "--out", str(out),
          *signal, "--steps", "20", "--rollout-batch-size", "16", "--mini-batch-size", "8", "--ppo-epochs", "2",
          "--group-size", "4", "--learning-rate", "3e-3", "--max-new-tokens", "12", "--kl-coef", "0.01",
          "--kl-target", "0", "--max-length-ratio", "0", "--max-kl", "0", "--save-every", "100"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if algo == "dvpo":
        proxy = [r["proxy_score"] for r in records]
        first, last = sum(proxy[:4]) / 4, sum(proxy[-4:]) / 4
        assert last > first + 0.5, f"dvpo: the GVM's value of its samples {first:.2f} -> {last:.2f}"
        return
    lengths = [r["response_length"] for r in records]
    first, last = sum(lengths[:4]) / 4, sum(lengths[-4:]) / 4
    assert last < first - 1.0, f"{algo}: response length {first:.1f} -> {last:.1f}"  # a sign error: towards 12


def test_responses_cut_at_the_cap_are_logged_and_warned_of_once(tiny_model, tiny_gvm, lab_data, tmp_path, caplog):
    """An untrained policy at 2 new tokens rarely reaches eos: clipped_ratio says so, and one warning names
    the option to raise."""
    out = tmp_path / "rl"
    args = _rl_args(tiny_model, tiny_gvm, lab_data, out)
    args[args.index("--max-new-tokens") + 1] = "2"
    args[args.index("--steps") + 1] = "2"
    with caplog.at_level("WARNING"):
        main(args)
    ratios = [json.loads(line)["clipped_ratio"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r <= 1.0 for r in ratios) and max(ratios) >= 0.25
    warnings = [r.getMessage() for r in caplog.records if "without EOS" in r.getMessage()]
    assert len(warnings) == 1 and "--max-new-tokens 2" in warnings[0]
