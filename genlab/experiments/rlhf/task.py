"""The task every stage shares: the pretrained run, the chat template, the prompts, the oracle, evaluation."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genlab.data.batches import mix_seed
from genlab.data.chat import SFT_KEYS, ChatTemplate, builtin_prompts, read_jsonl
from genlab.engine.checkpoint import list_checkpoints
from genlab.engine.config import load_config
from genlab.engine.runs import CHECKPOINTS, load_run_model
from genlab.engine.trainer import train
from genlab.errors import CheckpointError, ConfigError, GenlabError
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.policy import (
    Scorer,
    batch_responses,
    build_scorer,
    sample_batch,
    sequence_kl,
)
from genlab.models.base import eval_mode

#: the stages, in pipeline order; each is a folder of the pipeline's --out
STAGES = ("pretrain", "sft", "preferences", "reward", "ppo", "dpo", "best-of-n")
#: seed streams of the stages (mixed with the config's seed and a step), so no two stages share random numbers
STREAMS = {name: i + 11 for i, name in enumerate(STAGES)} | {"eval": 97}


class RunInterrupted(GenlabError):
    """A stage stopped before it finished (a signal or a budget); running the command again resumes it."""


def pretrain_dir(cfg: RLHFConfig, root: Path) -> Path:
    """The pretrained GPT run: `pretrain.run`, or DIR/pretrain."""
    return Path(cfg.pretrain.run) if cfg.pretrain.run else Path(root) / "pretrain"


def run_pretrain(cfg: RLHFConfig, root: Path) -> Path:
    """Train (or resume, or reuse) the pretrained GPT with the engine's trainer; return its run folder."""
    out = pretrain_dir(cfg, root)
    if cfg.pretrain.run:
        if not list_checkpoints(out / CHECKPOINTS):
            raise CheckpointError(f"pretrain.run={out} has no checkpoint; give a trained GPT run folder")
        return out
    run_cfg = load_config(cfg.pretrain.config, cfg.pretrain.overrides)
    if run_cfg.family != "gpt":
        raise ConfigError(f"pretrain.config={cfg.pretrain.config} trains a {run_cfg.family}; the policy needs family: gpt")
    def finished() -> bool:
        ckpts = list_checkpoints(out / CHECKPOINTS)
        return bool(ckpts) and ckpts[-1].name.startswith(f"step-{run_cfg.trainer.max_steps:09d}")

    if not finished():
        train(run_cfg, out, resume=(out / CHECKPOINTS).is_dir())
    if not finished():  # stopped early (Ctrl-C, SIGTERM, a time budget): the next stages need the whole model
        raise RunInterrupted(f"pretraining in {out} stopped before trainer.max_steps={run_cfg.trainer.max_steps}; "
                             f"run the same command again to resume it")
    return out


@dataclass
class Task:
    """The pretrained model and what every stage reads from it."""

    cfg: RLHFConfig
    root: Path
    pretrain_dir: Path
    template: ChatTemplate
    pretrained: object  # the frozen pretrained Transformer (fluency for the oracle)
    scorer: Scorer
    train: list[dict]
    eval: list[dict]
    context: int

    def policy_from(self, run_dir: Path):
        """A fresh copy of the policy `net` of a GPT run folder (in train mode)."""
        return load_run_model(Path(run_dir)).net.train()

    def fits(self, prompt_ids: list[int], response_len: int) -> bool:
        """Whether a prompt and a response of `response_len` tokens fit every batch (a response of at most
        `task.max_new_tokens`, a prompt of at most the longest prompt, checked by :func:`load_task`)."""
        return response_len <= self.cfg.task.max_new_tokens and len(prompt_ids) <= self.context


def load_task(cfg: RLHFConfig, root: Path) -> Task:
    """The task of a pipeline folder (its pretrained run must exist)."""
    pre = pretrain_dir(cfg, root)
    if not list_checkpoints(pre / CHECKPOINTS):
        raise CheckpointError(f"no pretrained model in {pre}; run `genlab rlhf pipeline CONFIG --out {root}` "
                              f"or set pretrain.run to a GPT run folder")
    model = load_run_model(pre)
    template = ChatTemplate(model.tokenizer)
    net = model.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    t = cfg.task
    train_records, eval_records = builtin_prompts(t.corpus, t.n_train, t.n_eval, prompt_words=t.prompt_words,
                                                  seed=cfg.seed)
    if t.sft_data:
        train_records = read_jsonl(t.sft_data, SFT_KEYS)
    context = net.cfg.max_seq_len
    longest = max(len(template.prompt_ids(r["prompt"])) for r in [*train_records, *eval_records])
    if longest + t.max_new_tokens > context:
        raise ConfigError(f"the longest prompt ({longest} tokens) plus task.max_new_tokens={t.max_new_tokens} exceeds "
                          f"the pretrained model's context ({context}); lower task.max_new_tokens or task.prompt_words")
    return Task(cfg, Path(root), pre, template, net, build_scorer(cfg.oracle, template, net), train_records,
                eval_records, context)


def frozen_copy(net):
    """A frozen deep copy of a network (the reference model of PPO and DPO)."""
    ref = copy.deepcopy(net).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def mean_se(x: Tensor) -> tuple[float, float]:
    """Mean and standard error of a sample."""
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(len(x))) if len(x) > 1 else 0.0


@torch.no_grad()
def evaluate_policy(task: Task, net, reference_net, reward_model=None, *, n: int | None = None,
                    seed_offset: int = 0) -> dict:
    """Score `net` on the held-out prompts: oracle and proxy reward, KL to the reference, length, ended share.

    Sampling is seeded by the config's seed (and `seed_offset`), so two evaluations of one policy agree.
    Returns the numbers and `samples` (prompt, completion, oracle, proxy) for the report.
    """
    records = task.eval[:n] if n else task.eval
    g = torch.Generator().manual_seed(mix_seed(task.cfg.seed, STREAMS["eval"], seed_offset))
    prompts = [task.template.prompt_ids(r["prompt"]) for r in records]
    oracle, proxy, kl, lengths, ended, samples = [], [], [], [], [], []
    bs = task.cfg.sampling.batch_size
    for i in range(0, len(prompts), bs):
        batch = sample_batch(net, task.template, prompts[i:i + bs], task.cfg.task.max_new_tokens, task.cfg.sampling, g)
        responses = batch_responses(batch)
        texts = [r["prompt"] for r in records[i:i + bs]]
        gold = task.scorer(texts, responses)
        completions, did_end = task.scorer.texts(responses)
        oracle.append(gold)
        kl.append(sequence_kl(net, reference_net, batch).double())
        lengths.append(batch.response_mask.sum(dim=1).double())
        ended.append(did_end.double())
        if reward_model is not None:
            proxy.append(proxy_reward(reward_model, batch, did_end, task.cfg.ppo.no_end_penalty).double())
        for j, (p, c) in enumerate(zip(texts, completions)):
            samples.append({"prompt": p, "completion": c, "oracle": float(gold[j])}
                           | ({"proxy": float(proxy[-1][j])} if proxy else {}))
    out = summarise(torch.cat(oracle), torch.cat(proxy) if proxy else None, torch.cat(kl), torch.cat(lengths),
                    torch.cat(ended))
    out["samples"] = samples
    return out


def summarise(oracle: Tensor, proxy: Tensor | None, kl: Tensor, lengths: Tensor, ended: Tensor) -> dict:
    """The numbers of one evaluation."""
    o, o_se = mean_se(oracle)
    out = {"oracle": o, "oracle_se": o_se, "kl": float(kl.mean()), "length": float(lengths.mean()),
           "ended": float(ended.mean())}
    if proxy is not None:
        out["proxy"], out["proxy_se"] = mean_se(proxy)
    return out


@torch.no_grad()
def proxy_reward(reward_model, batch, ended: Tensor, no_end_penalty: float) -> Tensor:
    """The reward model's score of each (prompt, response), minus the penalty where the response never ended: (B,)."""
    with eval_mode(reward_model):
        score = reward_model.score(batch.tokens, batch.pad_mask)
    return score - no_end_penalty * (~ended).float()
