"""Unit tests of dvpo.algos: every function against a float64 Python loop or hand numbers."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvpo.algos.advantages import (
    broadcast_sequence_advantage,
    dvpo_difference_advantages,
    dvpo_value_advantages,
    group_normalized_advantages,
    leave_one_out_advantages,
    reliability_weight,
    remax_advantages,
)
from dvpo.algos.masked import masked_mean, masked_sum, masked_var, masked_whiten
from dvpo.algos.pairwise import bradley_terry_loss
from dvpo.algos.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    per_token_rewards,
    ppo_clip_loss,
)
from dvpo.algos.td import (
    last_token_rewards,
    moments_std,
    normalize_scores,
    score_normalizer,
    td_lambda_targets,
    update_moments,
    value_normalization,
)

D = torch.float64


def prefix_mask(lengths, T, dtype=D):
    return torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths], dtype=dtype)


# ----------------------------------------------------------------------------- references (pure Python, float64)


def ref_td_lambda(values, rewards, lengths, gamma, lam):
    out = []
    for v, r, n in zip(values, rewards, lengths):
        row = [0.0] * len(v)
        next_q, next_g = 0.0, 0.0
        for t in reversed(range(n)):
            g = r[t] + gamma * ((1 - lam) * next_q + lam * next_g)
            row[t] = g
            next_q, next_g = v[t], g
        out.append(row)
    return out


def ref_gae(values, rewards, lengths, gamma, lam):
    advs, rets = [], []
    for v, r, n in zip(values, rewards, lengths):
        a_row, r_row = [0.0] * len(v), [0.0] * len(v)
        next_v, next_a = 0.0, 0.0
        for t in reversed(range(n)):
            delta = r[t] + gamma * next_v - v[t]
            a = delta + gamma * lam * next_a
            a_row[t], r_row[t] = a, a + v[t]
            next_v, next_a = v[t], a
        advs.append(a_row)
        rets.append(r_row)
    return advs, rets


@st.composite
def batches(draw, max_b=4, max_t=9):
    B = draw(st.integers(1, max_b))
    T = draw(st.integers(0, max_t))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(B, T)).tolist()
    rewards = rng.normal(size=(B, T)).tolist()
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return values, rewards, lengths, T, gamma, lam


# ----------------------------------------------------------------------------- masked


def test_masked_mean_sum_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_sum(x, m).item() == pytest.approx(6.0)
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([1.5, 3.0])
    assert masked_sum(x, m, dim=1).tolist() == pytest.approx([3.0, 3.0])
    # a row with no valid token gives 0, not NaN
    assert masked_mean(x, torch.zeros_like(m), dim=1).tolist() == [0.0, 0.0]
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_masked_var_matches_numpy():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 5)))
    m = prefix_mask([5, 2, 0], 5)
    valid = x[m.bool()].numpy()
    assert masked_var(x, m).item() == pytest.approx(np.var(valid, ddof=1), rel=1e-12)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(np.var(valid), rel=1e-12)
    # one valid token: no measurable spread
    assert masked_var(x, prefix_mask([1, 0, 0], 5)).item() == 0.0


def test_masked_whiten_zero_mean_unit_var_and_zero_padding():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(3.0, 5.0, size=(4, 6)))
    x_copy = x.clone()
    m = prefix_mask([6, 3, 1, 0], 6)
    w = masked_whiten(x, m)
    valid = w[m.bool()].numpy()
    assert abs(valid.mean()) < 1e-10
    assert np.var(valid, ddof=1) == pytest.approx(1.0, rel=1e-6)
    assert torch.all(w[~m.bool()] == 0)
    assert torch.equal(x, x_copy)
    # shift_mean=False keeps the mean, rescales only
    w2 = masked_whiten(x, m, shift_mean=False)
    mean = x[m.bool()].mean().item()
    assert w2[m.bool()].mean().item() == pytest.approx(mean, rel=1e-9)
    assert torch.all(w2[~m.bool()] == 0)
    # reference by hand
    xv = x[m.bool()].numpy()
    expected = (xv - xv.mean()) / math.sqrt(np.var(xv, ddof=1) + 1e-8)
    np.testing.assert_allclose(valid, expected, rtol=1e-12)


def test_mask_shape_mismatch_raises():
    with pytest.raises(ValueError):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4))


# ----------------------------------------------------------------------------- TD targets


def test_last_token_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0, 7.0])
    m = prefix_mask([3, 1, 0], 4, dtype=torch.float32)
    out = last_token_rewards(scores, m)
    assert out.tolist() == [[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 0]]
    assert last_token_rewards(scores, m.bool()).tolist() == out.tolist()


def test_td0_three_token_example():
    values = torch.tensor([[1.0, 2.0, 3.0]], dtype=D)
    rewards = torch.tensor([[0.0, 0.0, 5.0]], dtype=D)
    m = torch.ones(1, 3, dtype=D)
    g = td_lambda_targets(values, rewards, m, gamma=0.9, lam=0.0)
    # r_t + gamma * Q_{t+1}; nothing after the last token
    np.testing.assert_allclose(g.numpy(), [[0.9 * 2.0, 0.9 * 3.0, 5.0]], rtol=1e-12)


def test_td_lambda_half_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0]], dtype=D)
    rewards = torch.tensor([[0.0, 0.0, 5.0, 9.0]], dtype=D)
    m = prefix_mask([3], 4)
    g = td_lambda_targets(values, rewards, m, gamma=1.0, lam=0.5)
    # G3 = 5; G2 = 0.5*3 + 0.5*5 = 4; G1 = 0.5*2 + 0.5*4 = 3; padding 0
    np.testing.assert_allclose(g.numpy(), [[3.0, 4.0, 5.0, 0.0]], rtol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 0.99, 0.5])
def test_td_lambda_one_is_discounted_final_reward(gamma):
    lengths = [5, 3, 1, 0]
    T = 5
    scores = torch.tensor([1.5, -2.0, 0.25, 4.0], dtype=D)
    m = prefix_mask(lengths, T)
    rewards = last_token_rewards(scores, m)
    values = torch.randn(4, T, dtype=D) * 10  # must not matter for lambda = 1
    g = td_lambda_targets(values, rewards, m, gamma=gamma, lam=1.0)
    for b, n in enumerate(lengths):
        for t in range(T):
            expected = gamma ** (n - 1 - t) * scores[b].item() if t < n else 0.0
            assert g[b, t].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_td_lambda_matches_loop(batch):
    values, rewards, lengths, T, gamma, lam = batch
    m = prefix_mask(lengths, T) if T else torch.zeros(len(lengths), 0, dtype=D)
    v = torch.tensor(values, dtype=D).reshape(len(lengths), T)
    r = torch.tensor(rewards, dtype=D).reshape(len(lengths), T)
    g = td_lambda_targets(v, r, m, gamma=gamma, lam=lam)
    expected = ref_td_lambda(values, rewards, lengths, gamma, lam)
    np.testing.assert_allclose(g.numpy(), np.array(expected).reshape(len(lengths), T), rtol=1e-10, atol=1e-10)
    assert torch.all(g[m == 0] == 0)


def test_td_targets_are_detached_and_inputs_untouched():
    values = torch.tensor([[0.5, -1.0, 2.0, 0.0]], dtype=D, requires_grad=True)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=D)
    m = prefix_mask([3], 4)
    before = values.detach().clone()
    g = td_lambda_targets(values, rewards, m, gamma=0.9, lam=0.3)
    assert not g.requires_grad
    assert torch.equal(values.detach(), before)
    loss = (((values - g) ** 2) * m).sum()
    loss.backward()
    # semi-gradient: d/dQ_t only through Q_t, never through the bootstrap target
    assert torch.allclose(values.grad, 2 * (values.detach() - g) * m)


def test_value_normalization_matches_numpy_and_gradient():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.gamma(2.0, 3.0, size=(3, 5)), requires_grad=True)  # skewed
    m = prefix_mask([5, 4, 2], 5)
    norm, mean, std = value_normalization(x, m, eps=1e-6)
    valid = x.detach()[m.bool()].numpy()
    assert mean.item() == pytest.approx(valid.mean(), rel=1e-12)
    assert std.item() == pytest.approx(valid.std(), rel=1e-12)  # population std (paper: 1/B)
    np.testing.assert_allclose(norm.detach()[m.bool()].numpy(), (valid - valid.mean()) / (valid.std() + 1e-6), rtol=1e-12)
    assert torch.all(norm[m == 0] == 0)
    assert not mean.requires_grad and not std.requires_grad
    norm.sum().backward()
    assert torch.isfinite(x.grad).all()
    # constant values: finite output and gradient
    c = torch.full((2, 3), 4.0, dtype=D, requires_grad=True)
    n2, _, s2 = value_normalization(c, torch.ones(2, 3, dtype=D))
    (n2**2).sum().backward()
    assert s2.item() == 0.0 and torch.all(n2 == 0) and torch.isfinite(c.grad).all()


def test_update_moments_equals_numpy_on_concatenation():
    rng = np.random.default_rng(3)
    state = (0, 0.0, 0.0)
    seen = []
    for i in range(6):
        B, T = rng.integers(1, 5), rng.integers(1, 7)
        x = torch.tensor(rng.normal(loc=10.0 * i, scale=1 + i, size=(B, T)), dtype=torch.float32)
        lengths = rng.integers(0, T + 1, size=B).tolist()
        m = prefix_mask(lengths, T, dtype=torch.float32)
        x_before = x.clone()
        state = update_moments(*state, x, m)
        assert torch.equal(x, x_before)
        seen.extend(x.double()[m.bool()].tolist())
    count, mean, m2 = state
    arr = np.array(seen)
    assert count == len(arr)
    assert mean == pytest.approx(arr.mean(), rel=1e-12)
    assert moments_std(count, m2) == pytest.approx(arr.std(), rel=1e-10)
    assert moments_std(count, m2, unbiased=True) == pytest.approx(arr.std(ddof=1), rel=1e-10)
    json.dumps({"count": count, "mean": mean, "m2": m2})  # checkpointable as plain numbers
    # empty batch: unchanged; no mask: every entry
    assert update_moments(*state, torch.ones(2, 3), torch.zeros(2, 3)) == state
    assert update_moments(0, 0.0, 0.0, torch.tensor([1.0, 3.0])) == (2, 2.0, 2.0)
    assert moments_std(0, 0.0) == 0.0 and moments_std(1, 0.0, unbiased=True) == 0.0


def test_score_normalizer_skewed_and_constant():
    scores = [9.0, 9.5, 8.0, 10.0, 1.0]
    mean, std = score_normalizer(scores)
    assert mean == pytest.approx(np.mean(scores)) and std == pytest.approx(np.std(scores))
    z = normalize_scores(torch.tensor(scores), mean, std)
    assert z.dtype == torch.float32
    assert z.double().mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z.double().std(correction=0).item() == pytest.approx(1.0, rel=1e-6)
    mean_c, std_c = score_normalizer(torch.full((4,), 3.0))
    assert mean_c == 3.0 and std_c == 1e-6
    assert normalize_scores([3, 3], mean_c, std_c).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        score_normalizer([])
    with pytest.raises(ValueError):
        score_normalizer([1.0, float("nan")])


# ----------------------------------------------------------------------------- log-probs, entropy, KL


def test_logprobs_and_entropy_match_loop():
    rng = np.random.default_rng(4)
    logits = torch.tensor(rng.normal(scale=3.0, size=(2, 3, 5)))
    labels = torch.tensor(rng.integers(0, 5, size=(2, 3)))
    for temp in (1.0, 0.7):
        lp = logprobs_from_logits(logits, labels, temperature=temp)
        for b in range(2):
            for t in range(3):
                row = [v / temp for v in logits[b, t].tolist()]
                lse = math.log(sum(math.exp(v) for v in row))
                assert lp[b, t].item() == pytest.approx(row[labels[b, t]] - lse, rel=1e-12)
    ent = entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            row = logits[b, t].tolist()
            z = sum(math.exp(v) for v in row)
            p = [math.exp(v) / z for v in row]
            assert ent[b, t].item() == pytest.approx(-sum(pi * math.log(pi) for pi in p), rel=1e-10)
    # banned tokens (-inf logits) contribute nothing and stay finite
    banned = torch.tensor([[0.0, float("-inf"), 0.0]], requires_grad=True)
    e = entropy_from_logits(banned)
    assert e.item() == pytest.approx(math.log(2), rel=1e-6)
    e.sum().backward()
    assert torch.isfinite(banned.grad).all()
    # half precision path agrees with float32
    lp32 = logprobs_from_logits(logits.float(), labels)
    lp16 = logprobs_from_logits(logits.bfloat16(), labels)
    assert lp16.shape == labels.shape
    assert torch.allclose(lp16.float(), lp32, atol=0.1)
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, labels, temperature=0.0)


def test_kl_estimators_by_hand_and_unbiasedness():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_k1(logp, ref).tolist() == pytest.approx([0.5, -1.0])
    assert kl_k3(logp, ref).tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    # exact expectations under pi of a small categorical: k1 and k3 are unbiased for KL(pi||ref)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=D)
    kl = (p * (p / q).log()).sum()
    assert (p * kl_k1(p.log(), q.log())).sum().item() == pytest.approx(kl.item(), rel=1e-12)
    assert (p * kl_k3(p.log(), q.log())).sum().item() == pytest.approx(kl.item(), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.floats(-20, 20), st.floats(-20, 20))
def test_k3_nonnegative(a, b):
    assert kl_k3(torch.tensor([a], dtype=D), torch.tensor([b], dtype=D)).item() >= 0.0


# ----------------------------------------------------------------------------- PPO losses


def test_ppo_clip_loss_hand_example():
    ratios = [1.5, 0.5, 1.1, 0.5, 7.0]
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0]], dtype=D)
    logp = (old + torch.tensor([ratios], dtype=D).log()).clone().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]], dtype=D)
    m = prefix_mask([4], 5)
    loss, stats = ppo_clip_loss(logp, old, adv, m, clip_eps=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); 2: max(-0.5, -0.8) = -0.5;
    # token 3: max(1.1, 1.1) = 1.1;            4: max(0.5, 0.8) = 0.8 (clipped); 5: padding
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4, rel=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in ratios[:4]) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-12)
    assert not stats["clip_frac"].requires_grad
    loss.backward()
    # clipped tokens and padding get no gradient; unclipped get -A * rho / n
    expected_grad = [0.0, -1.0 * 0.5 / 4, 1.0 * 1.1 / 4, 0.0, 0.0]
    assert logp.grad[0].tolist() == pytest.approx(expected_grad, abs=1e-12)


def test_clipped_value_loss_hand_example():
    values = torch.tensor([[1.0, 0.0, 50.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[0.5, 0.0, 0.0]], dtype=D)
    returns = torch.tensor([[2.0, 1.0, 0.0]], dtype=D)
    m = prefix_mask([2], 3)
    loss, clip_frac = clipped_value_loss(values, old, returns, m, clip_range=0.2)
    # token 1: v_clip = 0.7: max((1-2)^2, (0.7-2)^2) = 1.69 (clipped); token 2: 1.0
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, rel=1e-12)
    assert clip_frac.item() == pytest.approx(0.5)
    loss.backward()
    assert values.grad[0].tolist() == pytest.approx([0.0, 0.5 * 2 * (0.0 - 1.0) / 2, 0.0])


# ----------------------------------------------------------------------------- GAE & rewards


@settings(max_examples=150, deadline=None)
@given(batches())
def test_gae_matches_loop(batch):
    values, rewards, lengths, T, gamma, lam = batch
    B = len(lengths)
    m = prefix_mask(lengths, T) if T else torch.zeros(B, 0, dtype=D)
    v = torch.tensor(values, dtype=D).reshape(B, T)
    r = torch.tensor(rewards, dtype=D).reshape(B, T)
    adv, ret = gae(v, r, m, gamma=gamma, lam=lam)
    ref_a, ref_r = ref_gae(values, rewards, lengths, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), np.array(ref_a).reshape(B, T), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), np.array(ref_r).reshape(B, T), rtol=1e-10, atol=1e-10)
    assert torch.all(adv[m == 0] == 0) and torch.all(ret[m == 0] == 0)


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    rng = np.random.default_rng(5)
    lengths, T = [6, 4, 1], 6
    m = prefix_mask(lengths, T)
    v = torch.tensor(rng.normal(size=(3, T)), requires_grad=True)
    r = torch.tensor(rng.normal(size=(3, T)))
    adv, ret = gae(v, r, m, gamma=1.0, lam=1.0)
    assert not adv.requires_grad and not ret.requires_grad
    for b, n in enumerate(lengths):
        for t in range(n):
            g = sum(r[b, k].item() for k in range(t, n))
            assert adv[b, t].item() == pytest.approx(g - v[b, t].item(), rel=1e-12, abs=1e-12)
            assert ret[b, t].item() == pytest.approx(g, rel=1e-12, abs=1e-12)


def test_per_token_rewards_by_hand():
    scores = torch.tensor([3.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, 9.0]])
    m = prefix_mask([3, 1], 3, dtype=torch.float32)
    out = per_token_rewards(scores, kl, m, kl_coef=0.2)
    np.testing.assert_allclose(out.numpy(), [[-0.02, -0.04, -0.06 + 3.0], [-0.1 - 1.0, 0.0, 0.0]], rtol=1e-6)


def test_adaptive_kl_controller():
    c = AdaptiveKLController(init_kl_coef=0.2, target=0.1, horizon=10000)
    c.update(current_kl=0.11, n_steps=64)  # above target: coefficient grows
    assert c.value > 0.2
    assert c.value == pytest.approx(0.2 * (1 + 0.1 * 64 / 10000), rel=1e-12)
    v = c.value
    c.update(current_kl=0.09, n_steps=64)  # below target: shrinks
    assert c.value < v
    assert c.value == pytest.approx(v * (1 - 0.1 * 64 / 10000), rel=1e-12)
    v = c.value
    c.update(current_kl=100.0, n_steps=100)  # error clipped at +0.2
    assert c.value == pytest.approx(v * (1 + 0.2 * 100 / 10000))
    v = c.value
    c.update(current_kl=0.0, n_steps=100)  # error clipped at -0.2
    assert c.value == pytest.approx(v * (1 - 0.2 * 100 / 10000))
    state = json.loads(json.dumps(c.state_dict()))
    c2 = AdaptiveKLController(1.0, 5.0, 3)
    c2.load_state_dict(state)
    assert c2.state_dict() == c.state_dict()
    c3 = copy.deepcopy(c)
    assert c2.update(0.3, 10) == c3.update(0.3, 10)
    f = FixedKLController(0.05)
    assert f.update(10.0, 100) == 0.05 and f.value == 0.05
    f2 = FixedKLController(1.0)
    f2.load_state_dict(f.state_dict())
    assert f2.value == 0.05
    d = AdaptiveKLController()
    assert (d.value, d.target, d.horizon) == (0.2, 0.1, 10000)


# ----------------------------------------------------------------------------- advantages


def test_dvpo_value_advantages_batch_and_stored():
    rng = np.random.default_rng(6)
    q = torch.tensor(rng.normal(4.0, 2.0, size=(3, 5)))
    m = prefix_mask([5, 3, 0], 5)
    a = dvpo_value_advantages(q, m, mode="batch")
    valid = a[m.bool()].numpy()
    qv = q[m.bool()].numpy()
    np.testing.assert_allclose(valid, (qv - qv.mean()) / (qv.std() + 1e-6), rtol=1e-12)
    assert torch.all(a[m == 0] == 0)
    s = dvpo_value_advantages(q, m, mode="stored", mean=1.0, std=2.0)
    np.testing.assert_allclose(s[m.bool()].numpy(), (qv - 1.0) / (2.0 + 1e-6), rtol=1e-12)
    assert torch.all(s[m == 0] == 0)
    with pytest.raises(ValueError):
        dvpo_value_advantages(q, m, mode="stored")
    with pytest.raises(ValueError):
        dvpo_value_advantages(q, m, mode="nope")
    qg = q.clone().requires_grad_(True)
    assert not dvpo_value_advantages(qg, m).requires_grad


def test_dvpo_difference_advantages_by_hand():
    q = torch.tensor([[1.0, 2.0, 4.0], [3.0, 8.0, 8.0]], dtype=D)
    m = prefix_mask([3, 1], 3)
    a = dvpo_difference_advantages(q, m, gamma=0.5, v_first=torch.tensor([0.5, 1.0], dtype=D))
    # A_1 = Q_1 - V(s_1); A_t = Q_t - Q_{t-1} / gamma
    np.testing.assert_allclose(a.numpy(), [[0.5, 2.0 - 2.0, 4.0 - 4.0], [2.0, 0.0, 0.0]], rtol=1e-12)
    a0 = dvpo_difference_advantages(q, m, gamma=1.0)
    np.testing.assert_allclose(a0.numpy(), [[1.0, 1.0, 2.0], [3.0, 0.0, 0.0]], rtol=1e-12)
    with pytest.raises(ValueError):
        dvpo_difference_advantages(q, m, gamma=0.0)


def test_group_normalized_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0], dtype=D)
    a = group_normalized_advantages(r, group_size=3, eps=1e-4)
    s2 = math.sqrt((4 + 4 + 16) / 2)  # unbiased std of [0, 0, 6]
    expected = [-1 / (1 + 1e-4), 0.0, 1 / (1 + 1e-4), -2 / (s2 + 1e-4), -2 / (s2 + 1e-4), 4 / (s2 + 1e-4)]
    assert a.tolist() == pytest.approx(expected, rel=1e-12)
    # equal rewards in a group give zero advantage
    assert group_normalized_advantages(torch.ones(4), 2).tolist() == [0.0] * 4
    with pytest.raises(ValueError):
        group_normalized_advantages(r, group_size=4)
    with pytest.raises(ValueError):
        group_normalized_advantages(r, group_size=1)


def test_leave_one_out_advantages_by_hand_and_against_a_loop():
    r = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0], dtype=D)[:4]  # groups [1, 2] and [6, 0]
    assert leave_one_out_advantages(r, 2).tolist() == [-1.0, 1.0, 6.0, -6.0]
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=12)
    expected = [rewards[i] - np.mean([rewards[j] for j in range(i // 4 * 4, i // 4 * 4 + 4) if j != i])
                for i in range(12)]
    got = leave_one_out_advantages(torch.tensor(rewards, dtype=D), 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # RLOO is (k / (k - 1)) times the group-mean baseline: a known identity (Ahmadian et al. 2024)
    centred = torch.tensor(rewards).view(3, 4)
    np.testing.assert_allclose(got.numpy(), (4 / 3 * (centred - centred.mean(dim=1, keepdim=True))).reshape(-1).numpy(),
                               rtol=1e-12)
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, 3)
    with pytest.raises(ValueError):
        leave_one_out_advantages(r, 1)


def test_remax_and_broadcast():
    a = remax_advantages(torch.tensor([1.0, 0.5]), torch.tensor([0.25, 1.0]))
    assert a.tolist() == [0.75, -0.5]
    m = prefix_mask([2, 3, 0], 3, dtype=torch.float32)
    out = broadcast_sequence_advantage(torch.tensor([2.0, -1.0, 5.0]), m.bool())
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- pairwise


def test_bradley_terry_by_hand():
    c = torch.tensor([2.0, 0.0], requires_grad=True)
    r = torch.tensor([1.0, 0.0])
    loss = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    # d/dc of -log sigmoid(c - r) = -(1 - sigmoid(c - r)), averaged
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert c.grad.tolist() == pytest.approx([-(1 - sig(1.0)) / 2, -(1 - sig(0.0)) / 2], rel=1e-6)
    m = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=torch.tensor([1.0]))
    assert m.item() == pytest.approx(math.log(2), rel=1e-6)


def test_prompt_relative_scores_by_hand():
    from dvpo.algos.td import prompt_relative_scores

    scores, std = prompt_relative_scores([1.0, 3.0, 10.0, 14.0, 5.0], ["a", "a", "b", "b", "c"])
    centred = [-1.0, 1.0, -2.0, 2.0, 0.0]
    expected_std = (sum(c * c for c in centred) / 5) ** 0.5
    assert std == pytest.approx(expected_std)
    assert scores.tolist() == pytest.approx([c / expected_std for c in centred])
    with pytest.raises(ValueError, match="groups"):
        prompt_relative_scores([1.0], ["a", "b"])


def test_dvpo_critic_advantages_by_hand_in_float64():
    from dvpo.algos.advantages import dvpo_critic_advantages

    q = torch.tensor([[0.2, 0.5, 1.0], [-0.4, 0.3, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    v_first = torch.tensor([0.1, -0.2], dtype=torch.float64)
    penalty = torch.tensor([[0.01, 0.02, 0.03], [0.05, 0.0, 9.0]], dtype=torch.float64)
    adv, ret = dvpo_critic_advantages(q, v_first, mask, penalty, gamma=1.0, lam=0.5)
    # row 1: V = [0.1, 0.2, 0.5], r = [-0.01, -0.02, 1.0 - 0.03]
    d = [-0.01 + 0.2 - 0.1, -0.02 + 0.5 - 0.2, 0.97 - 0.5]
    a2 = d[2]
    a1 = d[1] + 0.5 * a2
    a0 = d[0] + 0.5 * a1
    # row 2: V = [-0.2, -0.4], r = [-0.05, 0.3]
    e = [-0.05 - 0.4 + 0.2, 0.3 + 0.4]
    b1 = e[1]
    b0 = e[0] + 0.5 * b1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ret, (adv + torch.tensor([[0.1, 0.2, 0.5], [-0.2, -0.4, 0.0]], dtype=torch.float64)) * mask)
    # lambda 1, no KL: every token's advantage is Q_T - V(s_t)
    adv1, _ = dvpo_critic_advantages(q, v_first, mask, torch.zeros_like(q), gamma=1.0, lam=1.0)
    assert torch.allclose(adv1[0], torch.tensor([1.0 - 0.1, 1.0 - 0.2, 1.0 - 0.5], dtype=torch.float64))


def test_reliability_weight_is_twice_the_accuracy_above_chance():
    """By hand: a scorer agreeing with the truth on a fraction a of pairs has expected agreement 2a - 1."""
    assert reliability_weight(1.0) == 1.0
    assert reliability_weight(0.75) == 0.5
    assert reliability_weight(0.5) == 0.0
    assert reliability_weight(0.3) == 0.0  # below chance: no signal, never a reversed one
    assert reliability_weight(0.8144758735440932) == pytest.approx(0.6289517470881864, abs=1e-15)
    for bad in (-0.1, 1.2, float("nan")):
        with pytest.raises(ValueError):
            reliability_weight(bad)


def _dvpo_gae_loop(q, v_first, mask, penalty, mean, std, weight, gamma, lam, reward="last"):
    """DVPO's gae advantage transcribed in float64 loops, in the GVM's raw units: V(s_1) = v_first,
    V(s_t) = Q_{t-1} / gamma, the last value Q_T (or the mean of Q_1..Q_T) as the reward, then scaled by
    weight / std (no mean: the values' level is part of what they mean when gamma < 1)."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        n = int(mask[b].sum())
        scale = weight / (std + 1e-8)
        values = [float(v_first[b]) * scale] + [float(q[b, t]) * scale / gamma for t in range(n - 1)]
        rewards = [-float(penalty[b, t]) for t in range(n)]
        final = float(q[b, n - 1]) if reward == "last" else sum(float(q[b, t]) for t in range(n)) / n
        rewards[-1] += final * scale
        running = 0.0
        for t in reversed(range(n)):
            following = values[t + 1] if t + 1 < n else 0.0
            running = rewards[t] + gamma * following - values[t] + gamma * lam * running
            out[b, t] = running
    return out


def _random_dvpo_rollout(seed: int):
    """Raw GVM values [3, 5], V(s_1) [3], a mask of rows 5, 3 and 1 tokens long and KL penalties, in float64."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    v_first = torch.randn(3, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float64)
    penalty = 0.1 * torch.rand(3, 5, generator=generator, dtype=torch.float64)
    return q, v_first, mask, penalty


@pytest.mark.parametrize("reward", ["last", "mean"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_dvpo_advantages_gae_match_a_float64_loop_and_ignore_the_values_level(gamma, reward):
    from dvpo.algos.advantages import dvpo_advantages

    q, v_first, mask, penalty = _random_dvpo_rollout(seed=0)
    got = dvpo_advantages("gae", q, v_first, mask, penalty, mean=2.5, std=0.7, weight=0.6, gamma=gamma, lam=0.8,
                          reward=reward)
    expected = _dvpo_gae_loop(q, v_first, mask, penalty, 2.5, 0.7, 0.6, gamma, 0.8, reward)
    assert torch.allclose(got, expected, atol=1e-10)
    # the stored mean never enters: standardising it in first biased every token by mu (1 - gamma) / (gamma sigma)
    other = dvpo_advantages("gae", q, v_first, mask, penalty, mean=-4.0, std=0.7, weight=0.6, gamma=gamma, lam=0.8,
                            reward=reward)
    assert torch.allclose(got, other, atol=1e-12)


@pytest.mark.parametrize("trust", [0.0, 0.35, 1.0])
@pytest.mark.parametrize("reward", ["last", "mean"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_dvpo_sequence_and_blend_advantages_match_a_float64_loop(gamma, reward, trust):
    """Every token: gamma^(T-t) R - b_t - sum_{k >= t} gamma^(k-t) kl_k, in the GVM's units times weight / std, with
    the baseline b_t = V(s_1) + trust (V(s_t) - V(s_1)), V(s_t) = Q_{t-1} / gamma: `sequence` is trust 0, and
    `blend` at trust 1 is `gae` at lambda 1."""
    from dvpo.algos.advantages import dvpo_advantages

    q, v_first, mask, penalty = _random_dvpo_rollout(seed=1)
    got = dvpo_advantages("blend", q, v_first, mask, penalty, mean=2.5, std=0.7, weight=0.6, gamma=gamma,
                          reward=reward, trust=trust)
    expected = torch.zeros_like(q)
    scale = 0.6 / (0.7 + 1e-8)
    for b in range(3):
        n = int(mask[b].sum())
        values, first = [float(q[b, t]) for t in range(n)], float(v_first[b])
        final = values[-1] if reward == "last" else sum(values) / n
        for t in range(n):
            baseline = first + trust * ((values[t - 1] / gamma if t else first) - first)
            to_pay = sum(gamma ** (k - t) * float(penalty[b, k]) for k in range(t, n))
            expected[b, t] = gamma ** (n - 1 - t) * final * scale - baseline * scale - to_pay
    assert torch.allclose(got, expected, atol=1e-10)
    same = {0.0: ("sequence", {}), 1.0: ("gae", {"lam": 1.0})}.get(trust)
    if same is not None:
        form, options = same
        other = dvpo_advantages(form, q, v_first, mask, penalty, 2.5, 0.7, weight=0.6, gamma=gamma, reward=reward,
                                **options)
        assert torch.allclose(got, other, atol=1e-10)
    with pytest.raises(ValueError, match="trust must lie in"):
        dvpo_advantages("blend", q, v_first, mask, penalty, 2.5, 0.7, trust=1.5)


def test_sequence_value_by_hand():
    from dvpo.algos.advantages import sequence_value

    q = torch.tensor([[0.2, 0.5, 1.0], [-0.4, 0.3, 9.0], [7.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float64)
    assert sequence_value(q, mask, "last").tolist() == pytest.approx([1.0, 0.3, 0.0], abs=1e-15)
    assert sequence_value(q, mask, "mean").tolist() == pytest.approx([1.7 / 3, -0.05, 0.0], abs=1e-15)
    with pytest.raises(ValueError, match="unknown sequence value"):
        sequence_value(q, mask, "max")


def test_dvpo_advantages_value_and_difference_by_hand():
    from dvpo.algos.advantages import dvpo_advantages

    q = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    penalty = torch.tensor([[0.1, 0.0, 0.2]], dtype=torch.float64)
    value = dvpo_advantages("value", q, torch.tensor([0.5], dtype=torch.float64), mask, penalty, mean=1.0, std=2.0,
                            weight=0.5)
    assert torch.allclose(value, torch.tensor([[0.0 - 0.1, 0.5, 0.25 - 0.2]], dtype=torch.float64), atol=1e-7)
    diff = dvpo_advantages("difference", q, torch.tensor([0.5], dtype=torch.float64), mask, penalty, mean=1.0,
                           std=2.0, weight=0.5, gamma=0.5)
    # raw Q_t - V(s_t) with V(s_1) = 0.5 and V(s_t) = Q_{t-1} / 0.5, times 0.5 / 2, minus the penalty
    expected = torch.tensor([[(1.0 - 0.5) / 4 - 0.1, (3.0 - 2.0) / 4, (2.0 - 6.0) / 4 - 0.2]], dtype=torch.float64)
    assert torch.allclose(diff, expected, atol=1e-7)
    with pytest.raises(ValueError, match="unknown DVPO advantage form"):
        dvpo_advantages("authors", q, torch.tensor([0.5]), mask, penalty, mean=0.0, std=1.0)


def test_dvpo_authors_advantages_match_a_float64_transcription_of_their_code():
    """policyv1_trainer.py: values whitened per row over all positions (trl's whiten: unbiased variance), rewards
    -beta * kl only, GAE with lam 0.95 and a zero value after the last token."""
    from dvpo.algos.advantages import dvpo_authors_advantages

    generator = torch.Generator().manual_seed(1)
    before = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    positions = [torch.randn(9, generator=generator, dtype=torch.float64) for _ in range(2)]  # prompt + response
    row_mean = torch.stack([p.mean() for p in positions])
    row_var = torch.stack([p.var() for p in positions])
    penalty = 0.2 * torch.rand(2, 4, generator=generator, dtype=torch.float64)
    got = dvpo_authors_advantages(before * mask, mask, row_mean, row_var, penalty, gamma=1.0, lam=0.95)
    for b in range(2):
        n = int(mask[b].sum())
        u = [(float(before[b, t]) - float(row_mean[b])) / math.sqrt(float(row_var[b]) + 1e-8) for t in range(n)]
        last = 0.0
        for t in reversed(range(n)):
            following = u[t + 1] if t + 1 < n else 0.0
            delta = -float(penalty[b, t]) + following - u[t]
            last = delta + 0.95 * last
            assert float(got[b, t]) == pytest.approx(last, abs=1e-10)
        assert float(got[b, n - 1]) == pytest.approx(-float(penalty[b, n - 1]) - u[n - 1], abs=1e-10)
        assert got[b, n:].abs().sum() == 0
