"""The RLHF pipeline's data, oracle, decoding with padding and reward model, checked on invariants."""

from __future__ import annotations

import json

import pytest
import torch

from genlab.data.chat import (
    PREFERENCE_KEYS,
    ChatTemplate,
    builtin_prompts,
    read_jsonl,
    write_jsonl,
)
from genlab.data.tokenizer import EOT, MASK, CharTokenizer
from genlab.errors import ConfigError, DataError
from genlab.eval.oracle import (
    KeywordOracle,
    LengthOracle,
    SentimentOracle,
    preference_labels,
)
from genlab.lm import generate_until
from genlab.models.reward import ScalarHeadModel
from genlab.nn.transformer import Transformer, TransformerConfig


@pytest.fixture(scope="module")
def template():
    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz QA:.\n"], specials=(EOT, MASK))
    return ChatTemplate(tok)


def test_the_end_token_is_never_the_padding_token_and_batches_pad_left_then_right(template):
    assert template.end_id != template.pad_id
    p1, p2 = template.prompt_ids("hi"), template.prompt_ids("hello there")
    r1, r2 = template.response_ids("a b"), template.response_ids("x")
    assert r1[-1] == template.end_id and template.response_ids("x", end=False)[-1] != template.end_id
    b = template.batch([p1, p2], [r1, r2])
    P = max(len(p1), len(p2))
    assert b.prompt_len == P and b.tokens.shape == (2, P + len(r1))
    assert b.pad_mask[0, :P - len(p1)].all() and not b.pad_mask[0, P - len(p1):P].any()  # left-padded prompt
    assert b.response_mask[1].tolist() == [True] * len(r2) + [False] * (len(r1) - len(r2))  # right-padded response
    assert (b.tokens[b.pad_mask] == template.pad_id).all()
    assert template.ended(b.responses, b.response_mask).tolist() == [True, True]
    assert template.decode_response(r1) == "a b"


def test_jsonl_round_trip_and_errors_name_the_line(tmp_path):
    records = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    write_jsonl(tmp_path / "a.jsonl", records)
    assert read_jsonl(tmp_path / "a.jsonl", PREFERENCE_KEYS) == records
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "x"}) + "\n")
    with pytest.raises(DataError, match=r"b.jsonl:1 needs string fields prompt, chosen, rejected"):
        read_jsonl(tmp_path / "b.jsonl", PREFERENCE_KEYS)
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl(tmp_path / "none.jsonl", PREFERENCE_KEYS)


def test_builtin_prompts_are_disjoint_and_deterministic():
    train, held = builtin_prompts("pydocs", 50, 20, seed=1)
    assert len(train) == 50 and len(held) == 20
    assert not {r["prompt"] + r["completion"] for r in train} & {r["prompt"] + r["completion"] for r in held}
    assert builtin_prompts("pydocs", 50, 20, seed=1) == (train, held)
    assert all(len(r["prompt"].split()) == 4 and r["completion"] for r in train)
    with pytest.raises(DataError, match="ask for fewer"):
        builtin_prompts("pydocs", 10**6, 1)


def test_sentiment_oracle_prefers_positive_text_penalises_no_end_and_adds_fluency():
    prompts = ["q"] * 3
    texts = ["this is a wonderful, great and happy result", "this is a terrible, awful and sad result", "plain"]
    ended = torch.tensor([True, True, True])
    plain = SentimentOracle()(prompts, texts, ended)
    assert plain[0] > 0.5 > -0.5 > plain[1] and plain[2] == 0
    no_end = SentimentOracle(no_end_penalty=1.0)(prompts, texts, torch.tensor([True, False, False]))
    torch.testing.assert_close(no_end, plain - torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
    fluent = SentimentOracle(fluency=lambda p, c: torch.tensor([-2.0, -20.0, -4.0]), fluency_weight=0.5,
                             fluency_floor=-8.0)(prompts, texts, ended)
    torch.testing.assert_close(fluent - plain, torch.tensor([-1.0, -4.0, -2.0], dtype=torch.float64))


def test_swappable_oracles_and_label_noise():
    ended = torch.tensor([True, True])
    length = LengthOracle(target=3)(["q", "q"], ["a b c", "a"], ended)
    assert length[0] == 0 and length[1] == pytest.approx(-2 / 3)
    assert KeywordOracle(keyword="python")(["q", "q"], ["Python python", "no"], ended).tolist() == [2.0, 0.0]
    a, b = torch.ones(20000, dtype=torch.float64), torch.zeros(20000, dtype=torch.float64)
    assert preference_labels(a, b).all()
    flipped = (~preference_labels(a, b, noise=0.2, generator=torch.Generator().manual_seed(0))).double().mean()
    assert abs(float(flipped) - 0.2) < 0.02
    with pytest.raises(ConfigError):
        preference_labels(a, b, noise=0.7)


def _net(vocab=12, seed=0):
    torch.manual_seed(seed)
    net = Transformer(TransformerConfig(vocab_size=vocab, max_seq_len=32, d_model=16, n_layers=2, n_heads=2,
                                        zero_init=False))
    return net.eval()


def test_generate_until_with_left_padding_draws_what_an_unpadded_prompt_draws():
    """Rotary positions are relative, so a left-padded prompt is decoded exactly as the same prompt alone."""
    net = _net()
    stop, pad = 10, 11
    short = torch.tensor([[1, 2, 3]])
    padded = torch.tensor([[pad, pad, 1, 2, 3]])
    mask = padded == pad
    a = generate_until(net, short, torch.zeros_like(short, dtype=torch.bool), 12, stop_id=stop, pad_id=pad,
                       generator=torch.Generator().manual_seed(5), banned=(pad,))
    b = generate_until(net, padded, mask, 12, stop_id=stop, pad_id=pad, generator=torch.Generator().manual_seed(5),
                       banned=(pad,))
    assert torch.equal(a, b)
    # after the stop token only padding follows
    for row in generate_until(net, torch.tensor([[1], [2], [3], [4]]), torch.zeros(4, 1, dtype=torch.bool), 20,
                              stop_id=stop, pad_id=pad, generator=torch.Generator().manual_seed(1), banned=(pad,)):
        row = row.tolist()
        if stop in row:
            assert all(t == pad for t in row[row.index(stop) + 1:])


def test_reward_model_reads_the_end_token_with_left_or_right_padding():
    net = _net(seed=3)
    rm = ScalarHeadModel.from_language_model(net).eval()
    seq = torch.tensor([[4, 5, 6, 10]])
    alone = rm.score(seq, torch.zeros_like(seq, dtype=torch.bool))
    right = torch.tensor([[4, 5, 6, 10, 11, 11]])
    left = torch.tensor([[11, 11, 4, 5, 6, 10]])
    with torch.no_grad():
        r = rm.score(right, right == 11)
        l_ = rm.score(left, left == 11)
        first_pad = rm(right, right == 11)[0, 4]  # the trap: reading at the first padding position
    torch.testing.assert_close(r, alone.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l_, alone.detach(), atol=1e-5, rtol=1e-5)
    assert not torch.isclose(first_pad, alone.detach()[0], atol=1e-4)


def test_report_names_an_oracle_turn_down_only_when_it_exceeds_the_noise():
    from genlab.experiments.rlhf.report import turning_point

    def row(step, oracle, proxy):
        return {"step": step, "eval_oracle": oracle, "eval_oracle_se": 0.01, "eval_proxy": proxy,
                "eval_proxy_se": 0.1, "eval_kl": step / 10}

    rising = [row(1, 0.0, 1.0), row(2, 0.1, 2.0), row(3, 0.2, 3.0)]
    assert "no significant turn-down" in turning_point(rising)
    over = [row(1, 0.0, 1.0), row(2, 0.3, 2.0), row(3, 0.1, 3.0)]
    assert "proxy keeps rising" in turning_point(over) and "over-optimisation" in turning_point(over)
    noise = [row(1, 0.0, 1.0), row(2, 0.3, 2.0), row(3, 0.295, 3.0)]
    assert "no significant turn-down" in turning_point(noise)
