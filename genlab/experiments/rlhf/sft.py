"""Supervised fine-tuning: the policy learns the demonstrations, loss on completion tokens only, ending each turn."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batches import mix_seed
from genlab.errors import DataError
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.loop import POLICY_KEY, clipped_step, optimise
from genlab.experiments.rlhf.policy import response_logprobs
from genlab.experiments.rlhf.stage import StageFolder
from genlab.experiments.rlhf.task import STREAMS, Task, evaluate_policy, load_task
from genlab.rlhf import masked_mean


def demonstrations(task: Task) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + end token) of every demonstration that fits the context."""
    pairs = []
    for r in task.train:
        p, c = task.template.prompt_ids(r["prompt"]), task.template.response_ids(r["completion"])
        if task.fits(p, len(c)):
            pairs.append((p, c))
    if not pairs:
        raise DataError(f"no demonstration fits task.max_new_tokens={task.cfg.task.max_new_tokens} tokens; raise it")
    return pairs


def sft_loss(net, task: Task, pairs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (the end token included), prompts not scored."""
    batch = task.template.batch([p for p, _ in pairs], [c for _, c in pairs])
    return -masked_mean(response_logprobs(net, batch), batch.response_mask)


def run_sft(cfg: RLHFConfig, root: Path) -> dict:
    """Train DIR/sft from the pretrained model (resuming where it stopped); return its result."""
    task = load_task(cfg, root)
    with StageFolder(root, "sft", cfg) as folder:
        if folder.done:
            return folder.result()
        folder.export_gpt_run(task.pretrain_dir)
        net = task.policy_from(task.pretrain_dir)
        pairs = demonstrations(task)
        spec = cfg.sft
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=0.0)

        def step_fn(step: int) -> dict:
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["sft"], step))
            idx = torch.randint(len(pairs), (spec.batch_size,), generator=g).tolist()
            loss = sft_loss(net, task, [pairs[i] for i in idx])
            loss.backward()
            return {"loss": loss.item(), "grad_norm": clipped_step(opt, net.parameters(), 1.0)}

        optimise(folder, steps=spec.steps, ckpt_every=spec.ckpt_every, modules={POLICY_KEY: net},
                 optimizers={"policy": opt}, step_fn=step_fn)
        with torch.no_grad():
            held_out = [(task.template.prompt_ids(r["prompt"]), task.template.response_ids(r["completion"]))
                        for r in task.eval]
            held_out = [p for p in held_out if task.fits(p[0], len(p[1]))]
            val_loss = float(sft_loss(net.eval(), task, held_out)) if held_out else float("nan")
        ev = evaluate_policy(task, net, task.pretrained)
        result = {"stage": "sft", "val_loss": val_loss, "demonstrations": len(pairs),
                  **{k: v for k, v in ev.items() if k != "samples"}}
        folder.write_result(result)
        return result
