"""Caption-encoder pretraining: learn to read each caption's scene, objects in spatial order, before stage 2.

Trained from scratch with the denoiser, the caption encoder stays close to what it starts as: a bag
of words (zero-initialised output projections and rotary positions only, so each token's encoding
is its embedding). "A red circle to the left of a blue square" and "a blue square to the left of a
red circle" hold the same words, and the denoiser cannot tell them apart: measured on shapes, the
relation of two objects drawn right held in 26 of 52 prompts after the default 960 s of stage 2,
and 67 of 152 after three times that (chance is one half; docs/notes/new-tracks-2026-12-06.md).

So, before the denoiser trains, the encoder alone trains for `model.text.pretrain_steps` steps
(seconds) on the training captions to state the scene each caption asks for:

- two slot queries attend over the encoded caption, as the denoiser's cross-attention does, and
  classify the shape, colour, size ("not stated" a class of its own) and cell of the object first
  and second in spatial order: of two objects, the one the relation puts to the left (or above)
  first (`spatial_order`); one object fills slot 0, with its cell, and leaves slot 1 empty;
- the two slots together classify the relation's axis (none, horizontal, vertical);
- each word's encoding classifies which object's phrase it is in, by spatial rank, or the relation
  (`word_roles`).

So the encoded words of an object carry where it goes relative to the other, which is what the
denoiser's cross-attention needs to read. The labels are the grammar's own parse of the text
(`parse_caption`): no image is read, and only training captions, so the held-out combinations stay
unseen. The head is then dropped, and stage 2 trains the denoiser with this encoder (at
`text.lr_scale` of the rate, or frozen at 0). A stronger pretrained text encoder helps prompt
fidelity more than a larger denoiser in Imagen (Saharia et al. 2022, Sec. 4.4); this is that idea
at the scale of a grammar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.data.shape_captions import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    parse_caption,
    spatial_order,
    word_roles,
)
from genlab.nn.cross_attention import TextEncoder

#: classes of each slot's attributes; the last class of each is "no object in this slot"
#: (size also has "not stated", before it)
SLOT_CLASSES = {"shape": len(SHAPES) + 1, "colour": len(COLOURS) + 1, "size": len(SIZES) + 2, "cell": len(POSITIONS) + 1}
AXES = ("none", "horizontal", "vertical")
#: a word's role: the spatial rank of its object (0, 1) or the relation phrase
ROLES = 3
IGNORE = -100


def _slot_labels(obj) -> list[int]:
    """[shape, colour, size, cell] class indices of one object (None: the empty slot)."""
    if obj is None:
        return [n - 1 for n in SLOT_CLASSES.values()]
    size = len(SIZES) if obj.size is None else SIZES.index(obj.size)
    cell = len(POSITIONS) if obj.position is None else POSITIONS.index(obj.position)
    return [SHAPES.index(obj.shape), list(COLOURS).index(obj.colour), size, cell]


def scene_labels(captions: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """The targets of each caption: (N, 9) int64 [slot 0's shape, colour, size, cell, slot 1's, axis] and
    (N, max_len) int64 word roles (IGNORE at padding)."""
    scenes, roles = [], torch.full((len(captions), max_len), IGNORE, dtype=torch.long)
    for i, caption in enumerate(captions):
        prompt = parse_caption(caption)
        objects = [prompt.objects[j] for j in spatial_order(prompt.relation)] + [None]
        axis = 0 if prompt.relation is None else 1 if prompt.relation in ("to the left of", "to the right of") else 2
        scenes.append(_slot_labels(objects[0]) + _slot_labels(objects[1]) + [axis])
        words = word_roles(caption)[:max_len]
        roles[i, : len(words)] = torch.tensor([ROLES - 1 if r < 0 else r for r in words])
    return torch.tensor(scenes, dtype=torch.long), roles


class SceneHead(nn.Module):
    """Reads a scene from an encoded caption: two slot queries by single-head attention, a linear classifier
    per attribute, one for the axis, and one for each word's role."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.key = nn.Linear(dim, dim)
        self.attributes = nn.ModuleList(nn.Linear(dim, n) for n in SLOT_CLASSES.values())
        self.axis = nn.Linear(2 * dim, len(AXES))
        self.role = nn.Linear(dim, ROLES)

    def forward(self, context: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
        """context (B, 1 + L, D), mask (B, 1 + L) from TextEncoder -> (scene logits: a list of (B, classes), one
        per column of `scene_labels`; role logits (B, L, ROLES))."""
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(context)) / context.shape[-1] ** 0.5
        slots = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1) @ context  # (B, 2, D)
        logits = [head(slots[:, j]) for j in range(2) for head in self.attributes]
        return [*logits, self.axis(slots.flatten(1))], self.role(context[:, 1:])


def scene_loss(head: SceneHead, encoder: TextEncoder, ids: Tensor, scenes: Tensor,
               roles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Summed cross-entropies, and per caption whether the whole scene is read right (B,) and the share of
    words whose role is right."""
    scene_logits, role_logits = head(*encoder(ids))
    loss = sum(F.cross_entropy(lg, scenes[:, j]) for j, lg in enumerate(scene_logits))
    right = torch.stack([lg.argmax(-1) == scenes[:, j] for j, lg in enumerate(scene_logits)]).all(0)
    words = roles != IGNORE
    loss = loss + F.cross_entropy(role_logits[words], roles[words])
    return loss, right, (role_logits.argmax(-1) == roles)[words].float().mean()


def pretrain_caption_encoder(encoder: TextEncoder, ids: Tensor, captions: Sequence[str], steps: int, *, lr: float,
                             batch_size: int, seed: int) -> dict:
    """Train `encoder` in place for `steps` AdamW steps on `captions` (encoded as `ids` (N, L), PAD_ID at
    padding); the head is discarded. Deterministic given `seed`.

    Returns:
        {"steps", "seconds", "loss" (of the last step), "scene_accuracy", "role_accuracy"}: accuracies on
        (up to 2000 of) the training captions after the last step.
    """
    started = time.perf_counter()
    scenes, roles = scene_labels(captions, ids.shape[1])
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = SceneHead(encoder.dim)
    optimiser = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr)
    encoder.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = torch.randint(len(ids), (min(batch_size, len(ids)),), generator=g)
        loss, _, _ = scene_loss(head, encoder, ids[batch], scenes[batch], roles[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    encoder.eval()
    with torch.no_grad():
        _, right, role_accuracy = scene_loss(head, encoder, ids[:2000], scenes[:2000], roles[:2000])
    return {"steps": steps, "seconds": time.perf_counter() - started, "loss": float(loss.detach()),
            "scene_accuracy": float(right.float().mean()), "role_accuracy": float(role_accuracy)}


__all__ = ["SceneHead", "pretrain_caption_encoder", "scene_labels", "scene_loss"]
