"""Prompt fidelity on shapes: scoring rules on hand-made detections, the attribute evaluator, `genlab eval --prompts`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_cli import CLICapture, assert_user_error

from genlab.cli import main
from genlab.data.shape_captions import parse_caption
from genlab.data.shapes import (
    evaluation_prompts,
    images_to_tensor,
    kinds_heldout,
    render_example,
    shapes_data,
)
from genlab.errors import DataError
from genlab.eval import shapes_attrs as A
from genlab.eval.prompt_fidelity import (
    check_prompts,
    prompt_fidelity,
    read_prompts,
    relation_holds,
    score_prompt,
    score_prompt_fidelity,
)

D = A.Detected

# The accuracy the default attribute evaluator must reach on real rendered images (exact scenes: every object's
# cell, shape, colour and size), or prompt fidelity would measure the evaluator rather than the model.
MIN_SCENE_ACCURACY = 0.98
MIN_REAL_FIDELITY = 0.97
MIN_BLURRED_FIDELITY = 0.95  # real images blurred with sigma 0.7 px (measured 0.995)
TINY = A.AttrConfig(width=8, feature_dim=32, steps=4, batch_size=8)


@pytest.fixture
def cli(capsys, caplog) -> CLICapture:
    return CLICapture(capsys, caplog)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """No test writes to the user's cache (the slow ones share one module-wide cache folder)."""
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "shapes-cache"))


def test_single_object_checks():
    prompt = parse_caption("a large red circle at the top left")
    right = D("top left", "circle", "red", "large", 0.9)
    assert score_prompt(prompt, [right]) == dict.fromkeys(("count", "shape", "colour", "size", "position"), True)
    assert score_prompt(prompt, [D("top", "circle", "red", "large", 0.9)])["position"] is False
    assert score_prompt(prompt, [D("top left", "square", "red", "small", 0.9)]) == {
        "count": True, "shape": False, "colour": True, "size": False, "position": True}
    # an extra object: count is wrong, the attributes are read on the matching object
    two = score_prompt(prompt, [D("center", "square", "blue", "small", 0.99), right])
    assert two == {"count": False, "shape": True, "colour": True, "size": True, "position": True}
    assert not any(score_prompt(prompt, []).values())
    assert "size" not in score_prompt(parse_caption("a red circle at the top left"), [right])  # no size asked


def test_pair_checks_and_relations():
    prompt = parse_caption("a small red circle to the left of a blue square")
    a, b = D("left", "circle", "red", "small", 0.9), D("right", "square", "blue", "large", 0.9)
    everything = {"count": True, "shape": True, "colour": True, "size": True, "relation": True}
    assert score_prompt(prompt, [a, b]) == everything
    assert score_prompt(prompt, [b, a]) == everything  # detection order does not matter
    swapped = score_prompt(prompt, [D("right", "circle", "red", "small", 0.9), D("left", "square", "blue", "large", 1)])
    assert swapped == {**everything, "relation": False}
    wrong_binding = score_prompt(prompt, [D("left", "circle", "blue", "small", 1), D("right", "square", "red", "large",
                                                                                        1)])
    assert wrong_binding["colour"] is False and wrong_binding["shape"] is True
    assert score_prompt(prompt, [a])["count"] is False and not any(score_prompt(prompt, [a]).values())
    assert relation_holds("above", "top right", "bottom left") and not relation_holds("below", "top", "center")
    assert relation_holds("to the right of", "bottom right", "top") and not relation_holds("to the left of", "top",
                                                                                             "bottom")


def test_fidelity_groups_and_averages():
    prompts = ["a large red circle at the top left",  # single
               "a green triangle at the center",  # held-out pair, single
               "a red square to the left of a blue circle",  # held-out combination
               "a white box above a cyan ball"]  # pair
    detected = [[D("top left", "circle", "red", "large", 1)],
                [D("center", "triangle", "green", "small", 1)],
                [D("left", "square", "red", "small", 1), D("right", "circle", "blue", "small", 1)],
                [D("bottom", "square", "white", "small", 1), D("top", "circle", "cyan", "small", 1)]]
    out = prompt_fidelity(detected, prompts)
    assert {g: out[g]["n"] for g in out} == {"single": 1, "pair": 1, "heldout_single": 1, "heldout_pair": 1,
                                             "heldout": 2, "all": 4}
    assert out["pair"]["relation"] == 0.0 and out["pair"]["overall"] == 0.0 and out["pair"]["shape"] == 1.0
    assert out["all"]["overall"] == 0.75 and out["heldout"]["overall"] == 1.0
    assert "size" not in out["heldout"]  # no held-out prompt states a size
    assert out["all"]["position"] == 1.0 and out["all"]["relation"] == 0.5  # each over the prompts checking it


def test_prompt_files_and_checks(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red circle at the top\n a blue box at the center \n\n", encoding="utf-8")
    assert read_prompts(path) == ["a red circle at the top", "a blue box at the center"]
    path.write_text("a red circle at the top\n\na blue box at the center\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank line\(s\) \[2\]"):
        read_prompts(path)
    with pytest.raises(DataError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="2 prompts for 3 images"):
        check_prompts(["a red circle at the top"] * 2, 3)
    with pytest.raises(DataError, match="prompt 2: .*purple"):
        check_prompts(["a red circle at the top", "a purple circle at the top"], 2)


def test_evaluation_prompts_describe_the_split_and_state_every_size():
    prompts = evaluation_prompts("test", 50)
    for i, text in enumerate(prompts):
        truth = render_example(0, i, "test").attributes()
        parsed = parse_caption(text)
        assert [o.size for o in parsed.objects] == [o.size for o in truth.objects]
        assert parsed.relation == truth.relation and [o.shape for o in parsed.objects] == [o.shape for o in
                                                                                           truth.objects]
    assert all(kinds_heldout([(o.colour, o.shape) for o in parse_caption(p).objects])
               for p in evaluation_prompts("heldout", 50))
    with pytest.raises(DataError):
        evaluation_prompts("train", 5)


def test_scene_targets_and_loss():
    e = render_example(0, 1, "train")  # a two-object scene
    t = A.scene_targets(e.objects)
    assert t.shape == (9, 4) and int(t[:, 0].sum()) == len(e.objects)
    assert (t[t[:, 0] == 0, 1:] == -1).all()
    # perfect logits give a loss near 0; uniform ones the closed form 9 log 2 + sum_objects log(3 * 7 * 2)
    x = torch.zeros(1, 9, A.PER_CELL)
    perfect = {"occupied": (t[:, 0].float() * 2 - 1)[None] * 50}
    for j, (name, k) in enumerate(A.HEADS[1:], start=1):
        perfect[name] = torch.nn.functional.one_hot(t[:, j].clamp(min=0), k)[None].float() * 50
    assert float(A.attribute_loss(perfect, t[None])) < 1e-6
    uniform = {"occupied": x[..., 0], **{name: torch.zeros(1, 9, k) for name, k in A.HEADS[1:]}}
    expected = 9 * np.log(2) + len(e.objects) * np.log(3 * 7 * 2)
    assert float(A.attribute_loss(uniform, t[None])) == pytest.approx(expected, rel=1e-5)


def test_gaussian_blur_closed_form():
    x = torch.zeros(2, 3, 9, 9)
    x[:, :, 4, 4] = 1.0  # a delta: its blur is the normalised 2-D Gaussian itself
    y = A.gaussian_blur(x, torch.tensor([0.8, 0.0]))
    r = torch.arange(-2, 3, dtype=torch.float32)
    g = torch.exp(-r**2 / (2 * 0.8**2))
    g = g / g.sum()
    assert torch.allclose(y[0, :, 2:7, 2:7], (g[:, None] * g[None, :]).expand(3, 5, 5), atol=1e-6)
    assert torch.allclose(y[1], x[1], atol=1e-6)  # sigma 0 leaves the image unchanged
    assert float(y[0].sum()) == pytest.approx(3.0, abs=1e-5)  # mass is kept away from the borders
    const = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(A.gaussian_blur(const, torch.tensor([1.0])), const, atol=1e-6)


def test_evaluator_mechanics_cache_and_determinism(tmp_path):
    one = A.shapes_attribute_evaluator(TINY, root=tmp_path / "a")
    two = A.shapes_attribute_evaluator(TINY, root=tmp_path / "b")
    assert one.weights_sha256 == two.weights_sha256  # deterministic training
    again = A.shapes_attribute_evaluator(TINY, root=tmp_path / "a")  # from the cache
    assert again.weights_sha256 == one.weights_sha256 and again.accuracy == one.accuracy
    assert set(one.accuracy) == {"test", "heldout"}
    x = shapes_data("test", 6).x
    dets = one.detect(x)
    assert len(dets) == 6 and all(isinstance(d, A.Detected) for ds in dets for d in ds)
    assert one.evaluator().features(x).shape == (6, TINY.feature_dim)
    # a damaged cache entry is retrained, not trusted
    (weights,) = (tmp_path / "a" / "evaluators").glob("*.safetensors")
    weights.write_bytes(b"garbage")
    assert A.shapes_attribute_evaluator(TINY, root=tmp_path / "a").weights_sha256 == one.weights_sha256


def test_fidelity_rejects_bad_input_before_training():
    with pytest.raises(DataError, match="zebra"):
        score_prompt_fidelity(torch.zeros(2, 3, 32, 32), ["a red circle at the top", "a zebra at the top"])
    with pytest.raises(DataError, match=r"\(N, 3, 32, 32\)"):
        score_prompt_fidelity(torch.zeros(2, 3, 16, 16), ["a red circle at the top"] * 2)


def test_eval_prompts_cli_errors(tmp_path, cli):
    np.savez(tmp_path / "s.npz", samples=np.zeros((24, 3, 32, 32), dtype=np.float32))
    (tmp_path / "p.txt").write_text("a red circle at the top\n" * 23 + "a red unicorn at the top\n", encoding="utf-8")
    assert_user_error(cli, ["eval", "--real", "shapes", "--prompts", tmp_path / "p.txt"], "--prompts", "--samples")
    assert_user_error(cli, ["eval", "--real", "digits", "--samples", tmp_path / "s.npz", "--prompts",
                            tmp_path / "p.txt"], "--real shapes")
    assert_user_error(cli, ["eval", "--real", "shapes", "--samples", tmp_path / "s.npz", "--prompts",
                            tmp_path / "p.txt"], "prompt 24", "unicorn")


# ---------------------------------------------------------------- the default evaluator (trained once, minutes)


@pytest.fixture(scope="module")
def default_evaluator(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "shapes-cache"))
        return A.shapes_attribute_evaluator()


@pytest.mark.slow
def test_default_evaluator_reads_real_images_almost_perfectly(default_evaluator):
    print(f"scene accuracy on real images: {default_evaluator.accuracy}")
    assert min(default_evaluator.accuracy.values()) >= MIN_SCENE_ACCURACY
    for split in ("test", "heldout"):
        prompts = evaluation_prompts(split, 300)
        images = images_to_tensor(np.stack([render_example(0, i, split).image for i in range(300)]))
        result = score_prompt_fidelity(images, prompts, default_evaluator)
        print(split, json.dumps({g: round(r["overall"], 4) for g, r in result.items() if g != "evaluator"}))
        assert all(r["overall"] >= MIN_REAL_FIDELITY for g, r in result.items() if g != "evaluator")
    # soft-edged images (as a decoder may give) are still read
    blurred = score_prompt_fidelity(A.gaussian_blur(images, torch.full((len(images),), 0.7)), prompts, default_evaluator)
    assert blurred["all"]["overall"] >= MIN_BLURRED_FIDELITY
    # and a mismatched pairing of images and prompts scores far lower
    shuffled = score_prompt_fidelity(images, prompts[1:] + prompts[:1], default_evaluator)
    assert shuffled["all"]["overall"] < 0.2


@pytest.mark.slow
def test_eval_command_reports_fidelity_and_fd(default_evaluator, tmp_path, capsys):
    n = 200
    real = shapes_data("test", n).x
    np.savez(tmp_path / "s.npz", samples=real.numpy())
    (tmp_path / "p.txt").write_text("\n".join(evaluation_prompts("test", n)) + "\n", encoding="utf-8")
    assert main(["eval", "--real", "shapes", "--samples", str(tmp_path / "s.npz"), "--prompts",
                 str(tmp_path / "p.txt"), "--json", "--n-real", str(n)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fidelity"]["all"]["overall"] >= MIN_REAL_FIDELITY
    assert result["evaluator"]["sha256"] == default_evaluator.weights_sha256
    assert 0 < result["fd"] < 2 * result["floor"]["fd"]  # real images score about the real-vs-real floor
    assert main(["eval", "--real", "shapes", "--samples", str(tmp_path / "s.npz"), "--prompts",
                 str(tmp_path / "p.txt"), "--n-real", str(n)]) == 0
    table = capsys.readouterr().out
    fidelity_part = table.split("prompt fidelity")[1]
    assert all(group in fidelity_part for group in ("single", "pair", "all")) and "fd" in table
