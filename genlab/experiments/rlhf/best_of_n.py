"""Best-of-n against the reward model: the baseline every method must beat (Stiennon et al. 2020; Gao et al. 2022).

For each held-out prompt, N = max(ns) SFT samples; for each n the samples are cut into N / n disjoint
groups of n, and the reward model's favourite of each group is kept, so every n averages the same
number of draws. Its KL to the SFT model is the analytic log n - (n - 1) / n.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genlab.data.batches import mix_seed
from genlab.data.chat import write_jsonl
from genlab.experiments.rlhf.config import RLHFConfig
from genlab.experiments.rlhf.policy import batch_responses, sample_batch
from genlab.experiments.rlhf.reward import load_reward_model
from genlab.experiments.rlhf.stage import StageFolder
from genlab.experiments.rlhf.task import STREAMS, load_task, mean_se, proxy_reward
from genlab.rlhf import best_of_n_kl

SAMPLES = "samples"


def run_best_of_n(cfg: RLHFConfig, root: Path) -> dict:
    """DIR/best-of-n: oracle and proxy reward of best-of-n for each n, and its chosen samples."""
    task = load_task(cfg, root)
    ns = sorted(set(cfg.best_of_n.ns))
    N = max(ns)
    with StageFolder(root, "best-of-n", cfg) as folder:
        if folder.done:
            return folder.result()
        sft = task.policy_from(Path(root) / "sft").eval()
        reward_model = load_reward_model(task, root)
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, STREAMS["best-of-n"]))
        texts = [r["prompt"] for r in task.eval]
        proxy = torch.zeros(len(texts), N, dtype=torch.float64)
        oracle = torch.zeros(len(texts), N, dtype=torch.float64)
        completions: list[list[str]] = [[] for _ in texts]
        lengths = torch.zeros(len(texts), N, dtype=torch.float64)
        per_batch = max(1, cfg.sampling.batch_size // N)  # prompts per sampling batch
        for i in range(0, len(texts), per_batch):
            chunk = texts[i:i + per_batch]
            rows = [p for p in chunk for _ in range(N)]
            batch = sample_batch(sft, task.template, [task.template.prompt_ids(p) for p in rows],
                                 cfg.task.max_new_tokens, cfg.sampling, g)
            responses = batch_responses(batch)
            done, ended = task.scorer.texts(responses)
            proxy[i:i + len(chunk)] = proxy_reward(reward_model, batch, ended, cfg.ppo.no_end_penalty).double().view(-1, N)
            oracle[i:i + len(chunk)] = task.scorer(rows, responses).view(-1, N)
            lengths[i:i + len(chunk)] = batch.response_mask.sum(1).double().view(-1, N)
            for j, c in enumerate(done):
                completions[i + j // N].append(c)
        rows_out = []
        for n in ns:
            groups = N // n
            pick = proxy[:, :groups * n].view(len(texts), groups, n).argmax(dim=2)  # (prompts, groups)
            cols = torch.arange(groups)[None, :] * n + pick
            o, p, ln = (x.gather(1, cols) for x in (oracle, proxy, lengths))
            om, ose = mean_se(o.mean(dim=1))
            pm, pse = mean_se(p.mean(dim=1))
            rows_out.append({"n": n, "oracle": om, "oracle_se": ose, "proxy": pm, "proxy_se": pse,
                             "kl": best_of_n_kl(n), "length": float(ln.mean())})
            write_jsonl(folder.path / SAMPLES / f"best-of-{n}.jsonl",
                        [{"prompt": t, "completion": completions[k][int(cols[k, 0])], "oracle": float(o[k, 0]),
                          "proxy": float(p[k, 0])} for k, t in enumerate(texts)])
        result = {"stage": "best-of-n", "draws": N, "rows": rows_out}
        folder.write_result(result)
        return result
