"""The optimisers the trainer steps: AdamW (Loshchilov & Hutter 2019) for every parameter by default, or Muon
(Jordan et al. 2024, `torch.optim.Muon`: momentum orthogonalised by Newton-Schulz iterations) for a family's
hidden weight matrices with AdamW for the rest (embeddings, head, gains), as the modded-nanogpt speed runs do.

Lightning's automatic optimisation steps one optimiser per training step, so Muon and AdamW are stepped
together through `ChainedOptimizer`, whose parameter groups are the inner optimisers' own group dicts:
the learning-rate schedule scales both, gradient clipping sees every parameter, and a checkpoint holds
both states.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genlab.errors import ConfigError

MUON_KEY = "muon"  # a parameter-group dict marked {"muon": True} holds hidden matrices that Muon may update


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimisers over disjoint parameters, stepped as one (one closure call per step)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("ChainedOptimizer: the optimisers share parameters")
        super().__init__(params, {})
        self.optimizers = optimizers
        # the inner groups themselves: a scheduler or a clipper that edits a group edits the optimiser that uses it
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"ChainedOptimizer: {len(states)} saved states for {len(self.optimizers)} optimisers")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW over parameter-group dicts (the Muon mark dropped); foreach: one fused update over all tensors
    (PyTorch picks it by default on CUDA only; on the CPU the per-tensor loop cost 3% of a digits U-Net step)."""
    plain = [{k: v for k, v in g.items() if k != MUON_KEY} for g in groups]
    return torch.optim.AdamW(plain, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True)


def muon_adamw(groups: list[dict], lr: float, betas: tuple[float, float], weight_decay: float,
               family: str) -> ChainedOptimizer:
    """Muon for the groups marked {"muon": True} (2-D matrices), AdamW for the others, at one base rate.

    Muon's update is scaled to AdamW's RMS (`adjust_lr_fn="match_rms_adamw"`, Liu et al. 2025, "Muon is
    scalable"), so `optim.lr` and its schedule mean the same for both.

    Raises:
        ConfigError: the family marks no hidden matrices (nothing for Muon to update).
    """
    hidden = [g for g in groups if g.get(MUON_KEY)]
    if not hidden:
        raise ConfigError(f"optim.optimizer=muon: the {family} family names no hidden weight matrices for Muon; "
                          f"use optim.optimizer=adamw")
    for g in hidden:
        bad = [tuple(p.shape) for p in g["params"] if p.dim() != 2]
        if bad:
            raise ValueError(f"Muon updates 2-D matrices only; the {family} family marked shapes {bad}")
    muon = torch.optim.Muon([{k: v for k, v in g.items() if k != MUON_KEY} for g in hidden], lr=lr,
                            weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")  # momentum 0.95, Nesterov
    rest = [g for g in groups if not g.get(MUON_KEY)]
    return ChainedOptimizer([muon, adamw(rest, lr, betas, weight_decay)] if rest else [muon])
