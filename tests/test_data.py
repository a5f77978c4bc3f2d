"""Tests of genlab.data: digits, 2-D toys, image folders, the registry and DataSpec."""

from __future__ import annotations

import logging
import math

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from genlab.data import DATASETS, DataSpec, TensorData, load_dataset
from genlab.data.base import n_held_out, split_indices
from genlab.data.digits import digits_full
from genlab.data.registry import dataset_names, describe_datasets
from genlab.data.toys import (
    TOYS,
    sample_8gaussians,
    sample_25gaussians,
    sample_checkerboard,
    sample_moons,
    sample_swissroll,
)
from genlab.errors import DataError

N_DIGITS = 1797
MIXTURES = ("8gaussians", "25gaussians")


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_splits() -> tuple[TensorData, TensorData]:
    """The default digits train and test splits."""
    spec = DataSpec()
    return load_dataset(spec, "train"), load_dataset(spec, "test")


def test_digits_shape_range_labels(digits_splits):
    train, test = digits_splits
    assert len(train) + len(test) == N_DIGITS
    for data in (train, test):
        assert data.modality == "image" and data.shape == (1, 16, 16) and data.x.dtype == torch.float32
        assert data.x.min() >= -1.0 and data.x.max() <= 1.0
        assert data.x.min() == -1.0  # background is 0 -> -1 and stays so after bicubic + clamp
        assert data.num_classes == 10 and data.class_names == tuple("0123456789")
        assert set(data.y.tolist()) == set(range(10))


def test_digits_native_resolution_is_exact_rescale():
    from sklearn.datasets import load_digits

    full = digits_full(resolution=8)
    expected = torch.as_tensor(load_digits().images, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> -1..1
    torch.testing.assert_close(full.x[:, 0], expected)


def test_digits_split_is_stratified_disjoint_covering_and_deterministic(digits_splits):
    full = digits_full(resolution=16)
    train_idx, test_idx = split_indices(N_DIGITS, 0.2, full.y)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(N_DIGITS))
    # load_dataset returns exactly those rows, and a second call the same ones.
    train, test = digits_splits
    torch.testing.assert_close(train.x, full.x[train_idx])
    torch.testing.assert_close(test.y, full.y[test_idx])
    torch.testing.assert_close(load_dataset(DataSpec(), "test").x, test.x)
    # Stratified: every class holds out round(n_c * f) of its examples.
    for c in range(10):
        n_c = int((full.y == c).sum())
        assert int((test.y == c).sum()) == n_held_out(n_c, 0.2)


def test_digits_resolution_and_fraction():
    data = load_dataset(DataSpec(resolution=6, test_fraction=0.5), "test")
    assert data.shape == (1, 6, 6) and data.x.abs().max() <= 1.0
    assert abs(len(data) - N_DIGITS / 2) <= 10  # rounding per class, 10 classes
    with pytest.raises(DataError, match="grayscale"):
        load_dataset(DataSpec(channels=3))


def test_split_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        load_dataset(DataSpec(), "validation")


# ----------------------------------------------------------------------------- toys


@pytest.mark.parametrize(
    "sample", [sample_8gaussians, sample_25gaussians, sample_moons, sample_swissroll, sample_checkerboard]
)
def test_toy_samplers_shape_and_generator(sample):
    x = sample(300, torch.Generator().manual_seed(3))
    assert x.shape == (300, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.abs().max() < 3.0  # the documented scale: about [-2.5, 2.5]^2
    torch.testing.assert_close(x, sample(300, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_modes_balanced_and_tight(name):
    data = load_dataset(DataSpec(name=name, n=20_000))
    modes, std = data.modes, data.mode_std
    m = len(modes)
    assert data.modality == "vector" and data.shape == (2,) and data.num_classes == m
    dist = torch.cdist(data.x, modes)  # (N, M)
    nearest = dist.argmin(dim=1)
    # Modes are far apart, so the nearest centre is the component that was drawn.
    assert torch.equal(nearest, data.y)
    counts = torch.bincount(nearest, minlength=m).float()
    share = counts / len(data)
    assert (share - 1 / m).abs().max() < 4 * math.sqrt((1 / m) * (1 - 1 / m) / len(data))
    # For an isotropic 2-D Gaussian, P(|x - mu| <= k std) = 1 - exp(-k^2 / 2): 98.89% for k = 3.
    within = (dist.min(dim=1).values <= 3 * std).float().mean().item()
    p = 1 - math.exp(-4.5)
    assert abs(within - p) < 4 * math.sqrt(p * (1 - p) / len(data))
    # And the per-coordinate spread around the assigned mode is the stated std.
    residual = data.x - modes[nearest]
    torch.testing.assert_close(residual.std(dim=0), torch.full((2,), std), rtol=0.03, atol=0.0)


def test_checkerboard_on_black_squares_and_uniform():
    x = load_dataset(DataSpec(name="checkerboard", n=8000)).x
    cells = torch.floor(x).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert (x >= -2).all() and (x <= 2).all()
    # 8 black cells, equally likely.
    share = torch.unique(cells, dim=0, return_counts=True)[1].float() / len(x)
    assert len(share) == 8 and (share - 1 / 8).abs().max() < 0.02


def test_moons_lie_on_two_unit_circles():
    data = load_dataset(DataSpec(name="moons", n=4000))
    raw = data.x / 1.5 + torch.tensor([0.5, 0.25])  # undo the documented centring and scaling
    radial = torch.stack(
        [(raw.norm(dim=1) - 1).abs(), ((raw - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()], dim=1
    ).min(dim=1).values
    assert radial.max() < 5 * 0.05 and data.y is None and data.modes is None


def test_swissroll_radius_range():
    x = load_dataset(DataSpec(name="swissroll", n=4000)).x
    radius = x.norm(dim=1)
    assert radius.min() > 1.5 * math.pi / 6 - 0.5 and radius.max() < 4.5 * math.pi / 6 + 0.5


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_reproducible_per_split_and_train_differs_from_test(name):
    spec = DataSpec(name=name, n=500, test_fraction=0.3)
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert len(train) == 500 and len(test) == 150
    torch.testing.assert_close(load_dataset(spec, "train").x, train.x)
    torch.testing.assert_close(load_dataset(spec, "test").x, test.x)
    assert not torch.equal(train.x[:150], test.x)
    assert (train.y is None) == (name not in MIXTURES)


def test_toys_reject_image_options():
    with pytest.raises(DataError, match="resolution"):
        load_dataset(DataSpec(name="moons", resolution=16))


# ----------------------------------------------------------------------------- folder


def _save(path, mode="L", size=(8, 8), value=None, fmt=None):
    """Write a small image with a deterministic pattern (or a constant `value`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    channels = 1 if mode == "L" else 3
    if value is None:
        pattern = (np.arange(w * h * channels) * 7 % 256).astype(np.uint8)
    else:
        pattern = np.full(w * h * channels, value, dtype=np.uint8)
    array = pattern.reshape(h, w) if channels == 1 else pattern.reshape(h, w, channels)
    Image.fromarray(array, mode=mode).save(path, format=fmt)
    return path


def _labelled(root, per_class=5):
    for c, name in enumerate(["cat", "dog", "emu"]):
        for i in range(per_class):
            _save(root / name / f"{i}.png", value=40 * c + i)
    return root


def test_folder_labelled(tmp_path):
    root = _labelled(tmp_path / "imgs")
    (root / "notes.txt").write_text("not an image")
    train = load_dataset(DataSpec(name=f"folder:{root}", test_fraction=0.2), "train")
    test = load_dataset(DataSpec(name=f"folder:{root}", test_fraction=0.2), "test")
    assert train.class_names == ("cat", "dog", "emu") and train.num_classes == 3
    assert train.shape == (1, 8, 8) and len(train) == 12 and len(test) == 3
    assert sorted(test.y.tolist()) == [0, 1, 2]  # stratified: one of five per class
    # Pixel values map 0..255 -> -1..1 and every image keeps its label: constant 40c + i.
    for data in (train, test):
        value = (data.x[:, 0, 0, 0] + 1) / 2 * 255
        assert torch.all((value.round() // 40).long() == data.y)
    assert set(((train.x[:, 0, 0, 0] + 1) / 2 * 255).round().tolist()).isdisjoint(
        ((test.x[:, 0, 0, 0] + 1) / 2 * 255).round().tolist()
    )


def test_folder_flat_rgb_and_resize(tmp_path):
    for i in range(6):
        _save(tmp_path / f"{i}.jpg" if i % 2 else tmp_path / f"{i}.PNG", mode="RGB", size=(12, 10), fmt="PNG")
    data = load_dataset(DataSpec(name=f"folder:{tmp_path}"), "train")
    assert data.y is None and data.num_classes is None and data.shape == (3, 10, 12)
    assert data.x.min() >= -1 and data.x.max() <= 1
    resized = load_dataset(DataSpec(name=f"folder:{tmp_path}", resolution=4, channels=1), "train")
    assert resized.shape == (1, 4, 4)


def test_folder_exact_values(tmp_path):
    _save(tmp_path / "a.png", value=0)
    _save(tmp_path / "b.png", value=255)
    _save(tmp_path / "c.png", value=51)
    data = load_dataset(DataSpec(name=f"folder:{tmp_path}", test_fraction=0.1), "train")
    values = sorted(data.x.flatten().unique().tolist())
    assert values == pytest.approx([-1.0, 51 / 255 * 2 - 1, 1.0])


def test_folder_sixteen_bit_not_clipped(tmp_path):
    for i, v in enumerate([0, 32768, 65535]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4), v, dtype=np.uint16)).save(path)
    data = load_dataset(DataSpec(name=f"folder:{tmp_path}", test_fraction=0.1), "train")
    assert sorted(data.x[:, 0, 0, 0].tolist()) == pytest.approx([-1.0, 32768 / 65535 * 2 - 1, 1.0], abs=1e-6)


def _png_bytes(tmp_path):
    return _save(tmp_path / "_real.png", size=(32, 32)).read_bytes()


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_folder_bad_image_errors_and_skip(tmp_path, kind, caplog):
    root = tmp_path / "imgs"
    for i in range(4):
        _save(root / f"{i}.png", size=(32, 32))
    bad = root / "zz_bad.png"
    if kind == "random":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    else:
        real = _png_bytes(tmp_path)
        bad.write_bytes(real[: len(real) // 2])
    with pytest.raises(DataError, match="zz_bad.png") as info:
        load_dataset(DataSpec(name=f"folder:{root}"))
    assert "data.skip_bad=true" in str(info.value) and "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING, logger="genlab"):
        train = load_dataset(DataSpec(name=f"folder:{root}", skip_bad=True, test_fraction=0.25), "train")
        test = load_dataset(DataSpec(name=f"folder:{root}", skip_bad=True, test_fraction=0.25), "test")
    assert len(train) + len(test) == 4
    assert "skipped 1 unreadable image(s) of 5" in caplog.text


def test_folder_all_bad_is_an_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="no readable images"):
        load_dataset(DataSpec(name=f"folder:{tmp_path}", skip_bad=True))


def test_folder_wrong_size(tmp_path):
    _save(tmp_path / "a.png", size=(8, 8))
    _save(tmp_path / "b.png", size=(9, 8))
    with pytest.raises(DataError, match=r"b\.png.* is 9x8 .* is 8x8.*data\.resolution"):
        load_dataset(DataSpec(name=f"folder:{tmp_path}"))
    data = load_dataset(DataSpec(name=f"folder:{tmp_path}", resolution=8, test_fraction=0.1))
    assert data.shape == (1, 8, 8)


def test_folder_wrong_mode(tmp_path):
    _save(tmp_path / "a.png", mode="L")
    _save(tmp_path / "b.png", mode="RGB")
    with pytest.raises(DataError, match=r"b\.png.*mode RGB.*mode L.*data\.channels"):
        load_dataset(DataSpec(name=f"folder:{tmp_path}"))
    data = load_dataset(DataSpec(name=f"folder:{tmp_path}", channels=3, test_fraction=0.1))
    assert data.shape == (3, 8, 8)


def test_folder_missing_empty_and_not_a_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataSpec(name=f"folder:{tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images found.*\.png"):
        load_dataset(DataSpec(name=f"folder:{tmp_path / 'empty'}"))
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(DataSpec(name=f"folder:{tmp_path / 'empty' / 'readme.txt'}"))
    with pytest.raises(DataError, match="no path"):
        load_dataset(DataSpec(name="folder:"))


def test_folder_mixed_layout_and_empty_test_split(tmp_path):
    _labelled(tmp_path / "mixed", per_class=1)
    _save(tmp_path / "mixed" / "loose.png")
    with pytest.raises(DataError, match="both"):
        load_dataset(DataSpec(name=f"folder:{tmp_path / 'mixed'}"))
    _save(tmp_path / "one" / "only.png")
    assert len(load_dataset(DataSpec(name=f"folder:{tmp_path / 'one'}"), "train")) == 1
    with pytest.raises(DataError, match="test split .* is empty"):
        load_dataset(DataSpec(name=f"folder:{tmp_path / 'one'}"), "test")


# ----------------------------------------------------------------------------- registry and spec


def test_registry_names_and_descriptions():
    assert set(DATASETS) == {"digits", *TOYS, "pydocs", "shapes"} and dataset_names() == sorted(DATASETS)
    descriptions = describe_datasets()
    assert set(descriptions) == set(DATASETS) | {"folder:PATH", "text:PATH"}
    assert all(line and "\n" not in line for line in descriptions.values())


def test_unknown_dataset_suggests_closest():
    with pytest.raises(DataError, match=r'did you mean "digits"\?.*folder:PATH'):
        load_dataset(DataSpec(name="digit"))


def test_split_indices_unlabelled_and_tiny():
    train, test = split_indices(10, 0.3)
    assert len(test) == 3 and sorted(torch.cat([train, test]).tolist()) == list(range(10))
    torch.testing.assert_close(split_indices(10, 0.3)[1], test)
    # One example per class: nothing can be held out without emptying the class's training set.
    assert len(split_indices(3, 0.5, torch.tensor([0, 1, 2]))[1]) == 0


def test_dataspec_validation():
    assert DataSpec().name == "digits" and DataSpec().resolution is None
    with pytest.raises(pydantic.ValidationError, match="extra"):
        DataSpec(nmae="digits")
    for bad in [dict(resolution=2), dict(resolution=100_000), dict(n=0), dict(test_fraction=0.0),
                dict(test_fraction=1.0), dict(channels=2), dict(name="")]:
        with pytest.raises(pydantic.ValidationError):
            DataSpec(**bad)


def test_tensordata_checks_its_contract():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        TensorData(x=torch.full((2, 1, 4, 4), 2.0), y=None, modality="image", name="bad")
    with pytest.raises(ValueError, match="int64"):
        TensorData(x=torch.zeros(3, 2), y=torch.zeros(3), modality="vector", name="bad")
    data = TensorData(x=torch.zeros(3, 2), y=torch.tensor([0, 1, 1]), modality="vector", name="ok")
    assert data.num_classes == 2 and data.shape == (2,) and len(data) == 3
