"""The RLHF pipeline's config: typed sections per stage, loaded from YAML with `key=value` overrides.

One file drives every stage (`genlab rlhf sft|reward|ppo|dpo|best-of-n|pipeline CONFIG --out DIR`);
each stage reads its own section and the folders of the stages before it inside DIR.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from genlab.engine.config import _set, parse_override, read_yaml
from genlab.errors import ConfigError, did_you_mean, printable
from genlab.models.specs import Spec


class PretrainSpec(Spec):
    """The pretrained language model: a GPT run config trained by `genlab train`, or an existing GPT run."""

    config: str = Field("configs/pydocs-gpt.yaml", description="GPT run config (relative to the working directory)")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides of that config")
    run: str | None = Field(None, description="an existing GPT run folder to start from instead of training one")


class TaskSpec(Spec):
    """The built-in task: prompts drawn from a corpus's sentences (or JSONL files)."""

    corpus: str = "pydocs"
    n_train: int = Field(540, ge=8)
    n_eval: int = Field(200, ge=8, description="held-out prompts every method is scored and sampled on")
    prompt_words: int = Field(4, ge=1)
    max_new_tokens: int = Field(24, ge=2, description="the longest response; one that never ends is penalised")
    sft_data: str | None = Field(None, description="JSONL of prompt/completion instead of the built-in demonstrations")
    preference_data: str | None = Field(None, description="JSONL of prompt/chosen/rejected instead of oracle labels")


class OracleSpec(Spec):
    """The gold reward (the labeller): kind and its settings, and the annotators' label noise."""

    kind: Literal["sentiment", "length", "keyword"] = "sentiment"
    fluency_weight: float = Field(0.1, ge=0.0)
    fluency_floor: float = -8.0
    no_end_penalty: float = Field(1.0, ge=0.0)
    target_words: int = Field(8, ge=1)
    keyword: str = "python"
    label_noise: float = Field(0.0, ge=0.0, le=0.5, description="probability that a preference label is flipped")


class SamplingSpec(Spec):
    """How every stage samples responses."""

    temperature: float = Field(1.0, gt=0.0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    batch_size: int = Field(64, ge=1)


class SFTSpec(Spec):
    """Supervised fine-tuning on demonstrations (loss on completion tokens only)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    ckpt_every: int = Field(100, ge=1)


class PreferenceSpec(Spec):
    """Preference collection: pairs of SFT samples labelled by the oracle."""

    pairs_per_prompt: int = Field(2, ge=1)


class RewardSpec(Spec):
    """The reward model (Bradley-Terry on the preference pairs)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    held_out: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of pairs kept for held-out accuracy")
    ckpt_every: int = Field(100, ge=1)


class PPOSpec(Spec):
    """PPO against the reward model with a per-token KL penalty to the SFT model."""

    iterations: int = Field(40, ge=1, description="rollout batches")
    rollout_size: int = Field(32, ge=1)
    epochs: int = Field(4, ge=1, description="passes over each rollout batch")
    minibatch: int = Field(16, ge=1)
    lr: float = Field(1e-5, gt=0.0)
    value_lr: float = Field(1e-4, gt=0.0)
    clip: float = Field(0.2, gt=0.0)
    value_clip: float = Field(0.2, gt=0.0)
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    kl_coef: float = Field(0.05, ge=0.0)
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0.0)
    kl_horizon: int = Field(10_000, ge=1)
    whiten_advantages: bool = True
    normalize_rewards: bool = False
    no_end_penalty: float = Field(1.0, ge=0.0, description="subtracted from the proxy reward of a response that never ends")
    value_init: Literal["reward", "policy"] = "reward"
    grad_clip: float = Field(1.0, gt=0.0)
    ckpt_every: int = Field(5, ge=1)
    eval_every: int = Field(10, ge=1, description="score the held-out prompts (oracle, proxy, KL) every N iterations")


class DPOSpec(Spec):
    """Direct preference optimisation on the same pairs."""

    beta: float = Field(0.1, gt=0.0)
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-5, gt=0.0)
    ckpt_every: int = Field(100, ge=1)


class BestOfNSpec(Spec):
    """Best-of-n against the reward model."""

    ns: list[int] = Field(default_factory=lambda: [1, 4, 16, 64])


class RLHFConfig(Spec):
    """The whole pipeline."""

    name: str = "rlhf"
    seed: int = 0
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    oracle: OracleSpec = Field(default_factory=OracleSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    sft: SFTSpec = Field(default_factory=SFTSpec)
    preferences: PreferenceSpec = Field(default_factory=PreferenceSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    ppo: PPOSpec = Field(default_factory=PPOSpec)
    dpo: DPOSpec = Field(default_factory=DPOSpec)
    best_of_n: BestOfNSpec = Field(default_factory=BestOfNSpec)


def _explain(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = printable(".".join(loc))
    if err["type"] == "extra_forbidden":
        spec = RLHFConfig
        for part in loc[:-1]:
            ann = spec.model_fields[part].annotation if part in spec.model_fields else None
            spec = ann if isinstance(ann, type) and issubclass(ann, Spec) else spec
        fields = list(spec.model_fields)
        return f"unknown key {key}{did_you_mean(loc[-1], fields)}; valid keys here: {', '.join(fields)}"
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return f"bad value for {key}: {err['msg']}{shown}"


def build_rlhf_config(tree: dict, overrides: list[str] = (), source: str = "config") -> RLHFConfig:
    """Validate a raw tree (after `key=value` overrides) into an RLHFConfig; a ConfigError names the key."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        path, value = parse_override(text)
        _set(tree, path, value)
    try:
        return RLHFConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_explain(e)}") from None


def load_rlhf_config(path: str | Path, overrides: list[str] = ()) -> RLHFConfig:
    """Load an RLHF pipeline config from YAML."""
    return build_rlhf_config(read_yaml(path), overrides, source=str(path))
