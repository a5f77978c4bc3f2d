"""Direct preference optimisation (Rafailov et al. 2023) on the preference pairs, reference log-probs computed once."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batches import mix_seed
from genlab.engine.checkpoint import load_checkpoint, save_checkpoint
from genlab.errors import CheckpointError
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.loop import POLICY_KEY, clipped_step, optimise
from genlab.experiments.rlhf.policy import response_logprobs
from genlab.experiments.rlhf.reward import load_reward_model, pair_batch, read_pairs
from genlab.experiments.rlhf.stage import StageFolder
from genlab.experiments.rlhf.task import (
    STREAMS,
    Task,
    evaluate_policy,
    frozen_copy,
    load_task,
)
from genlab.models.base import eval_mode
from genlab.rlhf import dpo_implicit_rewards, dpo_loss

REFERENCE = "reference_logprobs"


def pair_logprobs(net, task: Task, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(chosen | x) and log pi(rejected | x), summed over response tokens: (B,), (B,)."""
    batch = pair_batch(task, pairs)
    seq = response_logprobs(net, batch).sum(dim=1)  # padding contributes 0
    return seq[:len(pairs)], seq[len(pairs):]


@torch.no_grad()
def reference_logprobs(reference, task: Task, pairs: list[dict], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The reference model's sequence log-probs of every pair, computed once: {"chosen": (N,), "rejected": (N,)}."""
    chosen, rejected = [], []
    with eval_mode(reference):
        for i in range(0, len(pairs), batch_size):
            c, r = pair_logprobs(reference, task, pairs[i:i + batch_size])
            chosen.append(c)
            rejected.append(r)
    return {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}


def run_dpo(cfg: RLHFConfig, root: Path) -> dict:
    """Train DIR/dpo from the SFT model on the preference pairs (resuming where it stopped); return its result."""
    task = load_task(cfg, root)
    pairs, _ = read_pairs(root)
    with StageFolder(root, "dpo", cfg) as folder:
        if folder.done:
            return folder.result()
        folder.export_gpt_run(task.pretrain_dir)
        policy = task.policy_from(Path(root) / "sft").eval()  # no dropout: the reference and the policy agree at step 0
        reference = frozen_copy(policy)
        ref_path = folder.path / f"{REFERENCE}.json"
        try:
            ref = load_checkpoint(ref_path) if ref_path.is_file() else None
        except CheckpointError:
            ref = None
        if ref is None:
            ref = reference_logprobs(reference, task, pairs)
            save_checkpoint(ref, folder.path / REFERENCE)
        spec = cfg.dpo
        opt = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)

        def step_fn(step: int) -> dict:
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["dpo"], step))
            idx = torch.randint(len(pairs), (spec.batch_size,), generator=g)
            c, r = pair_logprobs(policy, task, [pairs[i] for i in idx.tolist()])
            loss = dpo_loss(c, r, ref["chosen"][idx], ref["rejected"][idx], spec.beta).mean()
            loss.backward()
            with torch.no_grad():
                rc, rr = dpo_implicit_rewards(c, r, ref["chosen"][idx], ref["rejected"][idx], spec.beta)
            return {"loss": loss.item(), "reward_accuracy": (rc > rr).float().mean().item(),
                    "margin": (rc - rr).mean().item(), "grad_norm": clipped_step(opt, policy.parameters(), 1.0)}

        optimise(folder, steps=spec.steps, ckpt_every=spec.ckpt_every, modules={POLICY_KEY: policy},
                 optimizers={"policy": opt}, step_fn=step_fn)
        ev = evaluate_policy(task, policy, reference, load_reward_model(task, root))
        result = {"stage": "dpo", "beta": spec.beta, **{k: v for k, v in ev.items() if k != "samples"}}
        folder.write_result(result)
        return result
