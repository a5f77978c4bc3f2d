"""What every stage does with a policy: load it, sample responses, score log-probabilities, ask the oracle.

A policy is the `net` (a causal :class:`~genlab.nn.transformer.Transformer`) of a GPT run; its
weights live in the run's checkpoints under `state_dict/net.*`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genlab.data.chat import ChatBatch, ChatTemplate
from genlab.eval.oracle import ORACLES
from genlab.experiments.rlhf.config import OracleSpec, SamplingSpec
from genlab.lm import generate_until
from genlab.models.base import eval_mode
from genlab.rlhf import masked_mean, token_logprobs


def response_logits(net, batch: ChatBatch) -> Tensor:
    """The logits that predict each response token: (B, L, V) (position P-1+i predicts response token i)."""
    P = batch.prompt_len
    logits = net(batch.tokens[:, :-1], pad_mask=batch.pad_mask[:, :-1])  # (B, P+L-1, V)
    return logits[:, P - 1:]


def response_logprobs(net, batch: ChatBatch) -> Tensor:
    """log pi(y_i | x, y_<i) of each response token: (B, L), zero on padding."""
    lp = token_logprobs(response_logits(net, batch), batch.responses)
    return lp * batch.response_mask.float()


@torch.no_grad()
def sample_batch(net, template: ChatTemplate, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSpec,
                 generator: torch.Generator) -> ChatBatch:
    """Responses sampled from `net` for each prompt's ids, as a ChatBatch (prompt left-padded, response right-padded)."""
    empty = template.batch(prompts)
    with eval_mode(net):
        out = generate_until(net, empty.tokens, empty.pad_mask, max_new_tokens, stop_id=template.end_id,
                             pad_id=template.pad_id, generator=generator, temperature=sampling.temperature,
                             top_k=sampling.top_k, top_p=sampling.top_p, banned=(template.pad_id,))
    responses = [[int(t) for t in row if int(t) != template.pad_id] for row in out]
    return template.batch(prompts, responses, response_len=1)


def batch_responses(batch: ChatBatch) -> list[list[int]]:
    """The response ids of each row of a ChatBatch (padding dropped)."""
    return [[int(t) for t, m in zip(row, mask) if m] for row, mask in zip(batch.responses, batch.response_mask)]


def sample_many(net, template: ChatTemplate, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingSpec,
                generator: torch.Generator) -> list[list[int]]:
    """Response ids for many prompts, in batches of `sampling.batch_size`."""
    out = []
    for i in range(0, len(prompts), sampling.batch_size):
        out.extend(batch_responses(sample_batch(net, template, prompts[i:i + sampling.batch_size], max_new_tokens,
                                                sampling, generator)))
    return out


@dataclass
class Scorer:
    """The oracle (gold reward) of a run, with fluency measured under the frozen pretrained model."""

    template: ChatTemplate
    oracle: object
    reference_net: object = None

    @torch.no_grad()
    def fluency(self, prompts: list[str], completions: list[str]) -> Tensor:
        """Mean log-probability per completion token under the pretrained model (an empty completion: -1e9)."""
        out = []
        for i in range(0, len(prompts), 64):
            ps = [self.template.prompt_ids(p) for p in prompts[i:i + 64]]
            rs = [self.template.response_ids(c, end=False) for c in completions[i:i + 64]]
            batch = self.template.batch(ps, rs, response_len=1)
            with eval_mode(self.reference_net):
                lp = response_logprobs(self.reference_net, batch)
            mean = masked_mean(lp, batch.response_mask, dim=1)
            empty = torch.tensor([not c.strip() for c in completions[i:i + 64]])
            out.append(torch.where(empty, torch.full_like(mean, -1e9), mean))
        return torch.cat(out).double()

    def texts(self, responses: list[list[int]]) -> tuple[list[str], Tensor]:
        """The completions' text and whether each ended with the end-of-turn token."""
        completions = [self.template.decode_response(r) for r in responses]
        ended = torch.tensor([bool(r) and r[-1] == self.template.end_id for r in responses], dtype=torch.bool)
        return completions, ended

    def __call__(self, prompts: list[str], responses: list[list[int]]) -> Tensor:
        """(B,) float64 oracle rewards of response ids."""
        completions, ended = self.texts(responses)
        return self.oracle(prompts, completions, ended)


def build_scorer(spec: OracleSpec, template: ChatTemplate, reference_net) -> Scorer:
    """The oracle named by `spec.kind`, fluency read from `reference_net` (the pretrained model)."""
    kind = ORACLES[spec.kind]
    scorer = Scorer(template, None, reference_net)
    if spec.kind == "sentiment":
        scorer.oracle = kind(fluency=scorer.fluency, fluency_weight=spec.fluency_weight,
                             fluency_floor=spec.fluency_floor, no_end_penalty=spec.no_end_penalty)
    elif spec.kind == "length":
        scorer.oracle = kind(target=spec.target_words, no_end_penalty=spec.no_end_penalty)
    else:
        scorer.oracle = kind(keyword=spec.keyword, no_end_penalty=spec.no_end_penalty)
    return scorer


def sequence_kl(policy_net, reference_net, batch: ChatBatch) -> Tensor:
    """Per-response KL estimate: sum over tokens of log pi - log pi_ref at the sampled tokens (k1): (B,)."""
    with torch.no_grad(), eval_mode(policy_net), eval_mode(reference_net):
        lp = response_logprobs(policy_net, batch)
        ref = response_logprobs(reference_net, batch)
    return ((lp - ref) * batch.response_mask.float()).sum(dim=1)
