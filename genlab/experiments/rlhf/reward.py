"""Preference collection (pairs of SFT samples labelled by the oracle) and the reward model (Bradley-Terry)."""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batches import mix_seed
from genlab.data.chat import PREFERENCE_KEYS, read_jsonl, write_jsonl
from genlab.engine.checkpoint import latest_checkpoint, load_tensors
from genlab.eval.oracle import preference_labels
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.loop import clipped_step, optimise
from genlab.experiments.rlhf.policy import sample_many
from genlab.experiments.rlhf.stage import StageFolder, read_result
from genlab.experiments.rlhf.task import STREAMS, Task, load_task
from genlab.models.base import eval_mode
from genlab.models.reward import ScalarHeadModel
from genlab.rlhf import bradley_terry_loss

PAIRS = "pairs.jsonl"


def collect_preferences(cfg: RLHFConfig, root: Path) -> dict:
    """DIR/preferences/pairs.jsonl: two SFT samples per prompt, the oracle's preferred one `chosen` (with label noise).

    Each record holds prompt, chosen, rejected (text), their token ids, both oracle scores, and whether
    it is held out (the last `reward.held_out` share, for the reward model's accuracy).
    """
    task = load_task(cfg, root)
    with StageFolder(root, "preferences", cfg) as folder:
        if folder.done:
            return folder.result()
        if cfg.task.preference_data:
            records = _encode_external(task, read_jsonl(cfg.task.preference_data, PREFERENCE_KEYS))
        else:
            records = _sample_pairs(task, root)
        n_held = max(1, int(round(cfg.reward.held_out * len(records))))
        for i, r in enumerate(records):
            r["held_out"] = i >= len(records) - n_held
        write_jsonl(folder.path / PAIRS, records)
        agree = sum(r["oracle_chosen"] >= r["oracle_rejected"] for r in records) / len(records)
        result = {"stage": "preferences", "pairs": len(records), "held_out": n_held, "labels_agree_with_oracle": agree}
        folder.write_result(result)
        return result


def _sample_pairs(task: Task, root: Path) -> list[dict]:
    cfg = task.cfg
    read_result(Path(root) / "sft")
    net = task.policy_from(Path(root) / "sft")
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["preferences"]))
    prompts = [r["prompt"] for r in task.train] * cfg.preferences.pairs_per_prompt
    ids = [task.template.prompt_ids(p) for p in prompts]
    a = sample_many(net, task.template, ids, cfg.task.max_new_tokens, cfg.sampling, g)
    b = sample_many(net, task.template, ids, cfg.task.max_new_tokens, cfg.sampling, g)
    score_a, score_b = task.scorer(prompts, a), task.scorer(prompts, b)
    prefer_a = preference_labels(score_a, score_b, noise=cfg.oracle.label_noise, generator=g)
    text_a, _ = task.scorer.texts(a)
    text_b, _ = task.scorer.texts(b)
    out = []
    for i, p in enumerate(prompts):
        first = bool(prefer_a[i])
        c, r = (a[i], b[i]) if first else (b[i], a[i])
        out.append({"prompt": p, "chosen": text_a[i] if first else text_b[i], "rejected": text_b[i] if first else text_a[i],
                    "chosen_ids": c, "rejected_ids": r,
                    "oracle_chosen": float(score_a[i] if first else score_b[i]),
                    "oracle_rejected": float(score_b[i] if first else score_a[i])})
    return out


def _encode_external(task: Task, records: list[dict]) -> list[dict]:
    """Preference pairs from a JSONL file: responses encoded with the end token, scored by the oracle for agreement."""
    t = task.template
    prompts = [r["prompt"] for r in records]
    chosen = [t.response_ids(r["chosen"])[-task.cfg.task.max_new_tokens:] for r in records]
    rejected = [t.response_ids(r["rejected"])[-task.cfg.task.max_new_tokens:] for r in records]
    sc, sr = task.scorer(prompts, chosen), task.scorer(prompts, rejected)
    return [r | {"chosen_ids": c, "rejected_ids": j, "oracle_chosen": float(a), "oracle_rejected": float(b)}
            for r, c, j, a, b in zip(records, chosen, rejected, sc, sr)]


def read_pairs(root: Path) -> tuple[list[dict], list[dict]]:
    """The (training, held-out) preference pairs of a pipeline folder."""
    read_result(Path(root) / "preferences")
    records = read_jsonl(Path(root) / "preferences" / PAIRS, PREFERENCE_KEYS)
    return [r for r in records if not r["held_out"]], [r for r in records if r["held_out"]]


def pair_batch(task: Task, pairs: list[dict]):
    """One ChatBatch of 2B rows: the chosen responses, then the rejected ones."""
    prompts = [task.template.prompt_ids(r["prompt"]) for r in pairs]
    return task.template.batch(prompts + prompts, [r["chosen_ids"] for r in pairs] + [r["rejected_ids"] for r in pairs],
                               response_len=1)


def reward_scores(model: ScalarHeadModel, task: Task, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reward model's scores of the chosen and rejected responses: (B,), (B,)."""
    batch = pair_batch(task, pairs)
    s = model.score(batch.tokens, batch.pad_mask)
    return s[:len(pairs)], s[len(pairs):]


def load_reward_model(task: Task, root: Path) -> ScalarHeadModel:
    """The trained reward model of DIR/reward (frozen, eval mode)."""
    read_result(Path(root) / "reward")
    model = ScalarHeadModel(task.pretrained.cfg)
    model.load_state_dict(load_tensors(latest_checkpoint(Path(root) / "reward" / "checkpoints"), prefix="reward/"))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_reward(cfg: RLHFConfig, root: Path) -> dict:
    """Train DIR/reward on the preference pairs; report held-out pairwise accuracy and agreement with the oracle."""
    task = load_task(cfg, root)
    train_pairs, held = read_pairs(root)
    with StageFolder(root, "reward", cfg) as folder:
        if folder.done:
            return folder.result()
        model = ScalarHeadModel.from_language_model(task.policy_from(Path(root) / "sft"))
        spec = cfg.reward
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)

        def step_fn(step: int) -> dict:
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["reward"], step))
            idx = torch.randint(len(train_pairs), (spec.batch_size,), generator=g).tolist()
            chosen, rejected = reward_scores(model, task, [train_pairs[i] for i in idx])
            loss = bradley_terry_loss(chosen, rejected).mean()
            loss.backward()
            acc = (chosen > rejected).float().mean().item()
            return {"loss": loss.item(), "accuracy": acc, "grad_norm": clipped_step(opt, model.parameters(), 1.0)}

        optimise(folder, steps=spec.steps, ckpt_every=spec.ckpt_every, modules={"reward": model},
                 optimizers={"reward": opt}, step_fn=step_fn)
        with torch.no_grad(), eval_mode(model):
            chosen, rejected = reward_scores(model, task, held)
        oracle_order = torch.tensor([r["oracle_chosen"] >= r["oracle_rejected"] for r in held])
        rm_order = chosen > rejected
        result = {"stage": "reward", "held_out_pairs": len(held),
                  "held_out_accuracy": float(rm_order.float().mean()),
                  "oracle_agreement": float((rm_order == oracle_order).float().mean()),
                  "held_out_loss": float(bradley_terry_loss(chosen, rejected).mean())}
        folder.write_result(result)
        return result
