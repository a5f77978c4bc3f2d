"""Masked (absorbing-state) diffusion for token sequences: MDLM (Sahoo et al. 2024).

"Simple and Effective Masked Diffusion Language Models", Sahoo et al. 2024 (arXiv:2406.07524).
Each token ``x^l`` of a clean sequence is independently replaced by the mask token ``m`` with
probability ``1 - alpha_t``; ``alpha_t`` falls from 1 at ``t = 0`` (clean) to 0 at ``t = 1``
(all masked)::

    q(z_t^l | x^l) = Cat(z_t^l; alpha_t x^l + (1 - alpha_t) m)

The denoiser ``x_theta(z_t)`` is a categorical distribution per position under the SUBS
parameterisation: zero mass on the mask token, and an unmasked token is copied. The
continuous-time negative ELBO is then (MDLM's continuous-time NELBO, Sec. 3)::

    L = E_{t ~ U[0, 1], z_t ~ q} [ alpha'_t / (1 - alpha_t) * sum_l log <x_theta^l(z_t), x^l> ]

where only masked positions contribute (SUBS makes the others exactly 0). For the log-linear
schedule ``alpha_t = 1 - t`` the weight ``alpha'_t / (1 - alpha_t)`` is ``-1/t``, so each masked
position costs ``(1/t) * CE``.

Ancestral sampling from ``t`` to ``s < t`` (MDLM's reverse process under SUBS): an unmasked token stays;
a masked one unmasks with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` to a token drawn
from ``x_theta``, and otherwise stays masked. When a step changes no token the denoiser's input
is unchanged, so its output is reused (MDLM's "efficient sampler" caching); this is exact for a denoiser
that does not take ``t`` (MDLM drops time conditioning; so does genlab's ``denoise(z_t)``).
Positions that are given (not masked) at the start never change, which is infilling.

Everything here is a pure function of tensors and a ``torch.Generator``; schedules and
sampling probabilities are float64, and the categorical draw is a float64 Gumbel-max: float32
Gumbel noise truncates the tail of the distribution and lowers sample diversity (Zheng et al.
2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate
Categorical Sampling").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LogLinearSchedule",
    "ancestral_step",
    "mdlm_loss",
    "mdlm_token_loss",
    "q_mask",
    "sample_mdlm",
    "sample_times",
    "subs_log_probs",
    "timesteps",
]


@dataclass(frozen=True)
class LogLinearSchedule:
    """``alpha_t = 1 - t``: the masking probability grows linearly in t (MDLM's "log-linear" schedule).

    Its name comes from the total noise ``sigma(t) = -log(alpha_t) = -log(1 - t)``. MDLM's code
    uses ``alpha_t = 1 - (1 - eps) t`` so that nothing is fully masked; here ``alpha_1 = 0``
    exactly (everything masked at t = 1) and ``eps`` lives in :func:`sample_times` instead,
    which keeps t, and so the weight 1/t, away from 0.
    """

    def alpha(self, t: Tensor) -> Tensor:
        """``alpha_t``, float64."""
        return 1.0 - torch.as_tensor(t, dtype=torch.float64)

    def dalpha(self, t: Tensor) -> Tensor:
        """``alpha'_t = d alpha_t / dt``, float64."""
        return -torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def elbo_weight(self, t: Tensor) -> Tensor:
        """``alpha'_t / (1 - alpha_t)``, the NELBO's weight on ``log p`` of a masked token: ``-1/t``; float64."""
        return self.dalpha(t) / (1.0 - self.alpha(t))


def sample_times(n: int, *, generator: torch.Generator | None = None, eps: float = 1e-3, antithetic: bool = True,
                 device: torch.device | str | None = None) -> Tensor:
    """Training times ``t`` in ``[eps, 1)``: (n,) float64.

    With ``antithetic`` (MDLM's "low-discrepancy sampler", after Kingma et al. 2021's VDM), one
    uniform draw per stratum: ``t_i = eps + (1 - eps) (i + u_i) / n``, which lowers the variance
    of the batch's NELBO estimate while every ``t_i`` stays marginally uniform once the batch
    is shuffled.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    if antithetic:
        u = (torch.arange(n, dtype=torch.float64, device=device) + u) / n
    return eps + (1.0 - eps) * u


def q_mask(x: Tensor, t: Tensor, mask_id: int, schedule: LogLinearSchedule = LogLinearSchedule(), *,
           generator: torch.Generator | None = None) -> Tensor:
    """Draw ``z_t ~ q(z_t | x)``: each token independently becomes ``mask_id`` with probability ``1 - alpha_t``.

    Args:
        x: (B, L) int64 clean tokens (never ``mask_id``).
        t: (B,) times in [0, 1].
    Returns:
        (B, L) int64 ``z_t``. At ``t = 0`` nothing is masked; at ``t = 1`` everything is.
    """
    assert x.dim() == 2 and t.shape == (x.shape[0],), f"x must be (B, L) and t (B,), got {tuple(x.shape)}, {tuple(t.shape)}"
    move = 1.0 - schedule.alpha(t.to(x.device))  # (B,) float64
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)  # in [0, 1)
    return torch.where(u < move[:, None], torch.full_like(x, mask_id), x)


def subs_log_probs(logits: Tensor, z_t: Tensor, mask_id: int) -> Tensor:
    """The SUBS parameterisation of MDLM: ``log x_theta(z_t)`` from raw denoiser logits.

    Zero masking probability: the mask logit is set to -inf before the softmax. Carry-over
    unmasking: where ``z_t`` is not masked, the distribution is a point mass on ``z_t``.

    Args:
        logits: (B, L, V) raw network output.
        z_t: (B, L) int64 noisy tokens.
    Returns:
        (B, L, V) float32 log-probabilities (entries of -inf where a token is impossible).
    """
    assert logits.shape[:2] == z_t.shape, f"logits {tuple(logits.shape)} do not match z_t {tuple(z_t.shape)}"
    V = logits.shape[-1]
    vocab = torch.arange(V, device=logits.device)
    no_mask = torch.where(vocab == mask_id, float("-inf"), 0.0)  # (V,)
    log_p = F.log_softmax(logits.float() + no_mask, dim=-1)  # (B, L, V)
    copy = torch.where(vocab == z_t[..., None], 0.0, float("-inf"))  # (B, L, V): point mass on z_t
    return torch.where((z_t != mask_id)[..., None], copy, log_p)


def mdlm_token_loss(logits: Tensor, x: Tensor, z_t: Tensor, t: Tensor, mask_id: int,
                    schedule: LogLinearSchedule = LogLinearSchedule()) -> Tensor:
    """The per-position continuous-time NELBO integrand: ``-alpha'_t / (1 - alpha_t) * log x_theta(z_t)[x]`` on masked positions, 0 elsewhere.

    For the log-linear schedule this is ``(1/t) * CE`` on masked positions.

    Args:
        logits: (B, L, V) raw denoiser output on ``z_t``.
        x: (B, L) clean tokens; z_t: (B, L) their masked version; t: (B,) times.
    Returns:
        (B, L) float32 losses in nats.
    """
    log_p = subs_log_probs(logits, z_t, mask_id)
    log_p_x = log_p.gather(-1, x[..., None]).squeeze(-1)  # (B, L)
    weight = (-schedule.elbo_weight(t.to(x.device))).float()[:, None]  # (B, 1): 1/t for log-linear
    masked = z_t == mask_id
    return torch.where(masked, -log_p_x * weight, torch.zeros_like(log_p_x))


def mdlm_loss(logits: Tensor, x: Tensor, z_t: Tensor, t: Tensor, mask_id: int,
              schedule: LogLinearSchedule = LogLinearSchedule()) -> Tensor:
    """The NELBO per token of each sequence, one Monte-Carlo draw of (t, z_t): (B,) float32 nats.

    Its expectation over ``t`` and ``z_t`` bounds the negative log-likelihood per token from above.
    """
    return mdlm_token_loss(logits, x, z_t, t, mask_id, schedule).mean(dim=1)


def timesteps(steps: int) -> Tensor:
    """The sampling grid ``1 = t_0 > t_1 > ... > t_steps = 0``, uniform in t: (steps + 1,) float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def ancestral_step(log_p_x0: Tensor, z_t: Tensor, t: float, s: float, mask_id: int,
                   schedule: LogLinearSchedule = LogLinearSchedule(), *,
                   generator: torch.Generator | None = None) -> Tensor:
    """One step ``z_t -> z_s ~ p_theta(z_s | z_t)`` for ``s < t`` (MDLM's reverse posterior under SUBS).

    A masked position unmasks with probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` to a
    token drawn from ``exp(log_p_x0)``; unmasked positions stay. The random numbers drawn
    depend only on ``z_t`` (one uniform per position, then Gumbel noise for the positions that
    unmask), never on how ``log_p_x0`` was obtained, so cached and uncached runs agree; drawing
    Gumbel noise only where a token is chosen keeps a step's memory at (unmasking, V), not (B, L, V).

    Args:
        log_p_x0: (B, L, V) SUBS log-probabilities (:func:`subs_log_probs`) at ``z_t``.
        z_t: (B, L) int64.
        t, s: times with ``0 <= s < t <= 1``.
    Returns:
        (B, L) int64 ``z_s``.
    """
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"need 0 <= s < t <= 1, got t={t}, s={s}")
    a_t, a_s = schedule.alpha(torch.tensor(t)), schedule.alpha(torch.tensor(s))
    p_unmask = float((a_s - a_t) / (1.0 - a_t))  # 1 when s = 0: everything left unmasks
    u = torch.rand(z_t.shape, generator=generator, dtype=torch.float64, device=z_t.device)
    unmask = (z_t == mask_id) & (u < p_unmask)  # (B, L)
    # Gumbel-max in float64: argmax(log p + g) is a draw from p.
    log_p = log_p_x0[unmask].double()  # (N, V), N positions unmasking
    e = torch.rand(log_p.shape, generator=generator, dtype=torch.float64, device=z_t.device)
    g = -torch.log(-torch.log(e.clamp_min(torch.finfo(torch.float64).tiny)))
    z_s = z_t.clone()
    z_s[unmask] = (log_p + g).argmax(dim=-1)
    return z_s


def sample_mdlm(denoise: Callable[[Tensor], Tensor], z: Tensor, ts: Tensor, mask_id: int, *,
                schedule: LogLinearSchedule = LogLinearSchedule(), generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, cache: bool = True) -> Tensor:
    """Ancestral sampling of MDLM from ``z`` along the grid ``ts`` (which ends at 0); returns the tokens.

    Start from all-mask tokens to generate, or from a sequence with some positions given to
    infill: given positions never change. With ``cache``, the denoiser output is reused for as
    long as no token changes (exact for a time-independent denoiser, and bit-identical to
    ``cache=False`` for a fixed generator). Sampling stops early once nothing is masked.

    Args:
        denoise: ``z_t (B, L) int64 -> raw logits (B, L, V)``; SUBS is applied here.
        z: (B, L) int64 start, ``mask_id`` at the positions to generate.
        ts: (N + 1,) decreasing times, ``ts[-1] == 0`` (see :func:`timesteps`).
        callback: called after each step with ``{"i", "t", "s", "z", "log_p_x0", "nfe"}``
            (``z`` = z_s, ``log_p_x0`` the SUBS output the step used, ``nfe`` the denoiser calls so far).
    Returns:
        (B, L) int64 with no ``mask_id`` left.
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.dim() != 1 or len(ts) < 2 or float(ts[-1]) != 0.0 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be a decreasing 1-D grid of at least 2 times ending at 0")
    z = z.clone()
    log_p, nfe = None, 0
    for i in range(len(ts) - 1):
        if not bool((z == mask_id).any()):
            break
        if log_p is None or not cache:
            log_p = subs_log_probs(denoise(z), z, mask_id)
            nfe += 1
        used = log_p
        z_s = ancestral_step(used, z, float(ts[i]), float(ts[i + 1]), mask_id, schedule, generator=generator)
        if not torch.equal(z_s, z):
            log_p = None  # the denoiser's input changed
        z = z_s
        if callback is not None:
            callback({"i": i, "t": float(ts[i]), "s": float(ts[i + 1]), "z": z, "log_p_x0": used, "nfe": nfe})
    return z
