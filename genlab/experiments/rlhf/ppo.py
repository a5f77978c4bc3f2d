"""PPO against the reward model with a per-token KL penalty to the frozen SFT model (Ziegler et al. 2019;
Stiennon et al. 2020; Ouyang et al. 2022), resumable bit for bit.

Each iteration: draw `rollout_size` training prompts and sample responses (one generator, the
*rollout RNG*, whose state is checkpointed), score them with the reward model (the proxy; a response
that never ends is penalised), turn the score and the per-token KL into per-token rewards, estimate
advantages with GAE under the value model, then run `epochs` passes of clipped policy and value
updates over shuffled minibatches. The KL coefficient is fixed or adaptive (its state is
checkpointed). The networks run without dropout, so a step draws no random number but the rollout
RNG's: a run killed and resumed from its last checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genlab.data.batches import mix_seed
from genlab.data.chat import ChatBatch
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.loop import (
    POLICY_KEY,
    clipped_step,
    restore_state,
    save_state,
)
from genlab.experiments.rlhf.policy import (
    batch_responses,
    response_logits,
    sample_batch,
)
from genlab.experiments.rlhf.reward import load_reward_model
from genlab.experiments.rlhf.stage import StageFolder
from genlab.experiments.rlhf.task import (
    STREAMS,
    Task,
    evaluate_policy,
    frozen_copy,
    load_task,
    proxy_reward,
)
from genlab.models.reward import ScalarHeadModel
from genlab.rlhf import (
    AdaptiveKLController,
    FixedKLController,
    clip_fraction,
    gae,
    kl_penalized_rewards,
    masked_mean,
    ppo_clip_loss,
    token_logprobs,
    value_clip_loss,
    whiten,
)


@dataclass
class Rollout:
    """One batch of experience: the sampled responses and everything PPO's updates read."""

    batch: ChatBatch
    old_logprobs: Tensor  # (B, L)
    old_values: Tensor  # (B, L)
    advantages: Tensor  # (B, L)
    returns: Tensor  # (B, L)
    score: Tensor  # (B,) proxy reward
    kl: Tensor  # (B,) summed per-token KL to the reference
    prompts: list[str]


def token_values(value_model: ScalarHeadModel, batch: ChatBatch) -> Tensor:
    """V(s_t) before each response token: (B, L), from the value head at positions P-1 .. P+L-2."""
    v = value_model(batch.tokens[:, :-1], batch.pad_mask[:, :-1])  # (B, P+L-1)
    return v[:, batch.prompt_len - 1:] * batch.response_mask.float()


def kl_controller(spec):
    """The fixed or adaptive KL coefficient of the config."""
    if spec.adaptive_kl:
        return AdaptiveKLController(spec.kl_coef, spec.kl_target, spec.kl_horizon)
    return FixedKLController(spec.kl_coef)


@torch.no_grad()
def collect_rollout(task: Task, policy, reference, value_model, reward_model, beta: float, g: torch.Generator) -> Rollout:
    """Sample responses to `rollout_size` training prompts and compute rewards, values and advantages."""
    spec = task.cfg.ppo
    idx = torch.randint(len(task.train), (spec.rollout_size,), generator=g).tolist()
    texts = [task.train[i]["prompt"] for i in idx]
    batch = sample_batch(policy, task.template, [task.template.prompt_ids(t) for t in texts],
                         task.cfg.task.max_new_tokens, task.cfg.sampling, g)
    mask = batch.response_mask
    old_lp = token_logprobs(response_logits(policy, batch), batch.responses) * mask.float()
    ref_lp = token_logprobs(response_logits(reference, batch), batch.responses) * mask.float()
    values = token_values(value_model, batch)
    _, ended = task.scorer.texts(batch_responses(batch))
    score = proxy_reward(reward_model, batch, ended, spec.no_end_penalty)
    shaped = whiten(score, shift_mean=False) if spec.normalize_rewards else score
    rewards, kl = kl_penalized_rewards(shaped, old_lp, ref_lp, mask, beta)
    adv, returns = gae(rewards, values, spec.gamma, spec.lam, mask)
    if spec.whiten_advantages:
        adv = whiten(adv, mask)
    return Rollout(batch, old_lp, values, adv, returns, score, kl.sum(dim=1), texts)


def ppo_update(task: Task, ro: Rollout, policy, value_model, opt_policy, opt_value, g: torch.Generator) -> dict:
    """`epochs` passes of clipped policy and value updates over shuffled minibatches; the mean statistics."""
    spec = task.cfg.ppo
    B = len(ro.prompts)
    stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
    n = 0
    for _ in range(spec.epochs):
        order = torch.randperm(B, generator=g)
        for start in range(0, B, spec.minibatch):
            rows = order[start:start + spec.minibatch]
            mb = ChatBatch(ro.batch.tokens[rows], ro.batch.pad_mask[rows], ro.batch.response_mask[rows],
                           ro.batch.prompt_len)
            mask = mb.response_mask
            logits = response_logits(policy, mb)  # (b, L, V)
            lp = token_logprobs(logits, mb.responses)
            pg = masked_mean(ppo_clip_loss(lp, ro.old_logprobs[rows], ro.advantages[rows], spec.clip), mask)
            pg.backward()
            clipped_step(opt_policy, policy.parameters(), spec.grad_clip)
            v = token_values(value_model, mb)
            vl = masked_mean(value_clip_loss(v, ro.old_values[rows], ro.returns[rows], spec.value_clip), mask)
            vl.backward()
            clipped_step(opt_value, value_model.parameters(), spec.grad_clip)
            with torch.no_grad():
                logp = torch.log_softmax(logits.float(), dim=-1)
                entropy = masked_mean(-(logp.exp() * logp).sum(-1), mask)
                frac = masked_mean(clip_fraction(lp, ro.old_logprobs[rows], ro.advantages[rows], spec.clip).float(),
                                   mask)
            for k, x in zip(stats, (pg, vl, entropy, frac)):
                stats[k] += x.item()
            n += 1
    return {k: v / n for k, v in stats.items()}


def run_ppo(cfg: RLHFConfig, root: Path, *, stop_after: int | None = None) -> dict | None:
    """Train DIR/ppo (resuming where it stopped); return its result.

    Args:
        stop_after: stop (without finishing) once this many iterations are done and checkpointed, as a
            process killed there would; the next call resumes. For tests of exact resume.
    """
    task = load_task(cfg, root)
    spec = cfg.ppo
    with StageFolder(root, "ppo", cfg) as folder:
        if folder.done:
            return folder.result()
        folder.export_gpt_run(task.pretrain_dir)
        sft = Path(root) / "sft"
        policy = task.policy_from(sft).eval()  # eval mode: no dropout, so the rollout RNG is the only randomness
        reference = frozen_copy(policy)
        reward_model = load_reward_model(task, root)
        if spec.value_init == "reward":
            value_model = frozen_copy(reward_model)
        else:
            value_model = ScalarHeadModel.from_language_model(policy).eval()
        for p in value_model.parameters():
            p.requires_grad_(True)
        opt_policy = torch.optim.AdamW(policy.parameters(), lr=spec.lr, weight_decay=0.0)
        opt_value = torch.optim.AdamW(value_model.parameters(), lr=spec.value_lr, weight_decay=0.0)
        kl_ctl = kl_controller(spec)
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["ppo"]))
        modules = {POLICY_KEY: policy, "value": value_model}
        optimizers = {"policy": opt_policy, "value": opt_value}
        state = folder.resume()
        start = 0
        if state is not None:
            restore_state(state, modules, optimizers)
            kl_ctl.load_state_dict(state["kl_controller"])
            g.set_state(state["rollout_rng"])
            start = int(state["step"])
        for it in range(start, spec.iterations):
            ro = collect_rollout(task, policy, reference, value_model, reward_model, kl_ctl.value, g)
            stats = ppo_update(task, ro, policy, value_model, opt_policy, opt_value, g)
            oracle = task.scorer(ro.prompts, batch_responses(ro.batch))
            row = {"proxy": float(ro.score.mean()), "oracle": float(oracle.mean()), "kl": float(ro.kl.mean()),
                   "beta": kl_ctl.value, "length": float(ro.batch.response_mask.sum(1).float().mean()), **stats}
            kl_ctl.update(float(ro.kl.mean()), len(ro.prompts))
            if (it + 1) % spec.eval_every == 0 or it + 1 == spec.iterations:
                ev = evaluate_policy(task, policy, reference, reward_model)
                row |= {f"eval_{k}": v for k, v in ev.items() if k != "samples"}
            folder.log(it + 1, row)
            if (it + 1) % spec.ckpt_every == 0 or it + 1 == spec.iterations:
                folder.save(it + 1, save_state(modules, optimizers, {"kl_controller": kl_ctl.state_dict(),
                                                                     "rollout_rng": g.get_state()}))
                if stop_after is not None and it + 1 >= stop_after and it + 1 < spec.iterations:
                    return None
        ev = evaluate_policy(task, policy, reference, reward_model)
        result = {"stage": "ppo", "iterations": spec.iterations, "beta": kl_ctl.value,
                  **{k: v for k, v in ev.items() if k != "samples"}}
        folder.write_result(result)
        return result
