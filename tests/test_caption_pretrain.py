"""Caption pretraining (genlab/models/caption_pretrain.py): the labels of a caption's scene in spatial order, and
an encoder that starts as a bag of words and learns to tell "A left of B" from "B left of A"."""

from __future__ import annotations

import pytest
import torch
from conftest import one_thread

from genlab.data.captions import caption_ids
from genlab.data.shape_captions import CaptionTokenizer, spatial_order, word_roles
from genlab.data.shapes import shapes_data
from genlab.models.caption_pretrain import (
    IGNORE,
    SceneHead,
    pretrain_caption_encoder,
    scene_labels,
    scene_loss,
)
from genlab.models.specs import T2ISpec
from genlab.nn.cross_attention import TextEncoder

TOKENIZER = CaptionTokenizer()
L = 16


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_word_roles_follow_space_not_word_order():
    """Each word carries the spatial rank of its object (left / top first), -1 in the relation phrase."""
    assert spatial_order(None) == (0,) and spatial_order("above") == (0, 1) and spatial_order("below") == (1, 0)
    assert word_roles("a red circle to the left of a blue square") == [0, 0, 0, -1, -1, -1, -1, 1, 1, 1]
    assert word_roles("a red circle to the right of a blue square") == [1, 1, 1, -1, -1, -1, -1, 0, 0, 0]
    assert word_roles("there is a small red ball under a box") == [1] * 6 + [-1] + [0] * 2
    assert word_roles("top-left: a big red ball") == [0] * 7


def test_one_scene_has_one_label_whatever_the_words():
    """"A left of B" and "B right of A" (other templates and synonyms) ask for the same scene and get the same
    labels; "B left of A" is another scene. A single object keeps its cell, a pair has none."""
    captions = ["a red circle to the left of a large blue square", "large blue box right of red ball",
                "a large blue square to the left of a red circle", "top-left: a big red ball"]
    scenes, roles = scene_labels(captions, L)
    assert torch.equal(scenes[0], scenes[1]) and not torch.equal(scenes[0], scenes[2])
    assert torch.equal(scenes[0][[0, 1, 2, 3]], scenes[2][[4, 5, 6, 7]])  # the slots swap
    assert scenes[3][3] == 0 and scenes[3][4:8].tolist() == [3, 7, 3, 9] and scenes[3][8] == 0  # cell, empty slot
    assert scenes[0][3] == 9 and scenes[0][8] == 1  # no cell for a pair; horizontal
    assert roles[3, :7].tolist() == [0] * 7 and (roles[3, 7:] == IGNORE).all()


def test_pretraining_teaches_a_bag_of_words_encoder_word_order():
    """Before: the encoder is a bag of words (zero-initialised residual branches), so a word encodes alike in
    "A left of B" and "B left of A". After pretraining on training captions: unseen validation captions'
    scenes are read right, and the two orders encode each word differently."""
    train = shapes_data("train", 2000).captions
    val = shapes_data("val", 300).captions
    torch.manual_seed(0)
    encoder = TextEncoder(TOKENIZER.vocab_size, L, d_model=32, n_layers=2, n_heads=2)
    pair = caption_ids(TOKENIZER, ["a red circle to the left of a blue square",
                                   "a blue square to the left of a red circle"], L)

    def red_gap() -> float:
        with torch.no_grad():
            context, _ = encoder(pair)
        return (context[0, 2] - context[1, 9]).abs().max().item()  # "red" (after the null token)

    assert red_gap() < 1e-5
    result = pretrain_caption_encoder(encoder, caption_ids(TOKENIZER, train, L), train, 300, lr=3e-3,
                                      batch_size=64, seed=0)
    assert result["steps"] == 300 and result["scene_accuracy"] > 0.95
    assert red_gap() > 0.5
    # The head is dropped; a fresh one fitted on the frozen encoder reads unseen captions: the order is in the
    # encoding, not in the head.
    head, scenes, roles = SceneHead(32), *scene_labels(train, L)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    ids = caption_ids(TOKENIZER, train, L)
    with torch.no_grad():
        context, mask = encoder(ids)

    def frozen(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the encodings, precomputed
        return context[rows], mask[rows]

    for step in range(150):
        batch = torch.randint(len(ids), (128,), generator=torch.Generator().manual_seed(step))
        loss = scene_loss(head, frozen, batch, scenes[batch], roles[batch])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, right, role_accuracy = scene_loss(head, encoder, caption_ids(TOKENIZER, val, L), *scene_labels(val, L))
    assert right.float().mean() > 0.9 and role_accuracy > 0.95


def test_pretraining_and_a_frozen_encoder_exclude_each_other():
    """Both would set the caption encoder: one line saying so."""
    with pytest.raises(ValueError, match="pretrain_steps and model.text.frozen_from"):
        T2ISpec(space="pixel", text={"pretrain_steps": 10, "frozen_from": "run"})
