"""The resumable optimisation loop the SFT, reward and DPO stages share.

Each step's batch is a function of (seed, stage, step) only, so a stage killed at any point and
resumed from its last checkpoint (weights, optimiser moments, step) continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from genlab.experiments.rlhf.stage import StageFolder

#: the checkpoint key and prefix under which a policy is saved, as a GPT run's model (`state_dict/net.*`)
POLICY_KEY, POLICY_PREFIX = "state_dict", "net."


def policy_state(net: nn.Module) -> dict:
    """A policy's weights as a GPT run checkpoint holds them (`net.` prefix; tied tensors stored once each)."""
    return {POLICY_PREFIX + k: v.detach().clone() for k, v in net.state_dict().items()}


def load_policy_state(net: nn.Module, state: dict) -> None:
    """Inverse of :func:`policy_state`."""
    net.load_state_dict({k.removeprefix(POLICY_PREFIX): v for k, v in state.items()})


def module_state(net: nn.Module) -> dict:
    """A module's weights, detached copies."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save_state(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer], extra: dict) -> dict:
    """The checkpoint of modules (the policy under POLICY_KEY) and optimisers, with `extra`."""
    state = {k: (policy_state(m) if k == POLICY_KEY else module_state(m)) for k, m in modules.items()}
    state |= {f"optim_{k}": o.state_dict() for k, o in optimizers.items()}
    return state | extra


def restore_state(state: dict, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Inverse of :func:`save_state` (the extras stay in `state`)."""
    for k, m in modules.items():
        if k == POLICY_KEY:
            load_policy_state(m, state[k])
        else:
            m.load_state_dict(state[k])
    for k, o in optimizers.items():
        o.load_state_dict(state[f"optim_{k}"])


def clipped_step(optimizer: torch.optim.Optimizer, params, grad_clip: float | None) -> float:
    """Clip the gradient norm, step, zero the gradients; return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def optimise(folder: StageFolder, *, steps: int, ckpt_every: int, modules: dict[str, nn.Module],
             optimizers: dict[str, torch.optim.Optimizer], step_fn: Callable[[int], dict]) -> None:
    """Run `step_fn(step)` (which steps the optimisers and returns the numbers to log) from the last checkpoint on."""
    state = folder.resume()
    start = 0
    if state is not None:
        restore_state(state, modules, optimizers)
        start = int(state["step"])
    for step in range(start, steps):
        metrics = step_fn(step)
        folder.log(step + 1, metrics)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            folder.save(step + 1, save_state(modules, optimizers, {}))
