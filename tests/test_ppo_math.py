"""PPO's arithmetic against values worked out by hand."""

import math

import pytest
import torch

from coati_tui.trainer.ppo import math as M


def test_response_mask_stops_after_the_first_stop_token_and_drops_padding():
    end, pad = 2, 0
    tokens = torch.tensor(
        [
            [5, 6, 2, 0, 0],  # stops at column 2: the stop token counts, padding does not
            [5, 2, 7, 2, 0],  # anything after the first stop is out
            [5, 6, 7, 8, 9],
        ]
    )  # never stopped (max_new_tokens): all in
    mask = M.response_mask(tokens, [end], pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert M.last_index(mask).tolist() == [2, 1, 4]
    # pad == eos (a common tokenizer set-up): the first one is the stop, the rest are out
    assert M.response_mask(torch.tensor([[5, 0, 0]]), [0], 0).tolist() == [[1, 1, 0]]


def test_kl_estimates():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    k1, k3 = M.kl_terms(logp, ref)
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    # k3 = q/p - 1 - log(q/p): q/p = 0.5 -> 0.5 - 1 + log 2; q/p = 2 -> 2 - 1 - log 2
    assert k3.tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    assert (k3 >= 0).all()


def test_token_rewards_put_the_score_on_the_last_answer_token():
    k1 = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = M.token_rewards(torch.tensor([2.0, -1.0]), k1, mask, kl_coef=0.1)
    assert r.flatten().tolist() == pytest.approx([-0.01, -0.02 + 2.0, 0.0, -0.05, -0.05, -0.05 - 1.0])


def test_gae_by_hand():
    # one answer of 3 tokens then padding; gamma 0.9, lambda 0.8
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])  # the padded column's value must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = M.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.3  # last token: no next value
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.3, 0.0])
    # lambda = 1, gamma = 1: returns are the sum of the rewards to come
    _, ret1 = M.gae(rewards, values, mask, 1.0, 1.0)
    assert ret1.tolist()[0][:3] == pytest.approx([1.0, 1.0, 1.0])


def test_policy_loss_clips_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, st = M.policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # token 0: A>0, r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped); token 1: A<0, r=0.5 -> max(0.5, 0.8) = 0.8
    # (clipped); token 2: r=1.1 inside the clip -> -2.2
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert st["clip_frac"] == pytest.approx(2 / 3)
    assert st["max_ratio"] == pytest.approx(1.5)


def test_value_loss_clips_by_hand():
    old = torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[2.0, 1.1]])
    ret = torch.tensor([[3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0]])
    # token 0: unclipped (2-3)^2 = 1, clipped v = 1.2 -> (1.2-3)^2 = 3.24 -> 3.24
    # token 1: unclipped 1.21, clipped 1.1 (inside) -> 1.21
    assert float(M.value_loss(new, old, ret, mask, clip=0.2)) == pytest.approx(0.5 * (3.24 + 1.21) / 2)


def test_whitening_and_masked_mean_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert float(M.masked_mean(x, mask)) == pytest.approx(2.5)
    w = M.masked_whiten(x, mask)
    assert float(M.masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(M.masked_mean(w**2, mask)) == pytest.approx(1.0, rel=1e-4)
    assert w[0, 2] == 0 and w[1, 2] == 0


def test_entropy_of_uniform_and_certain():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    assert M.entropy(logits).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
