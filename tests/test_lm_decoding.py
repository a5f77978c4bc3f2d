"""Language-model decoding (genlab/lm): logit filters against their definitions, the next-token loss against
its closed form, and generation with the KV cache equal to generation without it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import one_thread

from genlab.lm import filter_logits, generate, next_token_loss, sample_next
from genlab.lm.decoding import window_keep
from genlab.nn.transformer import Transformer, TransformerConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    z = filter_logits(logits, top_k=2)
    assert torch.isfinite(z).tolist() == [[False, True, False, True, False]]
    assert torch.equal(z[torch.isfinite(z)], torch.tensor([5.0, 4.0]))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    for p, kept in [(0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.96, 4), (1.0, 4), (1e-6, 1)]:
        z = filter_logits(logits, top_p=p)
        assert int(torch.isfinite(z).sum()) == kept, p
        assert torch.isfinite(z)[0, :kept].all()  # the most probable ones


def test_temperature_divides_the_logits_and_banned_ids_are_never_drawn():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_next(logits, generator=g, banned=(0, 3)) for _ in range(200)])
    assert not bool(((draws == 0) | (draws == 3)).any())
    # top-k = 1 is greedy
    assert torch.equal(sample_next(logits, generator=g, top_k=1), logits.argmax(-1))


def test_next_token_loss_is_the_cross_entropy():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    want = torch.stack([-torch.log_softmax(logits[b, t], -1)[targets[b, t]]
                        for b in range(2) for t in range(3)]).view(2, 3).mean(1)
    torch.testing.assert_close(next_token_loss(logits, targets), want)
    # uniform logits: log V per token
    torch.testing.assert_close(next_token_loss(torch.zeros(2, 3, 5), targets), torch.full((2,), math.log(5)))


def _net(context: int = 12) -> Transformer:
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=11, max_seq_len=context, d_model=32, n_layers=2, n_heads=2,
                                        zero_init=False))
    return net.eval()


@pytest.mark.parametrize("prompt_len,new", [(1, 5), (3, 30), (20, 10)])  # within, past and beyond the context
def test_cached_generation_equals_uncached(prompt_len, new):
    net = _net()
    prompt = torch.randint(0, 11, (3, prompt_len), generator=torch.Generator().manual_seed(2))
    kw = {"context": 12, "temperature": 0.9, "top_k": 8, "top_p": 0.95}
    with_cache = generate(net, prompt, new, generator=torch.Generator().manual_seed(7), cache=True, **kw)
    without = generate(net, prompt, new, generator=torch.Generator().manual_seed(7), cache=False, **kw)
    assert with_cache.shape == (3, new) and torch.equal(with_cache, without)
    # and it is a function of the seed
    again = generate(net, prompt, new, generator=torch.Generator().manual_seed(7), cache=True, **kw)
    assert torch.equal(again, with_cache)


def test_greedy_generation_follows_the_full_forward_pass():
    """Within the context, each greedy token is the argmax of the uncached network on everything before it."""
    net = _net()
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(net, prompt, 6, context=12, top_k=1)
    seq = prompt
    for i in range(6):
        nxt = net(seq)[:, -1].argmax(-1)
        assert int(nxt) == int(out[0, i])
        seq = torch.cat([seq, nxt[:, None]], 1)


def test_window_keeps_three_quarters():
    assert [window_keep(c) for c in (1, 2, 4, 64)] == [1, 1, 3, 48]
