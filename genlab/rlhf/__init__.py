"""The math of learning from preferences (torch and the standard library only).

- ``advantages.py``: generalised advantage estimation, whitening, the KL-penalised per-token reward.
- ``ppo.py``: the clipped policy and value losses of PPO, Schulman's KL estimators, the fixed and
  adaptive KL controllers.
- ``preference.py``: Bradley-Terry and DPO losses, the reward read at the end token, best-of-n's KL.
- ``scaling.py``: Gao et al. 2022's functional forms of the gold reward against sqrt(KL), fitted by least squares.
"""

from genlab.rlhf.advantages import (
    discounted_returns,
    gae,
    kl_penalized_rewards,
    masked_mean,
    whiten,
)
from genlab.rlhf.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clip_fraction,
    kl_estimators,
    ppo_clip_loss,
    value_clip_loss,
)
from genlab.rlhf.preference import (
    best_of_n_kl,
    bradley_terry_loss,
    dpo_implicit_rewards,
    dpo_loss,
    end_index,
    reward_at_end,
    sequence_logprob,
    token_logprobs,
)
from genlab.rlhf.scaling import GOLD_FORMS, fit_gold_form, gold_form

__all__ = [
    "GOLD_FORMS",
    "AdaptiveKLController",
    "FixedKLController",
    "best_of_n_kl",
    "bradley_terry_loss",
    "clip_fraction",
    "discounted_returns",
    "dpo_implicit_rewards",
    "dpo_loss",
    "end_index",
    "fit_gold_form",
    "gae",
    "gold_form",
    "kl_estimators",
    "kl_penalized_rewards",
    "masked_mean",
    "ppo_clip_loss",
    "reward_at_end",
    "sequence_logprob",
    "token_logprobs",
    "value_clip_loss",
    "whiten",
]
