"""The static rollout engine against transformers' `generate`: the same tokens, greedy and sampled."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from dvpo.data.tokenize import encode_prompt
from dvpo.errors import ConfigError
from dvpo.rollout.experience import clipped_rows
from dvpo.rollout.prepacked import can_prepack, prepacked_linears
from dvpo.rollout.sampling import SharedNoise, resolve_engine, sample

PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, pad_token_id=PAD, eos_token_id=EOS,
                         bos_token_id=None, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def mixed_prompts(n: int = 6, seed: int = 1) -> list[list[int]]:
    """Prompts of 2 to 11 tokens, so the batch is left-padded."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 96, (2 + (3 * i) % 10,), generator=g).tolist() for i in range(n)]


def generate_reference(model, prompts, max_new_tokens, eos):
    """transformers' greedy `generate` on the same left-padded batch, cut after each row's eos."""
    from dvpo.data.collate import pad_sequences

    ids = pad_sequences(prompts, PAD, side="left")
    mask = pad_sequences([[1] * len(p) for p in prompts], 0, side="left")
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=PAD, eos_token_id=eos)[:, ids.shape[1]:]
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def responses(batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.response_ids, batch.response_mask)]


def an_eos_that_ends_one_row_early(model, prompts, max_new_tokens) -> int:
    """A token that greedy decoding emits early in some row but not in every row: as eos, it ends that row
    in the middle of the batch while others run to `max_new_tokens`."""
    free = generate_reference(model, prompts, max_new_tokens, eos=-1)
    for row in free:
        for token in row[1:4]:
            if sum(token in other for other in free) < len(free) // 2:
                return token
    pytest.skip("no token ends a row early for this random model")


def test_greedy_decoding_matches_generate_token_for_token(model):
    prompts = mixed_prompts()
    eos = an_eos_that_ends_one_row_early(model, prompts, 12)
    expected = generate_reference(model, prompts, 12, eos)
    got = responses(sample(model, prompts, PAD, eos, 12, temperature=0, engine="static"))
    assert got == expected
    lengths = [len(r) for r in got]
    assert min(lengths) < 12 and max(lengths) == 12  # eos in the middle of the batch, and the limit reached
    assert responses(sample(model, prompts, PAD, eos, 12, temperature=0, engine="hf")) == expected


def test_clipped_rows_are_those_the_cap_cut_before_eos(model):
    """Against the reference decode: a row is clipped exactly when it holds no eos (it then has 12 tokens)."""
    prompts = mixed_prompts()
    eos = an_eos_that_ends_one_row_early(model, prompts, 12)
    batch = sample(model, prompts, PAD, eos, 12, temperature=0, engine="static")
    expected = [eos not in row for row in generate_reference(model, prompts, 12, eos)]
    assert clipped_rows(batch.response_ids, batch.response_mask, eos).tolist() == expected
    assert True in expected and False in expected
    assert all(len(row) == 12 for row, cut in zip(responses(batch), expected) if cut)


def test_all_rows_ended_stops_decoding(model):
    prompts = mixed_prompts()
    first = sample(model, prompts, PAD, EOS, 12, temperature=0, engine="static").response_ids[:, 0].tolist()
    batch = sample(model, prompts, PAD, first[0], 12, temperature=0, engine="static")  # row 0 ends at once
    eos_rows = [i for i, token in enumerate(first) if token == first[0]]
    if len(eos_rows) == len(prompts):
        assert batch.response_ids.shape[1] == 1
    assert all(batch.response_mask[i].sum() == 1 for i in eos_rows)


@pytest.mark.parametrize("temperature,top_p,min_new_tokens", [(1.0, 1.0, 0), (0.7, 0.9, 5)])
def test_sampled_outputs_are_the_same_for_both_engines(model, temperature, top_p, min_new_tokens):
    prompts = mixed_prompts(8, seed=2)
    eos = an_eos_that_ends_one_row_early(model, prompts, 10)
    runs = {engine: sample(model, prompts, PAD, eos, 10, temperature, top_p, num_samples=2,
                           min_new_tokens=min_new_tokens, noise=SharedNoise(7), engine=engine)
            for engine in ("hf", "static")}
    assert torch.equal(runs["hf"].response_ids, runs["static"].response_ids)
    assert torch.equal(runs["hf"].response_mask, runs["static"].response_mask)
    assert runs["static"].response_mask.sum(dim=1).min() >= min_new_tokens
    other_seed = sample(model, prompts, PAD, eos, 10, temperature, top_p, num_samples=2,
                        min_new_tokens=min_new_tokens, noise=SharedNoise(8), engine="static")
    assert not torch.equal(other_seed.response_ids, runs["static"].response_ids)


def test_the_cache_is_freed_when_sampling_returns(model):
    """Nothing of a call's static cache outlives it, so peak memory does not grow from step to step."""
    import gc

    from transformers import StaticCache

    sample(model, mixed_prompts(), PAD, EOS, 6, engine="static")
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, StaticCache)]


def test_a_process_share_draws_its_rows_of_the_global_batch(model):
    """Rows 2..5 sampled alone with the global batch's noise equal rows 2..5 of the whole batch."""
    prompts = mixed_prompts(6, seed=3)
    whole = sample(model, prompts, PAD, EOS, 8, noise=SharedNoise(11), engine="static")
    share = sample(model, prompts[2:], PAD, EOS, 8, noise=SharedNoise(11, row_offset=2, global_rows=6),
                   engine="static")
    assert responses(share) == responses(whole)[2:]


def test_a_lora_policy_decodes_the_same_with_both_engines(model):
    lora = get_peft_model(LlamaForCausalLM(model.config), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                                     target_modules=["q_proj", "v_proj"]))
    lora.eval()
    prompts = mixed_prompts(5, seed=4)
    runs = [responses(sample(lora, prompts, PAD, EOS, 10, temperature=0.9, noise=SharedNoise(3), engine=engine))
            for engine in ("hf", "static")]
    assert runs[0] == runs[1]
    with lora.disable_adapter():  # the adapters change what is decoded, so they were used
        assert responses(sample(lora, prompts, PAD, EOS, 10, temperature=0.9, noise=SharedNoise(3),
                                engine="static")) != runs[1]


def test_a_models_generation_rules_are_not_applied(model):
    """A penalty or a suppressed token in the model's generation_config would make rollouts off-policy: neither
    engine applies them, so both still draw the same tokens as without them, and the config is kept."""
    import copy

    prompts = mixed_prompts(4, seed=5)
    plain = responses(sample(model, prompts, PAD, EOS, 10, temperature=0, engine="static"))
    ruled = copy.deepcopy(model)
    ruled.generation_config.repetition_penalty = 3.0
    ruled.generation_config.no_repeat_ngram_size = 1
    ruled.generation_config.suppress_tokens = [plain[0][0]]
    assert responses(sample(ruled, prompts, PAD, EOS, 10, temperature=0, engine="hf")) == plain
    assert responses(sample(ruled, prompts, PAD, EOS, 10, temperature=0, engine="static")) == plain
    assert ruled.generation_config.repetition_penalty == 3.0


def test_a_real_tokenizer_and_lab_model_decode_the_same(tiny_model, lab_data):
    import json

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lab_model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = [json.loads(line)["prompt"] for line in open(lab_data["prompts"], encoding="utf-8")][:8]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    runs = [sample(lab_model, ids, tokenizer.pad_token_id, tokenizer.eos_token_id, 16, noise=SharedNoise(0),
                   engine=engine) for engine in ("hf", "static")]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)


@pytest.mark.skipif(not can_prepack(), reason="this torch build has no oneDNN")
def test_prepacked_linears_agree_with_torch_and_are_undone(model):
    ids = torch.tensor([mixed_prompts(1)[0]])
    before = model(input_ids=ids).logits
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with prepacked_linears(model, rows=1) as packed:
        inside = model(input_ids=ids).logits
        with prepacked_linears(model, rows=1) as nested:  # already packed: left alone
            assert nested == 0
    assert packed == linears
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(model(input_ids=ids).logits, before)  # torch's own matmul again, bit for bit
    assert all("forward" not in vars(m) for m in model.modules())
    hooked = model.lm_head
    hooked.forward = hooked.forward  # an instance-level forward, as accelerate's hooks install: kept
    try:
        with prepacked_linears(model, rows=1) as packed:
            assert packed == linears - 1
        assert "forward" in vars(hooked)
    finally:
        del hooked.forward


def test_engine_choice(model):
    """`auto`: generate for small models on CPU, the static engine from 4M parameters (measured crossover)."""
    assert resolve_engine("auto", model) == "hf"
    assert resolve_engine("static", model) == "static"
    large = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=4))
    assert sum(p.numel() for p in large.parameters()) >= 4_000_000
    assert resolve_engine("auto", large) == "static"
    assert resolve_engine("hf", large) == "hf"
    with pytest.raises(ConfigError, match="--rollout-engine must be one of"):
        resolve_engine("vllm", model)


def test_sharded_parameters_decode_with_generate():
    sharded = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2))
    next(sharded.parameters()).ds_id = 0  # how DeepSpeed ZeRO-3 marks a partitioned parameter
    assert resolve_engine("auto", sharded) == "hf"
    with pytest.raises(ConfigError, match="needs whole weights"):
        resolve_engine("static", sharded)


def test_static_engine_with_fsdp_fails_before_any_file(tiny_model, tiny_gvm, lab_data, tmp_path, capsys):
    from dvpo.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["rl", "--algo", "dvpo", "--policy", str(tiny_model), "--gvm", str(tiny_gvm), "--prompts",
              str(lab_data["prompts"]), "--out", str(tmp_path / "x"), "--fsdp", "--rollout-engine", "static"])
    assert stop.value.code == 2 and "--fsdp shards them" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
