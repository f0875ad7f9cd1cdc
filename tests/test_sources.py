"""The advantage sources on hand-built rollouts, each against an independent reference; the registry;
reward functions (TRL's convention) and their errors; RLOO and reward functions through `dvpo rl`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvpo.cli import main
from dvpo.errors import ConfigError
from dvpo.data.tokenize import encode_prompt
from dvpo.distributed import BatchStats
from dvpo.errors import RewardFunctionError
from dvpo.models.loading import load_causal_lm, load_tokenizer
from dvpo.rollout.experience import Experience, ExperienceMaker, Rollout, build_sequences, critic_values
from dvpo.rollout.sampling import SampledBatch
from dvpo.trainers.sources import SOURCE_NAMES, SOURCES, source_class
from dvpo.trainers.sources.scoring import SequenceScorer
from dvpo.user_functions import RewardFunction

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "lab_rewards.py"


def hand_rollout(tokenizer, prompts, responses, columns=None) -> Rollout:
    """A left-padded rollout of these prompts and response texts, each closed by eos, as the loop samples it."""
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
    pad = tokenizer.pad_token_id
    p_width, width = max(map(len, prompt_ids)), max(map(len, response_ids))
    seq = build_sequences(SampledBatch(
        prompt_ids=torch.tensor([[pad] * (p_width - len(p)) + p for p in prompt_ids]),
        prompt_mask=torch.tensor([[0] * (p_width - len(p)) + [1] * len(p) for p in prompt_ids]),
        response_ids=torch.tensor([r + [pad] * (width - len(r)) for r in response_ids]),
        response_mask=torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in response_ids])))
    texts = list(responses)
    return Rollout(seq, list(prompts), texts, list(prompts), texts, 0, BatchStats(),
                   columns or [{} for _ in prompts])


def write_reward_file(folder: Path, body: str) -> Path:
    path = folder / "rewards.py"
    path.write_text(body)
    return path


LENGTH_REWARD = "def length(prompts, completions, **kwargs):\n    return [float(len(c.split())) for c in completions]\n"


# --- the registry -------------------------------------------------------------------------------------

def test_every_registered_source_is_an_option_and_a_compare_method():
    from dvpo.stage_options import COMPARE_METHODS, RlConfig

    assert set(SOURCE_NAMES) == {"dvpo", "ppo", "remax", "grpo", "rloo"}
    from dvpo.eval.compare_report import NAMES
    assert NAMES["rloo"] == "RLOO" and NAMES["remax"] == "ReMax"
    assert set(SOURCE_NAMES) < set(COMPARE_METHODS)
    algo_field = RlConfig.__dataclass_fields__["algo"]
    assert algo_field.metadata["choices"] == list(SOURCE_NAMES)
    for name in SOURCES:
        cls = source_class(name)
        assert cls.name == name and callable(cls.build) and callable(cls.check)
    with pytest.raises(ValueError, match="unknown RL algorithm 'a2c'"):
        source_class("a2c")


def test_the_loop_names_no_algorithm():
    """The loop reads what a source declares; it never branches on the algorithm's name."""
    found = subprocess.run(["grep", "-rn", "algo ==", str(REPO / "src" / "dvpo" / "trainers")],
                           capture_output=True, text=True)
    assert found.stdout == ""


def test_an_option_the_algorithm_ignores_fails_before_any_file_is_written(tiny_model, tiny_gvm, lab_data, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    common = ["--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]), "--out", str(out), "--steps", "1"]
    with pytest.raises(SystemExit) as stop:
        main(["rl", "--algo", "ppo", "--gvm", str(tiny_gvm), "--reward-fn", f"{EXAMPLE}:exact_answer", *common])
    assert stop.value.code == 2 and "--algo ppo does not use --gvm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--algo", "dvpo", "--gvm", str(tiny_gvm), "--reward-fn", f"{EXAMPLE}:exact_answer", *common])
    assert "--algo dvpo does not use --reward-fn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--algo", "grpo", *common])
    assert "--algo grpo needs --reward-model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--algo", "rloo", "--group-size", "1", "--reward-fn", f"{EXAMPLE}:exact_answer", *common])
    assert "--group-size of at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--algo", "grpo", "--reward-fn", f"{EXAMPLE}:exact_answer", "--reward-weights", "1", "2",
              *common])
    assert "--reward-weights has 2 value(s) for 1" in capsys.readouterr().err
    assert not out.exists()


# --- reward functions ---------------------------------------------------------------------------------

def test_reward_functions_follow_trls_convention_and_are_summed_with_weights(tmp_path):
    path = write_reward_file(tmp_path, LENGTH_REWARD + (
        "def echo_answer(prompts, completions, answer, **kwargs):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"))
    scorer = SequenceScorer(functions=[RewardFunction(f"{path}:length"), RewardFunction(f"{path}:echo_answer")],
                            function_weights=[0.5, 2.0])
    rows = [([1], [2]), ([1], [2, 3])]
    scores = scorer(rows, ["p", "q"], ["a b c", "x"], [{"answer": "a b c"}, {"answer": "y"}])
    torch.testing.assert_close(scores, torch.tensor([0.5 * 3 + 2.0, 0.5 * 1 + 0.0]))
    example = RewardFunction(f"{EXAMPLE}:exact_answer")
    assert example(["sort 3 1 2", "reverse 1 2"], ["1 2 3", "2 1 ok"], [{}, {}]).tolist() == [1.0, 0.0]
    sys.path.insert(0, str(tmp_path))
    try:  # module:name works as well as a file path
        assert RewardFunction("rewards:length")(["p"], ["a b"], [{}]).tolist() == [2.0]
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("body, message", [
    ("def f(prompts, completions, **kw):\n    raise KeyError('answer')\n", "raised KeyError: 'answer'"),
    ("def f(prompts, completions, **kw):\n    return [1.0]\n", "returned 1 value(s) for 2 completions"),
    ("def f(prompts, completions, **kw):\n    return [1.0, float('nan')]\n", "non-finite value (nan) for completion 1"),
    ("def f(prompts, completions, **kw):\n    return 'good'\n", "must return a list of numbers"),
])
def test_a_bad_reward_function_stops_with_its_name(tmp_path, body, message):
    fn = RewardFunction(f"{write_reward_file(tmp_path, body)}:f")
    with pytest.raises(RewardFunctionError, match="--reward-fn function .*rewards.py:f") as error:
        fn(["p", "q"], ["a", "b"], [{}, {}])
    assert message in str(error.value)


def test_a_reward_function_that_cannot_be_loaded_is_a_config_error(tmp_path):
    path = write_reward_file(tmp_path, "def f(x):\n    return x\nimport no_such_module_xyz\n")
    for spec, message in [("no_colon", "expected path/to/file.py:name"), (f"{tmp_path}/none.py:f", "no file"),
                          (f"{path}:f", "importing .* raised ModuleNotFoundError"),
                          ("dvpo_no_such_module:f", "cannot import module"),
                          (f"{EXAMPLE}:missing", "has no function 'missing'")]:
        with pytest.raises(ConfigError, match=message):
            RewardFunction(spec)
    narrow = write_reward_file(tmp_path, "def f(texts):\n    return [0.0]\n")
    with pytest.raises(ConfigError, match="must accept prompts and completions"):
        RewardFunction(f"{narrow}:f")


# --- each source against an independent reference ------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


PROMPTS = ["sort 3 1 2", "reverse 7 8 9", "repeat 4 5 6", "sort 9 1 5"]
RESPONSES = ["1 2 3", "9 8", "4 5 6 hope this helps", "1 5 9"]


def test_dvpo_reads_tau_from_another_prompt_and_values_every_response_token(tiny_gvm, tokenizer):
    """Each row's GVM input is [tau; prompt; response], tau another prompt's sample drawn by GVM training's rule,
    exactly what `ValueModel.encode` builds in GVM training; advantage `value` without KL is the token's own
    slot value."""
    from dvpo.data.tau import sample_tau_sets
    from dvpo.models.value_model import load_value_model
    from dvpo.trainers.sources.dvpo import DvpoSource

    gvm = load_value_model(tiny_gvm, device="cpu")
    assert gvm.meta.tau
    rollout = hand_rollout(tokenizer, PROMPTS, RESPONSES)
    source = DvpoSource(gvm, "value", "none", gamma=1.0, lam=0.95)
    ids, attention, starts, lengths = source.gvm_inputs(rollout)
    mask = rollout.seq.response_mask
    advantages = source.advantages(rollout, torch.zeros_like(mask), kl_coef=0.0).advantages
    partners = sample_tau_sets(PROMPTS, [None] * 4, rollout.seed, pairs=1)
    assert all(PROMPTS[j] != PROMPTS[i] for i, [j] in enumerate(partners))
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        [partner] = partners[i]
        expected, start, length, _ = gvm.encode(prompt, response, tau=[(PROMPTS[partner], RESPONSES[partner])])
        row = ids[i][attention[i].bool()].tolist()
        assert row == expected and int(starts[i]) == start and int(lengths[i]) == length
        alone = torch.tensor([expected])
        values, _ = gvm.slot_values(alone, torch.ones_like(alone), torch.tensor([start]), torch.tensor([length]),
                                    normalized=False)
        n = int(mask[i].sum())
        assert length == n + 1
        torch.testing.assert_close(advantages[i, :n], values[0, 1:n + 1], atol=1e-5, rtol=1e-5)
        assert advantages[i, n:].abs().sum() == 0


def test_ppo_gae_runs_over_the_critic_with_the_score_on_the_last_token(tiny_model, tokenizer, tmp_path):
    from dvpo.models.value_model import build_value_model
    from dvpo.trainers.sources.ppo import PpoSource

    scorer = SequenceScorer(functions=[RewardFunction(f"{write_reward_file(tmp_path, LENGTH_REWARD)}:length")])
    critic = build_value_model(str(tiny_model)).eval()
    rollout = hand_rollout(tokenizer, PROMPTS, RESPONSES)
    mask = rollout.seq.response_mask
    kl = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) * mask
    beta, lam = 0.3, 0.9
    exp = PpoSource(scorer, critic, gamma=1.0, lam=lam, value_clip=0.2).advantages(rollout, kl, beta)
    with torch.no_grad():
        values = critic_values(critic, rollout.seq).double()
    for i, response in enumerate(RESPONSES):
        n = int(mask[i].sum())
        rewards = [-beta * float(kl[i, t]) for t in range(n)]
        rewards[-1] += len(response.split())  # the score on the last token
        advantage, expected = 0.0, [0.0] * n
        for t in reversed(range(n)):  # GAE, gamma 1, V after the last token 0
            after = float(values[i, t + 1]) if t + 1 < n else 0.0
            advantage = rewards[t] + after - float(values[i, t]) + lam * advantage
            expected[t] = advantage
        torch.testing.assert_close(exp.advantages[i, :n].double(), torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(exp.returns[i, :n].double(), torch.tensor(expected, dtype=torch.float64)
                                   + values[i, :n], atol=1e-4, rtol=1e-4)
    assert exp.metrics["proxy_score"] == pytest.approx(sum(len(r.split()) for r in RESPONSES) / 4)
    zeros = torch.zeros_like(mask)
    experience = Experience(rollout.seq, zeros, zeros, kl, exp.advantages, exp.old_values, exp.returns)
    loss, stats = PpoSource(scorer, critic, 1.0, lam, 0.2).value_loss(experience.rows(torch.tensor([0, 2])))
    assert loss.item() > 0 and "value_clip_frac" in stats


def test_grpo_standardises_within_each_prompts_group(tokenizer, tmp_path):
    from dvpo.trainers.sources.grpo import GrpoSource

    scorer = SequenceScorer(functions=[RewardFunction(f"{write_reward_file(tmp_path, LENGTH_REWARD)}:length")])
    prompts = ["sort 3 1 2"] * 2 + ["reverse 7 8 9"] * 2
    responses = ["1 2 3", "1 2", "9 8 7", "9 8 7"]
    rollout = hand_rollout(tokenizer, prompts, responses)
    exp = GrpoSource(scorer, group_size=2).advantages(rollout, torch.zeros_like(rollout.seq.response_mask), 0.0)
    first = (3 - 2.5) / (math.sqrt(0.5) + 1e-4)  # unbiased std of (3, 2) is sqrt(0.5)
    assert exp.advantages[0, 0].item() == pytest.approx(first, rel=1e-5)
    assert exp.advantages[1, 0].item() == pytest.approx(-first, rel=1e-5)
    assert exp.advantages[2:].abs().sum() == 0  # equal rewards: no signal
    assert (exp.advantages[1, 3:] == 0).all()  # padding gets nothing ("1 2" and eos are 3 tokens)
    assert GrpoSource.kl_in_loss and GrpoSource.samples_per_prompt(type("C", (), {"group_size": 2})) == 2


def test_rloo_baseline_is_the_mean_of_the_others_with_the_kl_in_the_reward(tokenizer, tmp_path):
    from dvpo.trainers.sources.rloo import RlooSource

    scorer = SequenceScorer(functions=[RewardFunction(f"{write_reward_file(tmp_path, LENGTH_REWARD)}:length")])
    prompts = ["sort 3 1 2"] * 3 + ["reverse 7 8 9"] * 3
    responses = ["1 2 3", "1 2", "1", "9 8 7", "9 8 7", "9"]
    rollout = hand_rollout(tokenizer, prompts, responses)
    mask = rollout.seq.response_mask
    kl = torch.full(mask.shape, 0.5) * mask
    beta = 0.2
    exp = RlooSource(scorer, group_size=3).advantages(rollout, kl, beta)
    rewards = [len(r.split()) - beta * 0.5 * int(mask[i].sum()) for i, r in enumerate(responses)]
    for i in range(6):
        group = rewards[(i // 3) * 3:(i // 3) * 3 + 3]
        others = (sum(group) - rewards[i]) / 2
        n = int(mask[i].sum())
        torch.testing.assert_close(exp.advantages[i, :n], torch.full((n,), rewards[i] - others), atol=1e-5, rtol=1e-5)


def test_remax_baseline_is_the_reward_of_the_policys_greedy_response(tiny_model, tokenizer, tmp_path):
    from dvpo.rollout.sampling import sample
    from dvpo.trainers.sources.remax import RemaxSource

    scorer = SequenceScorer(functions=[RewardFunction(f"{write_reward_file(tmp_path, LENGTH_REWARD)}:length")])
    policy = load_causal_lm(str(tiny_model)).eval()
    rollout = hand_rollout(tokenizer, PROMPTS, RESPONSES)
    source = RemaxSource(scorer, policy, tokenizer, max_new_tokens=6)
    exp = source.advantages(rollout, torch.zeros_like(rollout.seq.response_mask), 0.0)
    greedy_lengths = []
    for prompt in PROMPTS:  # one prompt at a time: no padding in the reference
        one = build_sequences(sample(policy, [encode_prompt(tokenizer, prompt)], tokenizer.pad_token_id,
                                     tokenizer.eos_token_id, 6, temperature=0))
        text = tokenizer.decode(one.response_ids[0][one.response_mask[0].bool()], skip_special_tokens=True)
        greedy_lengths.append(len(text.split()))
    for i, response in enumerate(RESPONSES):
        assert exp.advantages[i, 0].item() == pytest.approx(len(response.split()) - greedy_lengths[i])
    assert exp.metrics["greedy_proxy_score"] == pytest.approx(sum(greedy_lengths) / 4)


def test_the_experience_maker_fills_one_experience(tiny_model, tokenizer, tmp_path):
    """Old and reference log-probs, KL, the source's advantages whitened over the batch, in one object; with one
    update per step the old log-probs are the update's own forward, detached."""
    from dvpo.algos.masked import masked_mean, masked_var
    from dvpo.rollout.experience import frozen_logprobs
    from dvpo.trainers.sources.grpo import GrpoSource

    scorer = SequenceScorer(functions=[RewardFunction(f"{write_reward_file(tmp_path, LENGTH_REWARD)}:length")])
    policy = load_causal_lm(str(tiny_model)).eval()
    rollout = hand_rollout(tokenizer, ["sort 3 1 2"] * 2 + ["reverse 7 8 9"] * 2, ["1 2 3", "1", "9 8", "7"])
    source = GrpoSource(scorer, group_size=2)
    for one_update in (False, True):
        maker = ExperienceMaker(policy, policy, source, BatchStats(), temperature=1.0, rows=2, whiten=True,
                                one_update=one_update)
        experience, live = maker.make(rollout, kl_coef=0.1)
        assert (live is not None) == one_update and experience.seq is rollout.seq
        torch.testing.assert_close(experience.old_logp, frozen_logprobs(policy, rollout.seq, 1.0, 4))
        torch.testing.assert_close(experience.ref_logp, experience.old_logp)
        assert experience.kl.abs().max() < 1e-6  # the policy is its own reference
        mask = experience.mask
        assert masked_mean(experience.advantages, mask).abs() < 1e-6
        assert masked_var(experience.advantages, mask, unbiased=True) == pytest.approx(1.0, abs=1e-4)
        assert "proxy_score" in experience.metrics
        half = experience.rows(torch.tensor([1, 3]))
        torch.testing.assert_close(half.advantages, experience.advantages[[1, 3]])


def test_forwards_skip_padding_and_give_each_row_what_it_gets_alone(tiny_model, tiny_gvm, tokenizer):
    """Log-probs, critic values and GVM values over length-sorted, trimmed chunks equal each row's own forward
    at its own length (no padding at all)."""
    from dvpo.models.value_model import build_value_model, load_value_model
    from dvpo.rollout.experience import frozen_logprobs, length_sorted_chunks, response_hidden_slice
    from dvpo.trainers.sources.dvpo import DvpoSource

    prompts = ["sort 3 1 2 8 8 1 0 4", "reverse 7", "repeat 4 5 6", "sort 9"]
    responses = ["1 2 3", "7", "4 5 6 hope this helps you", "9"]
    rollout = hand_rollout(tokenizer, prompts, responses)
    seq = rollout.seq
    assert [len(c) for c in length_sorted_chunks(torch.tensor([3, 9, 1, 9]), 2)] == [2, 2]
    assert length_sorted_chunks(torch.tensor([3, 9, 1, 9]), 2)[0].tolist() == [1, 3]  # longest first, stable
    trimmed = seq.rows(torch.tensor([1, 3])).trimmed()  # two short rows: most of the batch's width is padding
    assert trimmed.input_ids.shape[1] < seq.input_ids.shape[1] and trimmed.response_ids.shape[1] == 2

    policy = load_causal_lm(str(tiny_model)).eval()
    critic = build_value_model(str(tiny_model)).eval()
    logp = frozen_logprobs(policy, seq, 1.0, rows=2)
    values = critic_values(critic, seq)
    for i in range(len(prompts)):
        keep = seq.attention_mask[i].bool()
        ids, positions = seq.input_ids[i][keep][None], seq.position_ids[i][keep][None]
        n, p = int(seq.response_mask[i].sum()), int(seq.attention_mask[i, : seq.prompt_width].sum())
        with torch.no_grad():
            alone = torch.log_softmax(policy(input_ids=ids, position_ids=positions).logits[0, p - 1:-1].float(), -1)
            alone_values = critic(input_ids=ids, position_ids=positions).logits[0, p - 1:-1, 0]
        torch.testing.assert_close(logp[i, :n], alone.gather(1, ids[0, p:, None])[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values[i, :n], alone_values, atol=1e-5, rtol=1e-5)
        assert logp[i, n:].abs().sum() == 0 and values[i, n:].abs().sum() == 0
    assert response_hidden_slice(seq) == slice(seq.prompt_width - 1, seq.input_ids.shape[1] - 1)

    gvm = load_value_model(tiny_gvm, device="cpu")
    inputs = DvpoSource(gvm, "value", "none", 1.0, 0.95).gvm_inputs(rollout)
    whole = gvm.slot_values(*inputs, normalized=False)
    chunked = DvpoSource(gvm, "value", "none", 1.0, 0.95, forward_rows=1).slot_values(*inputs)
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked[1], whole[1])


# --- through `dvpo rl` ----------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["rloo", "ppo"])
def test_rl_trains_on_a_reward_function_without_a_reward_model(algo, tiny_model, lab_data, tmp_path):
    out = tmp_path / algo
    main(["rl", "--algo", algo, "--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]), "--out", str(out),
          "--reward-fn", f"{EXAMPLE}:exact_answer", f"{EXAMPLE}:digits_only", "--reward-weights", "1", "0.5",
          "--steps", "2", "--rollout-batch-size", "4", "--group-size", "2", "--mini-batch-size", "2",
          "--ppo-epochs", "1", "--max-new-tokens", "6"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "proxy_score" in records[-1] and (out / "dvpo_complete.json").exists()


def test_a_failing_reward_function_stops_the_run_with_a_clear_error(tiny_model, lab_data, tmp_path, capsys):
    path = write_reward_file(tmp_path, "def half(prompts, completions, **kw):\n    return [0.0] * (len(completions) // 2)\n")
    with pytest.raises(SystemExit) as stop:
        main(["rl", "--algo", "grpo", "--policy", str(tiny_model), "--prompts", str(lab_data["prompts"]),
              "--out", str(tmp_path / "run"), "--reward-fn", f"{path}:half", "--steps", "1",
              "--rollout-batch-size", "4", "--group-size", "2", "--mini-batch-size", "4", "--max-new-tokens", "4"])
    assert stop.value.code == 2
    assert f"--reward-fn function {path}:half returned 2 value(s) for 4 completions" in capsys.readouterr().err


def test_dvpo_authors_form_whitens_each_rows_values_over_all_its_positions(tiny_gvm, tokenizer):
    """`--dvpo-advantage authors` reads the value of the state before each token, whitened with the row's own
    statistics over its whole GVM input (prompt included), and pays only the KL."""
    from dvpo.algos.advantages import dvpo_authors_advantages
    from dvpo.models.value_model import load_value_model
    from dvpo.trainers.sources.dvpo import DvpoSource

    gvm = load_value_model(tiny_gvm, device="cpu")
    rollout = hand_rollout(tokenizer, PROMPTS, RESPONSES)
    source = DvpoSource(gvm, "authors", "none", gamma=1.0, lam=0.95)
    assert source.whiten_default
    mask = rollout.seq.response_mask
    kl = 0.05 * torch.ones_like(mask) * mask
    got = source.advantages(rollout, kl, kl_coef=0.2).advantages
    ids, attention, starts, lengths = source.gvm_inputs(rollout)
    for i in range(len(PROMPTS)):
        row = ids[i][attention[i].bool()][None]
        logits = gvm.model(input_ids=row, attention_mask=torch.ones_like(row)).logits.squeeze(-1).float()[0]
        n = int(mask[i].sum())
        before = logits[int(starts[i]): int(starts[i]) + n][None]
        expected = dvpo_authors_advantages(before, torch.ones(1, n), logits.mean()[None], logits.var()[None],
                                           0.2 * kl[i: i + 1, :n])
        torch.testing.assert_close(got[i, :n], expected[0], atol=1e-4, rtol=1e-4)
        assert got[i, n:].abs().sum() == 0


def test_the_kl_enters_the_loss_or_the_reward_never_both():
    """One decision per run: GRPO (and every source under --kl-penalty loss) puts β·k3 in the loss and gets β = 0
    for its reward; the others get β for their reward and no loss term."""
    from types import SimpleNamespace

    from dvpo.trainers.sources.base import kl_enters_loss

    for name in SOURCE_NAMES:
        assert kl_enters_loss(SimpleNamespace(kl_penalty="reward"), source_class(name)) == (name == "grpo")
        assert kl_enters_loss(SimpleNamespace(kl_penalty="loss"), source_class(name))


def test_dvpos_gae_lambda_defaults_to_its_forms_own_and_ppos_is_separate():
    """`gae` values with λ 1 (chosen on validation), `authors` with their code's 0.95, unless
    --dvpo-gae-lambda says otherwise; PPO's --gae-lambda does not reach DVPO."""
    from dvpo.stage_options import RlConfig
    from dvpo.trainers.sources.dvpo import dvpo_lambda

    def lam(**changes):
        return dvpo_lambda(RlConfig(algo="dvpo", policy="p", prompts="q", out="o", gae_lambda=0.5, **changes))

    assert lam(dvpo_advantage="gae") == 1.0
    assert lam(dvpo_advantage="authors") == 0.95
    assert lam(dvpo_advantage="gae", dvpo_gae_lambda=0.9) == 0.9
    assert lam(dvpo_advantage="authors", dvpo_gae_lambda=1.0) == 1.0
