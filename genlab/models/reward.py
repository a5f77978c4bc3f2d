"""The reward and value models of the RLHF pipeline: the shared transformer with a scalar head.

A reward model scores a whole response at its end token (Ouyang et al. 2022; Stiennon et al.
2020); a value model (PPO's critic) predicts the return at every position. Both are one module,
:class:`ScalarHeadModel`: the text transformer's final hidden states, then a linear map to one number.
"""

from __future__ import annotations

from torch import Tensor, nn

from genlab.nn.transformer import Transformer, TransformerConfig
from genlab.rlhf import reward_at_end


class ScalarHeadModel(nn.Module):
    """A causal transformer body with a linear head that outputs one number per position.

    Args:
        cfg: the body's transformer config (causal).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not cfg.causal:
            raise ValueError("a reward or value model reads a response left to right: use a causal transformer")
        self.body = Transformer(cfg)
        self.head = nn.Linear(cfg.d_model, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (cfg.d_model + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_language_model(cls, net: Transformer) -> ScalarHeadModel:
        """A scalar-head model whose body starts from a language model's weights (SFT or pretrained)."""
        model = cls(net.cfg)
        model.body.load_state_dict(net.state_dict())
        return model

    def forward(self, tokens: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Per-position scalars: (B, T) int64 -> (B, T) float32."""
        h = self.body.hidden_states(tokens, pad_mask=pad_mask)  # (B, T, D)
        return self.head(h.float()).squeeze(-1)

    def score(self, tokens: Tensor, pad_mask: Tensor) -> Tensor:
        """The reward of each sequence, read at its last real token (its end token): (B,)."""
        return reward_at_end(self(tokens, pad_mask), ~pad_mask)

