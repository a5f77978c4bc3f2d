"""What the language-model families (GPT, MDLM) share: the transformer built from the data, the run's
tokenizer, prompts, text previews, decoupled weight decay, and dropout drawn from the step's seed."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from genlab.data.base import DataInfo
from genlab.data.batches import Batch, mix_seed
from genlab.data.infill import InfillTemplate
from genlab.data.tokenizer import EOT, MASK, TextTokenizer
from genlab.errors import ConfigError, DataError
from genlab.models.base import GenerativeModule, ParamGroup
from genlab.models.optimizers import MUON_KEY
from genlab.models.options import BITS_PER_CHAR, BITS_PER_TOKEN
from genlab.models.specs.gpt import TransformerFields
from genlab.nn.transformer import Transformer, TransformerConfig

#: what separates the texts of one preview file
PREVIEW_SEPARATOR = "\n\n" + "-" * 72 + "\n\n"


def build_transformer(spec: TransformerFields, info: DataInfo, *, causal: bool) -> Transformer:
    """The transformer of a text run: vocabulary and context from the data, the rest from the spec.

    Raises:
        ConfigError: the data are not a text corpus's token sequences.
    """
    if info.modality != "tokens" or info.corpus is None:
        raise ConfigError(f"a language model needs text data, but the data are {info.modality}s {tuple(info.shape)}"
                          f"{'' if info.modality != 'tokens' else ' without a corpus'}; use data.name=pydocs or "
                          f"data.name=text:PATH")
    cfg = TransformerConfig(
        vocab_size=info.vocab_size, max_seq_len=info.shape[0], d_model=spec.d_model, n_layers=spec.n_layers,
        n_heads=spec.n_heads, mlp_ratio=spec.mlp_ratio, causal=causal, norm=spec.norm, mlp=spec.mlp,
        qk_norm=spec.qk_norm, zero_init=spec.zero_init, softcap=spec.softcap, tie_weights=spec.tie_weights,
        dropout=spec.dropout, rope_base=spec.rope_base)
    return Transformer(cfg)


class TextModule(GenerativeModule, ABC):
    """Base of the language-model families: `net` is a Transformer; the run's tokenizer turns text into ids."""

    USES_EMA = False  # a language model does without: an EMA copy doubles the weights in memory

    def __init__(self, net: Transformer, info: DataInfo, optim, spec: TransformerFields) -> None:
        super().__init__(net, info, optim)
        self.spec = spec
        self.context = info.shape[0]
        self.eot_id = info.corpus.special_id(EOT)
        self.mask_id = info.corpus.special_id(MASK)
        self.likelihood_unit = BITS_PER_CHAR if info.corpus.tokenizer == "char" else BITS_PER_TOKEN
        self.tokenizer: TextTokenizer | None = None

    def set_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Attach the run's tokenizer (read from its tokenizer.json); needed for text in and out."""
        if tokenizer.vocab_size != self.info.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {self.info.vocab_size}")
        self.tokenizer = tokenizer

    def _need_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer attached (load it with genlab.engine.runs.load_run_model)")
        return self.tokenizer

    def encode_prompt(self, prompt: str | None, flag: str = "--prompt") -> list[int]:
        """The ids of a prompt; DataError naming the characters a character vocabulary lacks."""
        if not prompt:
            return []
        try:
            return self._need_tokenizer().encode(prompt)
        except DataError as err:
            raise DataError(f"{flag}: {err}; this run's vocabulary comes from its training text") from None

    def decode(self, ids) -> str:
        """The text of token ids (a special id appears as its name)."""
        return self._need_tokenizer().decode([int(i) for i in ids])

    #: how `fill_spans` fills, as reported beside an infill result
    INFILL_METHOD = "?"

    def check_infill_length(self, length: int) -> None:
        """Refuse a template the family cannot read whole (a bidirectional denoiser's context); default: any."""

    @abstractmethod
    def fill_spans(self, tokens: Tensor, given: Tensor, *, generator: torch.Generator | None = None,
                   **options) -> Tensor:
        """Fill the positions where `given` (L,) is False in each row of `tokens` (B, L): (B, L) int64."""

    def infill(self, text: str, *, generator: torch.Generator | None = None, **options) -> dict:
        """Fill each `[MASK:n]` span of `text` with exactly n tokens (`fill_spans`); other characters stay byte-identical.

        Returns:
            {"text": the completed text, "fills": each span's text, "fill_tokens": each span's n ids,
            "method": how it was filled}.
        Raises:
            DataError: a malformed span ([MASK:0]), none, characters outside a character vocabulary, or
                (mdlm) a text longer than the context.
        """
        template = InfillTemplate.parse(text)
        tokens, given = template.encode(lambda piece: self.encode_prompt(piece, flag="--text"), self.mask_id)
        self.check_infill_length(len(tokens))
        filled = self.fill_spans(tokens[None], given, generator=generator, **options)[0]
        completed, fills = template.fill(filled, given, self.decode)
        return {"text": completed, "fills": fills, "fill_tokens": template.fills(filled, given),
                "method": self.INFILL_METHOD}

    def preview(self, samples: Tensor, stem: Path) -> Path:
        """Write generated token sequences (n, L) as text, one after another, to `stem`.txt."""
        path = stem.with_name(stem.name + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is None:
            texts = [" ".join(str(int(i)) for i in row) for row in samples]
        else:
            texts = [self.decode(row) for row in samples]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(PREVIEW_SEPARATOR.join(texts) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def optimizer_groups(self) -> list[ParamGroup]:
        """One optimiser whose weight decay reaches only the hidden matrices (GPT-2, nanoGPT): embeddings, the
        head (tied or not) and norm gains are not decayed unless `model.decay_embeddings`. The hidden
        matrices are marked for Muon (`optim.optimizer=muon`); the rest stays with AdamW."""
        hidden, other = [], []
        for name, p in self.net.named_parameters():
            (hidden if p.dim() >= 2 and name.startswith("blocks.") else other).append(p)
        decay_other = getattr(self.spec, "decay_embeddings", False)
        groups = [{"params": hidden, MUON_KEY: True}, {"params": other, **({} if decay_other else {"weight_decay": 0.0})}]
        return [ParamGroup("net", [g for g in groups if g["params"]], self.optim.lr)]

    @contextlib.contextmanager
    def step_randomness(self, batch: Batch):
        """A block whose dropout draws from the step's seed and the micro-batch's rows, not the global RNG.

        So a resumed run draws the same dropout masks as the uninterrupted one (exact resume). With
        dropout 0 nothing is drawn and the block costs nothing.
        """
        if not self.spec.dropout:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(mix_seed(batch.seed, 5, batch.offset))
            yield
