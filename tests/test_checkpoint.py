"""Tests of genlab.engine.checkpoint (exact round trips, atomicity, corruption handling, Lightning
plug-in) and genlab.engine.runlock (exclusive, released when the holder dies)."""

from __future__ import annotations

import copy
import errno
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genlab.engine import checkpoint as ckpt
from genlab.engine import state_codec
from genlab.engine.checkpoint import (
    SafeCheckpointIO,
    checkpoint_name,
    checkpoint_paths,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_tensors,
    prune_checkpoints,
    save_checkpoint,
)
from genlab.engine.runlock import RunLock
from genlab.engine.state_codec import flatten_state, unflatten_state
from genlab.errors import CheckpointError, RunLockedError

REPO_ROOT = Path(__file__).resolve().parents[1]


def assert_same(a, b, path="<root>"):
    """Exact structural equality: same types (int vs float, tuple vs list, key types), bit-equal tensors."""
    assert type(a) is type(b) or (isinstance(a, dict) and type(b) is dict), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        # compare raw bits so that nan payloads, -0.0 and bf16 rounding all count
        bits_a, bits_b = (t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b))
        assert torch.equal(bits_a, bits_b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        assert [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert state_codec._float_bits(a) == state_codec._float_bits(b), path
    else:
        assert a == b, path


def roundtrip(obj, tmp_path: Path, name: str = "rt"):
    """Save ``obj`` through the files and load it back."""
    return load_checkpoint(save_checkpoint(obj, tmp_path / name))


def make_training(seed: int = 0):
    """A Linear layer and AdamW after two steps on fixed data."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
    for _ in range(2):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt, x, y


def one_step(model, opt, x, y):
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


# --------------------------------------------------------------------------- round trips


def test_lightning_like_state_round_trips_and_resumes_bit_exactly(tmp_path):
    model, opt, x, y = make_training()
    state = {
        "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.batch_progress": {
            "total": {"ready": 2, "completed": 2}, "is_last_batch": False, "dataloader_state_dict": None}}},
        "callbacks": {"EMA{'decay': 0.999}": {"decay": 0.999}},
        "global_step": 2,
        "epoch": 0,
        "pytorch-lightning_version": "2.6.6",
    }
    loaded = roundtrip(state, tmp_path)
    assert_same(state, loaded)
    assert isinstance(loaded["optimizer_states"][0]["param_groups"][0]["betas"], tuple)
    assert list(loaded["optimizer_states"][0]["state"]) == [0, 1]

    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(loaded["state_dict"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)  # different lr: must come from the state
    fresh_opt.load_state_dict(loaded["optimizer_states"][0])
    one_step(model, opt, x, y)
    one_step(fresh, fresh_opt, x, y)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_special_tensors_round_trip(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "bf16": torch.randn(5, dtype=torch.bfloat16),
        "int": torch.tensor([-(2**62), 3], dtype=torch.int64),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # non-contiguous
        "strided": base[:, ::2],
        "nan_payload": torch.tensor([float("nan"), -0.0, float("inf")]),
        "needs_grad": torch.ones(2, requires_grad=True),
    }
    shared = {"a": base, "b": base.view(-1), "c": base[1]}
    loaded = roundtrip({**state, "shared": shared}, tmp_path)
    assert_same({**{k: v.detach() for k, v in state.items()}, "shared": shared}, loaded)
    assert loaded["scalar"].dim() == 0
    # tensors that shared storage come back independent
    s = loaded["shared"]
    s["a"].zero_()
    assert s["b"].sum() == base.sum() and s["c"].sum() == base[1].sum()


def test_python_values_round_trip_exactly(tmp_path):
    state = {
        3: "int key", "3": "str key", True: "bool key", None: "none key", (1, "x"): "tuple key",
        "$weird": 1, "floats": [1.0, 1, -0.0, float("inf"), -float("inf"), float("nan"), 0.1, 1e308, 5e-324],
        "tuple": (1, (2.0, [3]), {}), "empty": {"list": [], "tuple": (), "dict": {}},
        "big": 2**70, "text": "a/b \u00e9\n", "dtype": torch.bfloat16, "size": torch.Size([2, 3]),
        "nested": {0: {"step": torch.tensor(2.0)}},
    }
    loaded = roundtrip(state, tmp_path)
    assert_same(state, loaded)
    assert math.isnan(loaded["floats"][5])


def test_numpy_values(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3).T  # non-contiguous
    loaded = roundtrip({"arr": arr, "f": np.float64(0.25), "i": np.int64(7), "b": np.bool_(True)}, tmp_path)
    assert isinstance(loaded["arr"], np.ndarray) and np.array_equal(loaded["arr"], arr)
    assert (loaded["f"], loaded["i"], loaded["b"]) == (0.25, 7, True)
    assert (type(loaded["f"]), type(loaded["i"]), type(loaded["b"])) == (float, int, bool)


def test_tensor_names_are_key_paths_and_collisions_stay_apart():
    t1, t2, t3 = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    tensors, meta = flatten_state({"a": {"b": [t1]}, "a/b/0": t2, 1: {"x": t3}})
    assert set(tensors) == {"a/b/0", "a/b/0~2", "1/x"}
    back = unflatten_state(tensors, meta)
    assert torch.equal(back["a"]["b"][0], t1) and torch.equal(back["a/b/0"], t2) and torch.equal(back[1]["x"], t3)


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"hparams": {"fn": lambda x: x}}, "hparams/fn"),
        ({"opt": [{"obj": object()}]}, "opt/0/obj"),
        ({"t": {2: torch.zeros(2, dtype=torch.complex128)}}, "t/2"),
        ({"p": Path("x")}, "p"),
    ],
)
def test_unsupported_values_name_their_key_path(state, where, tmp_path):
    with pytest.raises(TypeError, match=re.escape(repr(where))):
        save_checkpoint(state, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_reference_cycle_is_refused():
    cyc: dict = {"a": []}
    cyc["a"].append(cyc)
    with pytest.raises(TypeError, match="cycle"):
        flatten_state(cyc)


def test_load_tensors_returns_weights_under_prefix(tmp_path):
    model, opt, *_ = make_training()
    path = save_checkpoint({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()]}, tmp_path / "w")
    weights = load_tensors(path)
    assert set(weights) == {"weight", "bias"}
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(weights)
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(CheckpointError, match="no tensors under 'ema/'"):
        load_tensors(path, prefix="ema/")


# --------------------------------------------------------------------------- files and corruption


def test_pair_layout_and_header(tmp_path):
    path = save_checkpoint({"w": torch.ones(3)}, tmp_path / "sub" / "step-000000001.ckpt")
    st, js = checkpoint_paths(tmp_path / "sub" / "step-000000001")
    assert path == js and js.exists() and st.exists()
    header = json.loads(js.read_text())
    assert header["version"] == ckpt.FORMAT_VERSION
    assert header["safetensors"]["bytes"] == st.stat().st_size
    # stem, .json, .safetensors and .ckpt all name the same pair
    for p in ("step-000000001", "step-000000001.json", "step-000000001.safetensors", "step-000000001.ckpt"):
        assert torch.equal(load_checkpoint(tmp_path / "sub" / p)["w"], torch.ones(3))


def save_steps(folder: Path, steps) -> list[Path]:
    return [save_checkpoint({"step": s, "w": torch.full((4,), float(s))}, folder / checkpoint_name(s)) for s in steps]


def assert_newest_is_skipped(folder: Path, caplog, newest: Path, previous: Path, match: str) -> None:
    """Loading the corrupt newest checkpoint fails with `match`; latest_checkpoint falls back with a warning."""
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="genlab"):
        assert latest_checkpoint(folder) == previous
    assert newest.name in caplog.text


def test_truncated_weights_fall_back_to_previous(tmp_path, caplog):
    p1, p2 = save_steps(tmp_path, [1, 2])
    st2 = checkpoint_paths(p2)[0]
    st2.write_bytes(st2.read_bytes()[:-10])
    assert_newest_is_skipped(tmp_path, caplog, p2, p1, "truncated")


def test_altered_weights_of_same_size_fail_checksum(tmp_path):
    (p,) = save_steps(tmp_path, [1])
    st = checkpoint_paths(p)[0]
    data = bytearray(st.read_bytes())
    data[-1] ^= 1
    st.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="sha256"):
        load_tensors(p, prefix="")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "genlab-checkpoint", "version": 99}', "version 99"),
        ("[1]", "not a genlab"),
    ],
)
def test_bad_json_falls_back_to_previous(tmp_path, caplog, text, match):
    p1, p2 = save_steps(tmp_path, [1, 2])
    p2.write_text(text)
    assert_newest_is_skipped(tmp_path, caplog, p2, p1, match)


def test_json_without_weights_is_skipped(tmp_path, caplog):
    p1, p2 = save_steps(tmp_path, [5, 10])
    checkpoint_paths(p2)[0].unlink()
    assert_newest_is_skipped(tmp_path, caplog, p2, p1, "missing")


def test_no_valid_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "missing")
    (p,) = save_steps(tmp_path, [1])
    p.write_text("")
    with pytest.raises(CheckpointError, match="intact"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_disk_full_keeps_previous_and_leaves_no_temp_files(tmp_path, monkeypatch, fail_on_call):
    (p1,) = save_steps(tmp_path, [1])
    before = sorted(tmp_path.iterdir())
    real_write, calls = ckpt._write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == fail_on_call:
            real_write(path, data[: len(data) // 2])  # a partial temp file, as a real ENOSPC leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes", full_disk)
    for target in (tmp_path / checkpoint_name(2), tmp_path / checkpoint_name(1)):  # new step, and overwrite
        with pytest.raises(CheckpointError, match="No space left on device; free space or choose another --out"):
            save_checkpoint({"step": 2, "w": torch.zeros(4)}, target)
        calls.clear()
        assert sorted(tmp_path.iterdir()) == before
    assert torch.equal(load_checkpoint(p1)["w"], torch.full((4,), 1.0))


def test_list_and_prune(tmp_path, caplog):
    paths = save_steps(tmp_path, [3, 20, 100, 7])
    assert list_checkpoints(tmp_path) == [paths[0], paths[3], paths[1], paths[2]]
    (tmp_path / "other.json").write_text("{}")
    orphan = tmp_path / f"{checkpoint_name(1)}.safetensors"
    orphan.write_bytes(b"left by a crash")
    removed = prune_checkpoints(tmp_path, keep=2)
    assert removed == [paths[0], paths[3]]
    assert list_checkpoints(tmp_path) == [paths[1], paths[2]]
    assert not orphan.exists() and not checkpoint_paths(paths[0])[0].exists()
    assert (tmp_path / "other.json").exists()


def test_prune_never_deletes_newest_valid(tmp_path):
    paths = save_steps(tmp_path, [1, 2, 3])
    paths[2].write_text("corrupt")
    prune_checkpoints(tmp_path, keep=1)
    assert list_checkpoints(tmp_path) == [paths[1], paths[2]]
    assert latest_checkpoint(tmp_path) == paths[1]


# --------------------------------------------------------------------------- Lightning


def test_safe_checkpoint_io_resumes_a_lightning_run(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1.0))
            self.b = nn.Parameter(torch.tensor(0.0))

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return ((self.w * x + self.b - 2 * x) ** 2).mean()

        def on_save_checkpoint(self, checkpoint):
            saved.append(copy.deepcopy(checkpoint))  # the full dict Lightning hands to the CheckpointIO

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), "interval": "step"}}

    saved: list[dict] = []
    data = DataLoader(TensorDataset(torch.linspace(-1, 1, 16)), batch_size=4)
    kw = dict(accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False,
              enable_model_summary=False, plugins=[SafeCheckpointIO()], default_root_dir=tmp_path)
    model = Tiny()
    trainer = pl.Trainer(max_steps=3, **kw)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "step-3.ckpt")
    assert (tmp_path / "step-3.json").exists() and (tmp_path / "step-3.safetensors").exists()
    assert not (tmp_path / "step-3.ckpt").exists()
    assert_same(saved[0], load_checkpoint(tmp_path / "step-3.json"))  # Lightning's own state, exactly

    resumed = Tiny()
    trainer2 = pl.Trainer(max_steps=5, **kw)
    seen = []  # (global step, w, lr) at the start of each resumed step
    resumed.on_train_batch_start = lambda batch, idx: seen.append(
        (trainer2.global_step, resumed.w.item(), trainer2.optimizers[0].param_groups[0]["lr"]))
    trainer2.fit(resumed, data, ckpt_path=tmp_path / "step-3.ckpt")
    assert [s for s, _, _ in seen] == [3, 4] and trainer2.global_step == 5
    assert seen[0][1] == model.w.item()  # the weights of step 3, restored exactly
    assert seen[0][2] == 0.1 * 0.5  # StepLR(step_size=2) after 3 steps: lr halved once
    assert trainer2.lr_scheduler_configs[0].scheduler.last_epoch == 5

    SafeCheckpointIO().remove_checkpoint(tmp_path / "step-3.ckpt")
    assert not list(tmp_path.glob("step-3.*"))


def test_safe_checkpoint_io_map_location(tmp_path):
    io = SafeCheckpointIO()
    io.save_checkpoint({"w": torch.ones(2)}, tmp_path / "a.ckpt")
    for loc in (None, "cpu", torch.device("cpu"), {"cuda:0": "cpu"}, lambda storage, loc: storage):
        assert io.load_checkpoint(tmp_path / "a.ckpt", map_location=loc)["w"].device.type == "cpu"


# --------------------------------------------------------------------------- run lock


def test_run_lock_is_exclusive_within_a_process(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert lock.locked and (tmp_path / "run" / ".lock").exists()
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()} .*choose another --out"):
            RunLock(tmp_path / "run").acquire()
    assert not lock.locked
    with RunLock(tmp_path / "run"):  # free again after release
        pass
    with lock:  # the same object can be entered again
        pass


def test_run_lock_never_writes_through_a_planted_link(tmp_path):
    """A `.lock` that is a symbolic link (a run folder from a stranger) is refused, its target left alone."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(target)
    with pytest.raises(OSError):
        RunLock(tmp_path / "run").acquire()
    assert target.read_text() == "keep me"


def test_run_lock_held_by_killed_child_is_released(tmp_path):
    run = tmp_path / "run"
    code = (
        "import sys, time\nfrom genlab.engine.runlock import RunLock\n"
        f"lock = RunLock({str(run)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"process {child.pid} "):
            RunLock(run).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    with RunLock(run) as lock:
        assert lock.locked
