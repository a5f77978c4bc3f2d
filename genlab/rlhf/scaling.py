"""Gao et al. 2022's functional forms of the gold (oracle) reward gain against d = sqrt(KL), fitted by least squares.

Best-of-n: ``R(d) = d (a - b d)``; RL: ``R(d) = d (a - b log d)`` (Gao et al. 2022, Eqs. 1-2). Both
are linear in (a, b), so ordinary least squares through the origin fits them exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bon_features(d: Tensor) -> Tensor:
    return torch.stack([d, -d * d], dim=-1)  # (N, 2)


def _rl_features(d: Tensor) -> Tensor:
    safe = torch.where(d > 0, d, torch.ones_like(d))
    return torch.stack([d, -d * torch.log(safe)], dim=-1)  # (N, 2); d log d -> 0 at d = 0


#: name -> the features (N,) -> (N, 2) whose (a, b) combination is the form
GOLD_FORMS = {"bon": _bon_features, "rl": _rl_features}


def fit_gold_form(form: str, d: Tensor, gain: Tensor) -> tuple[float, float]:
    """Least-squares (a, b) of ``gain ~ form(d; a, b)``.

    Args:
        form: "bon" or "rl".
        d: (N,) sqrt(KL) values (float64 recommended).
        gain: (N,) reward minus the reward at d = 0.
    """
    X = GOLD_FORMS[form](d.double())
    coef = torch.linalg.lstsq(X, gain.double()[:, None]).solution.squeeze(1)
    return float(coef[0]), float(coef[1])


def gold_form(form: str, d: Tensor, a: float, b: float) -> Tensor:
    """The form's value at ``d`` for coefficients (a, b)."""
    return GOLD_FORMS[form](d.double()) @ torch.tensor([a, b], dtype=torch.float64)
