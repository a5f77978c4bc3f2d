"""Language-model math: the next-token loss and autoregressive decoding (temperature, top-k, top-p, KV cache).

Pure tensor functions over any causal network with ``forward(tokens, cache=None)`` and
``new_cache(batch)``; they import only torch (the math layer).
"""

from genlab.lm.decoding import filter_logits, generate, generate_until, sample_next
from genlab.lm.losses import next_token_loss, next_token_nll

__all__ = ["filter_logits", "generate", "generate_until", "next_token_loss", "next_token_nll", "sample_next"]
