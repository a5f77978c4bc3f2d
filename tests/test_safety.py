"""Safe handling of files from strangers: names that try to leave their folder, symbolic links out of a
run folder, and hypothesis fuzzing of every loader of user files (config parser, YAML reader, image
folder, .npz samples, checkpoints), which may raise only genlab's typed errors.

Which paths are whose (genlab/safepaths.py): --out, --resume RUN_DIR, CONFIG, --samples and
folder:PATH are the user's explicit choice and go wherever they point; names read from files
(`name:`, file names inside a run folder) stay inside their folder, and genlab never writes
through a link that leads out of a run folder. Loading is safe by construction: weights only
through safetensors, state only as JSON, YAML only through yaml.safe_load, no pickle anywhere
(`genlab` source holds no torch.load and no pickle import: checked below).
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import GAUSS_CONFIG, REPO, TINY, copy_run, folder_digest, one_thread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from genlab.cli import main
from genlab.data.base import DataSpec
from genlab.data.folder import load_folder
from genlab.engine.checkpoint import (
    checkpoint_paths,
    latest_checkpoint,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
)
from genlab.engine.config import build_config, read_yaml
from genlab.engine.evaluate import load_samples_npz
from genlab.engine.runs import CHECKPOINTS, SAMPLES
from genlab.errors import CheckpointError, ConfigError, DataError
from genlab.safepaths import escaping_links, safe_join

# Derandomized: the default suite gives the same verdict on every run (run with more examples to hunt).
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


def run_cli(capsys, argv: list) -> tuple[int, str]:
    """`genlab ARGV` in-process: (exit code, stderr)."""
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------- names and links


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "../escape", "a/b", "/etc", "~", "a\\b", "", "x" * 129])
def test_run_names_from_files_cannot_leave_runs(name):
    with pytest.raises(ConfigError, match="name"):
        build_config({"name": name})


@pytest.mark.parametrize("name", ["..", ".", ".x", "a/b", "/abs", "", "a\0b"])
def test_safe_join_keeps_names_inside_their_folder(name, tmp_path):
    with pytest.raises(ConfigError, match="stays inside"):
        safe_join(tmp_path, name)
    assert safe_join(tmp_path, "run-1.a_b") == tmp_path / "run-1.a_b"


def test_an_explicit_out_is_the_users_choice(tmp_path, capsys):
    """--out with ".." goes where it points: the user typed it."""
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / ".." / "b"
    rc, err = run_cli(capsys, ["train", GAUSS_CONFIG, *TINY, "trainer.max_steps=1", "--out", out])
    assert rc == 0, err
    assert latest_checkpoint(tmp_path / "b" / CHECKPOINTS)


def outside_target(tmp_path: Path, kind: str) -> Path:
    """A file or folder outside the run folder that a planted link points to."""
    target = tmp_path / "outside" / ("folder" if kind == "dir" else "file.txt")
    target.parent.mkdir(exist_ok=True)
    if kind == "dir":
        target.mkdir()
    elif kind == "file":
        target.write_text("precious\n")
    return target  # kind "dangling": nothing there yet


LINKS = {  # a run folder handed over by a stranger: link name -> what it points to outside
    "samples": "dir", "tb": "dir", "eval.csv": "file", "metrics.csv": "file", "samples/step-000000099.png": "file",
    ".lock": "file", "config.yaml.tmp": "file",
    f"{CHECKPOINTS}/.step-000000004.json.1.0000abcd.tmp": "dangling",
}


@pytest.mark.parametrize("link", list(LINKS))
def test_links_leading_out_of_a_run_folder_are_refused(link, gauss_run, tmp_path, capsys):
    run = copy_run(gauss_run, tmp_path / "run")
    target = outside_target(tmp_path, LINKS[link])
    path = run / link
    if path.is_dir():
        for p in path.iterdir():
            p.unlink()
        path.rmdir()
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    before_run, before_outside = folder_digest(run), folder_digest(tmp_path / "outside")
    for argv in (["train", "--resume", run, "trainer.max_steps=5"], ["eval", run, "--n", "16", "--steps", "1"],
                 ["train", GAUSS_CONFIG, *TINY, "--out", run]):
        rc, err = run_cli(capsys, argv)
        assert rc == 2 and err.count("\n") == 1, err
        if argv[1] != GAUSS_CONFIG:  # a new run into an existing one is refused even sooner
            assert "symbolic link" in err and "outside" in err, err
    assert folder_digest(run) == before_run and folder_digest(tmp_path / "outside") == before_outside
    assert not (LINKS[link] == "dangling" and target.exists())


def test_links_inside_a_run_folder_are_allowed(gauss_run, tmp_path):
    run = copy_run(gauss_run, tmp_path / "run")
    (run / SAMPLES).rename(run / "samples-real")
    (run / SAMPLES).symlink_to(run / "samples-real")
    assert escaping_links(run) == []
    from genlab.engine.config import load_config
    from genlab.engine.trainer import train

    train(load_config(run / "config.yaml", ["trainer.max_steps=4"]), run, resume=True)
    assert (run / "samples-real" / "step-000000004.png").is_file()


def test_checkpoint_header_cannot_redirect_the_weights_file(gauss_run, tmp_path):
    """The JSON names its weights file, but the loader only ever opens <stem>.safetensors beside it."""
    run = copy_run(gauss_run, tmp_path / "run")
    json_path = latest_checkpoint(run / CHECKPOINTS)
    header = json.loads(json_path.read_text())
    header["safetensors"]["file"] = "../../../../etc/passwd"
    json_path.write_text(json.dumps(header))
    assert load_checkpoint(json_path)["global_step"] == 3
    assert load_tensors(json_path)


def test_no_pickle_and_only_safe_loaders_in_genlab():
    """Weights through safetensors, state as JSON, YAML through safe_load: no unsafe loader in the source."""
    unsafe = re.compile(r"torch\.load\((?![^)]*weights_only=True)|import pickle|pickle\.loads?|yaml\.load\(|"
                        r"yaml\.unsafe_load|allow_pickle=True|yaml\.Loader|(?<![\w.])(eval|exec)\(")
    found = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "genlab").rglob("*.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if unsafe.search(line)]
    assert not found, found


# ---------------------------------------------------------------- fuzzing the loaders

KEYS = st.sampled_from(["name", "family", "seed", "data", "model", "optim", "trainer", "eval", "lr", "batch_size",
                        "max_steps", "net", "mlp", "unet", "hidden", "channels", "channel_mult", "resolution", "n",
                        "betas", "$tensor", "ckpt_every", "nan_patience"]) | st.text(max_size=6)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
                     max_leaves=12)
BASE_TREE = yaml.safe_load(GAUSS_CONFIG.read_text())


def _set_path(tree: dict, path: list[str], value) -> dict:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else node
    node[path[-1]] = value
    return tree


@FUZZ
@given(tree=st.dictionaries(KEYS, TREES, max_size=6)
       | st.builds(lambda path, value: _set_path(json.loads(json.dumps(BASE_TREE)), path, value),
                   st.lists(KEYS, min_size=1, max_size=3), TREES))
def test_fuzz_build_config_raises_only_config_errors(tree):
    try:
        build_config(tree)
    except ConfigError as err:
        assert "\n" not in str(err)


@FUZZ
@given(overrides=st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["optim.lr", "trainer.max_steps", "model.mlp", "data", "name", "model.unet.channel_mult", "a..b", ".x"]),
    st.text(max_size=20)), max_size=3))
def test_fuzz_overrides_raise_only_config_errors(overrides):
    try:
        build_config(BASE_TREE, overrides)
    except ConfigError as err:
        assert "\n" not in str(err)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_read_yaml_raises_only_config_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        try:
            tree = read_yaml(path)
            build_config(tree)
        except ConfigError:
            pass


def _png_bytes(size=(6, 6), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format="PNG")
    return buf.getvalue()


def _damage(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """Truncate `data` to `cut` bytes (when shorter) and XOR some bytes: a dying disk or a hostile file."""
    out = bytearray(data[: max(1, cut)] if cut < len(data) else data)
    for pos, mask in flips:
        out[pos % len(out)] ^= mask or 1
    return bytes(out)


DAMAGE = st.tuples(st.integers(0, 2000), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]),
                                st.binary(max_size=200) | DAMAGE.map(lambda d: _damage(_png_bytes(), *d))),
                      min_size=1, max_size=4),
       skip_bad=st.booleans(), resolution=st.none() | st.integers(4, 12))
def test_fuzz_image_folder_raises_only_data_errors(files, skip_bad, resolution):
    with tempfile.TemporaryDirectory() as tmp:
        for i, (suffix, data) in enumerate(files):
            (Path(tmp) / f"{i}{suffix}").write_bytes(data)
        (Path(tmp) / "good.png").write_bytes(_png_bytes())
        spec = DataSpec(name=f"folder:{tmp}", skip_bad=skip_bad, resolution=resolution)
        try:
            data = load_folder(spec, "train")
        except DataError:
            return
        assert data.x.isfinite().all() and data.x.abs().max() <= 1


def _npz_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, samples=array)
    return buf.getvalue()


@FUZZ
@given(data=st.binary(max_size=300) | DAMAGE.map(lambda d: _damage(_npz_bytes(np.zeros((3, 2), np.float32)), *d))
       | st.sampled_from([np.zeros(3, dtype=object), np.array(["a", "b"]), np.zeros((0, 2)), np.ones((2, 2), bool)])
       .map(lambda a: _npz_bytes(a) if a.dtype != object else b"PK\x03\x04" + b"\0" * 30))
def test_fuzz_npz_samples_raise_only_data_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.npz"
        path.write_bytes(data)
        try:
            samples = load_samples_npz(path)
        except DataError:
            return
        assert samples.dtype == torch.float32


@pytest.fixture(scope="module")
def checkpoint_pair(tmp_path_factory) -> tuple[bytes, bytes]:
    """The bytes of a small valid checkpoint pair (weights, JSON)."""
    stem = tmp_path_factory.mktemp("ckpt") / "step-000000001"
    state = {"state_dict": {"w": torch.randn(4, 3), "b": torch.zeros(3)}, "global_step": 1,
             "optimizer_states": [{"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1}]}]}
    save_checkpoint(state, stem)
    st_path, json_path = checkpoint_paths(stem)
    return st_path.read_bytes(), json_path.read_bytes()


@FUZZ
@given(which=st.sampled_from(["weights", "json", "both"]), damage=DAMAGE,
       state=st.none() | TREES)
def test_fuzz_checkpoint_loader_raises_only_checkpoint_errors(checkpoint_pair, which, damage, state):
    weights, text = checkpoint_pair
    if state is not None:  # a well-formed header with a hostile state tree
        header = json.loads(text)
        header["state"] = state
        text = json.dumps(header, allow_nan=True).encode()
    if which in ("weights", "both"):
        weights = _damage(weights, *damage)
    if which in ("json", "both") and state is None:
        text = _damage(text, *damage)
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "step-000000001"
        st_path, json_path = checkpoint_paths(stem)
        st_path.write_bytes(weights)
        json_path.write_bytes(text)
        for load in (load_checkpoint, load_tensors, lambda p: latest_checkpoint(p.parent)):
            try:
                load(json_path)
            except CheckpointError as err:
                assert "\n" not in str(err)
