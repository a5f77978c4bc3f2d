"""Learning from pairwise preferences: Bradley-Terry, DPO, the reward read at the end token, best-of-n's KL."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def end_index(mask: Tensor) -> Tensor:
    """The index of each row's last valid position: (B, T) bool -> (B,) int64.

    Correct with left padding (valid tokens at the right) and right padding alike: it is the last
    True, never "the first padding position minus one", which is wrong for left-padded rows.
    A row with no valid position gives 0.
    """
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)


def reward_at_end(scores: Tensor, mask: Tensor) -> Tensor:
    """A sequence's reward: the per-position head output at its end token, (B, T), (B, T) bool -> (B,)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    return scores[rows, end_index(mask)]


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log p(targets[b, t])`` under ``logits[b, t]``: (B, T, V), (B, T) -> (B, T) float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def sequence_logprob(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Sum of the masked tokens' log-probabilities, log pi(y | x): (B, T, V), (B, T), (B, T) -> (B,)."""
    return (token_logprobs(logits, targets) * mask.float()).sum(dim=1)


def bradley_terry_loss(reward_chosen: Tensor, reward_rejected: Tensor) -> Tensor:
    """``-log sigmoid(r_chosen - r_rejected)`` per pair (Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1): (B,) -> (B,)."""
    return -F.logsigmoid(reward_chosen - reward_rejected)


def dpo_implicit_rewards(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                         beta: float) -> tuple[Tensor, Tensor]:
    """DPO's implicit rewards ``beta log(pi(y|x) / pi_ref(y|x))`` of the chosen and rejected responses (Rafailov et al. 2023, Eq. 5)."""
    return beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float) -> Tensor:
    """Direct preference optimisation (Rafailov et al. 2023, Eq. 7), per pair.

    ``-log sigmoid(beta log(pi(y_w)/pi_ref(y_w)) - beta log(pi(y_l)/pi_ref(y_l)))``: log 2 when the policy
    equals the reference; its gradient raises log pi(y_w) and lowers log pi(y_l).

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: (B,) sequence log-probabilities.
        beta: the strength of the implicit KL constraint.
    """
    chosen, rejected = dpo_implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return -F.logsigmoid(chosen - rejected)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n (Stiennon et al. 2020, App. G.3; Gao et al. 2022, Eq. 3)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n
