"""Fault injection: `genlab train` killed with SIGKILL at random moments and resumed each time, SIGTERM,
corrupt newest checkpoints, two writers on one run folder, a full disk and an unwritable run folder.

The promise under test: whatever the moment of a kill, resuming gives the uninterrupted run's
final weights, EMA, optimiser state and trainer state bit for bit (CPU, one thread); no JSON
checkpoint is ever half-written; at most keep_last (+1 while pruning) are kept; a corrupt newest
checkpoint is skipped with a warning; a dead process holds no lock.

The NaN/Inf guard is tested in test_nan_guard.py, path escapes and fuzzing in test_safety.py.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import GAUSS_CONFIG, TINY, genlab_argv, genlab_env, one_thread, train_tiny

from genlab.cli import main
from genlab.engine import checkpoint as ckpt_io
from genlab.engine.checkpoint import (
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    stale_temp_files,
    verify_checkpoint,
)
from genlab.engine.config import load_config
from genlab.engine.runlock import RunLock
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML, RUN_JSON
from genlab.engine.trainer import train
from genlab.errors import RunLockedError

KEEP_LAST = 3
# Checkpoint after every step, so that many kills land while one is being written.
KILL_OVERRIDES = ["trainer.ckpt_every=1", f"trainer.keep_last={KEEP_LAST}"]
MAX_DELAY = 0.3  # seconds between a process's first new checkpoint and its kill
STEPS_PER_KILL = 15  # more than a cycle trains (a step or two, then MAX_DELAY s at well under 40 steps/s)
EARLY_KILL_SHARE = 0.2  # kills timed from the fork instead: set-up, lock, config writing, first steps
EARLY_WINDOW = 0.4  # seconds: about a forked `genlab train`'s set-up time (data, model, Trainer)
CORRUPT_SHARE = 0.25  # kills after which the newest checkpoint is damaged too


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


def newest_step(run: Path) -> int:
    """The step of the newest JSON checkpoint of a run (-1 without one)."""
    found = list_checkpoints(run / CHECKPOINTS)
    return int(found[-1].stem.split("-")[1]) if found else -1


def metric_rows(run: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv, as written."""
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _without_wall_clock(meta: dict) -> dict:
    """The JSON state less the one value that is not training state: the time budget's clock."""
    meta["callbacks"].get("StopConditions", {}).pop("train_seconds", None)
    return meta


def assert_same_checkpoint(a: Path, b: Path) -> int:
    """Both checkpoints hold the same state bit for bit: every tensor (weights, EMA, optimiser moments) and
    every JSON value (step, loops, schedulers, callbacks), the wall clock aside. Returns the number of tensors."""
    tensors_a, meta_a = flatten_state(load_checkpoint(a))
    tensors_b, meta_b = flatten_state(load_checkpoint(b))
    assert _without_wall_clock(meta_a) == _without_wall_clock(meta_b), "the JSON state differs"
    assert tensors_a.keys() == tensors_b.keys()
    assert any(k.startswith("state_dict/ema_net.") for k in tensors_a)
    assert any(k.startswith("optimizer_states/") for k in tensors_a)
    for name in tensors_a:
        ta, tb = tensors_a[name], tensors_b[name]
        assert ta.dtype == tb.dtype and ta.shape == tb.shape, name
        assert torch.equal(ta, tb), f"{name} differs"
    return len(tensors_a)


# ---------------------------------------------------------------- SIGKILL at random moments


class ForkServer:
    """Client of tests/fork_server.py: forks `genlab` processes from one interpreter that imported Lightning."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_server.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=genlab_env())
        assert "ready" in self.ask(None)

    def ask(self, request: dict | None) -> dict:
        """Send one request (None: only read) and return the answer."""
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (rc={self.proc.poll()})"
        return json.loads(line)

    def start(self, args: list[str], stderr: Path) -> Forked:
        """Fork a child running `genlab ARGS`, its stderr going to the file `stderr`."""
        return Forked(self, self.ask({"run": args, "stderr": str(stderr)})["pid"])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Forked:
    """A child of the fork server, with the part of Popen's interface the harness uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.ask({"poll": self.pid})["status"]
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # not yet reaped: the pid is still this child's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.ask({"wait": self.pid})["status"]
        return self.returncode


@pytest.fixture(scope="module")
def fork_server():
    """One fork server for the module's kill tests."""
    server = ForkServer()
    yield server
    server.close()


@dataclass
class KillLog:
    """What a run of kills did to a run folder."""

    kills: int = 0  # SIGKILLs that hit a live `genlab train`
    during_write: int = 0  # ... that left a checkpoint write unfinished (temp files, or weights without JSON)
    without_progress: int = 0  # ... before the process had written a checkpoint of its own
    corrupted: int = 0  # newest checkpoints damaged between kills (truncated weights, bad JSON)
    fallbacks: int = 0  # resumes that warned and used the previous checkpoint
    lock_refusals: int = 0  # a second writer refused while a process trained


def _unfinished_writes(run: Path) -> set[tuple[str, int]]:
    """What killed writers left half done: temp files, and weights newer than the newest JSON ((name, mtime))."""
    folder = run / CHECKPOINTS
    newest = newest_step(run)
    orphans = [p for p in folder.glob("step-*.safetensors")
               if int(p.stem.split("-")[1]) > newest and not p.with_suffix(".json").exists()]
    return {(p.name, p.stat().st_mtime_ns) for p in [*stale_temp_files(folder), *orphans]}


def _assert_folder_invariants(run: Path) -> None:
    """No JSON checkpoint without its complete weights; at most keep_last + 1 (a kill between save and prune)."""
    found = list_checkpoints(run / CHECKPOINTS)
    for json_path in found:
        verify_checkpoint(json_path)  # raises on a half-written pair
    assert len(found) <= KEEP_LAST + 1, [p.name for p in found]
    RunLock(run).acquire().release()  # the killed process holds no lock


def _corrupt_newest(run: Path, how: str) -> None:
    """Damage the newest checkpoint as a dying disk or a stranger might."""
    json_path = list_checkpoints(run / CHECKPOINTS)[-1]
    if how == "truncate":
        weights = json_path.with_suffix(".safetensors")
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        json_path.write_text('{"format": "genlab-checkpoint", "version": 1, "safe', encoding="utf-8")


def _wait_for_progress(run: Path, proc, after: int, timeout: float = 120) -> None:
    """Poll until the process has written a checkpoint newer than step `after`."""
    deadline = time.monotonic() + timeout
    while newest_step(run) <= after:
        assert proc.poll() is None, f"genlab train exited early (rc={proc.returncode})"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)


def _train_args(run: Path, steps: int) -> list[str]:
    """`genlab train` arguments: --resume once the run folder is complete, else the original command."""
    if (run / CONFIG_YAML).is_file() and (run / RUN_JSON).is_file():
        return ["train", "--resume", str(run)]
    # killed before the run folder was complete: the user runs the same command again
    return ["train", str(GAUSS_CONFIG), *TINY, *KILL_OVERRIDES, f"trainer.max_steps={steps}", "--out", str(run)]


def kill_repeatedly(server: ForkServer, run: Path, logs: Path, n_kills: int, steps: int, seed: int) -> KillLog:
    """SIGKILL `genlab train` n_kills times at seeded random moments, damaging the newest checkpoint now and then."""
    rng = random.Random(seed)
    log = KillLog()
    expect_fallback = False
    for i in range(n_kills):
        before, unfinished = newest_step(run), _unfinished_writes(run)
        err = logs / f"stderr-{i}.txt"
        proc = server.start(_train_args(run, steps), err)
        try:
            if rng.random() < EARLY_KILL_SHARE and not expect_fallback:
                time.sleep(rng.uniform(0, EARLY_WINDOW))  # set-up: data, lock, config, first steps
            else:
                _wait_for_progress(run, proc, before)
                if i == 1:  # a second writer is refused while the first one trains
                    with pytest.raises(RunLockedError, match=f"in use by process {proc.pid}"):
                        train(load_config(run / CONFIG_YAML), run, resume=True)
                    log.lock_refusals += 1
                time.sleep(rng.uniform(0, MAX_DELAY))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            rc = proc.wait()
        assert rc == -signal.SIGKILL, f"genlab train ended before its kill (rc={rc}): {err.read_text()}"
        log.kills += 1
        log.during_write += bool(_unfinished_writes(run) - unfinished)
        log.without_progress += newest_step(run) == before
        if expect_fallback:
            assert "skipping corrupt checkpoint" in err.read_text(), err.read_text()
            log.fallbacks += 1
        _assert_folder_invariants(run)
        expect_fallback = (i + 1 < n_kills and len(list_checkpoints(run / CHECKPOINTS)) >= 2
                           and rng.random() < CORRUPT_SHARE)
        if expect_fallback:
            _corrupt_newest(run, rng.choice(["truncate", "json"]))
            log.corrupted += 1
    return log


def sigterm_then_finish(server: ForkServer, run: Path, logs: Path, steps: int) -> int:
    """SIGTERM a resumed run (a real `genlab` process): it stops cleanly (exit 0, a final checkpoint, how to
    resume); then finish the run."""
    err = logs / "stderr-sigterm.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(genlab_argv("train", "--resume", str(run)), stdout=subprocess.DEVNULL, stderr=f,
                                env=genlab_env())
    _wait_for_progress(run, proc, newest_step(run))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, err.read_text()
    text = err.read_text()
    assert "Traceback" not in text
    stopped = re.search(r"stopped at step (\d+) \(SIGTERM\); continue with: genlab train --resume", text)
    assert stopped, text
    final = list_checkpoints(run / CHECKPOINTS)[-1]
    assert newest_step(run) == int(stopped.group(1)) == load_checkpoint(final)["global_step"]
    # The rest in one go; checkpoint frequency is not training state (the straight run saves only at the end).
    finish = server.start(["train", "--resume", str(run), f"trainer.ckpt_every={steps}"], logs / "stderr-finish.txt")
    assert finish.wait() == 0, (logs / "stderr-finish.txt").read_text()
    assert newest_step(run) == steps
    return int(stopped.group(1))


def check_kills_against_uninterrupted(server: ForkServer, tmp_path: Path, n_kills: int, seed: int) -> KillLog:
    """The whole harness: kills, a SIGTERM, the finish, and the bit-for-bit comparison with a straight run."""
    run, logs = tmp_path / "killed", tmp_path / "logs"
    logs.mkdir()
    steps = STEPS_PER_KILL * n_kills + 100  # never reached by the kills (a cycle trains < MAX_DELAY seconds)
    log = kill_repeatedly(server, run, logs, n_kills, steps, seed)
    stopped = sigterm_then_finish(server, run, logs, steps)
    straight = train_tiny(GAUSS_CONFIG, tmp_path / "straight", f"trainer.max_steps={steps}",
                          f"trainer.ckpt_every={steps}")
    n_tensors = assert_same_checkpoint(list_checkpoints(run / CHECKPOINTS)[-1],
                                       list_checkpoints(straight / CHECKPOINTS)[-1])
    assert len(list_checkpoints(run / CHECKPOINTS)) <= KEEP_LAST
    assert not stale_temp_files(run / CHECKPOINTS)
    # metrics.csv: no step twice (rows written after the checkpoint a kill fell back to are dropped on resume),
    # and every row is the uninterrupted run's, but for the one Lightning adds where SIGTERM stopped the run;
    # rows a killed process had not yet flushed are missing.
    rows, reference = metric_rows(run), {r["step"]: r for r in metric_rows(straight)}
    logged = [int(r["step"]) for r in rows]
    assert logged == sorted(set(logged))
    assert set(logged) - {int(step) for step in reference} <= {stopped - 1}
    assert all(r["train/loss"] == reference[r["step"]]["train/loss"] for r in rows if r["step"] in reference)
    missing = len(set(reference) - {r["step"] for r in rows})
    print(f"\n{log.kills} SIGKILLs survived ({log.during_write} during a checkpoint write, {log.without_progress} "
          f"before the process's first checkpoint), {log.corrupted} corrupt newest checkpoints skipped with a "
          f"warning, {log.lock_refusals} second writer refused, 1 SIGTERM; {steps} steps; final state equal to the "
          f"uninterrupted run's bit for bit ({n_tensors} tensors and the JSON state); metrics.csv lacks {missing} "
          f"of {len(reference)} rows (never flushed by a killed process)")
    return log


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(fork_server, tmp_path):
    log = check_kills_against_uninterrupted(fork_server, tmp_path, n_kills=20, seed=0)
    assert log.kills == 20 and log.lock_refusals == 1 and log.fallbacks == log.corrupted > 0


@pytest.mark.slow
def test_many_sigkills_equal_uninterrupted_run(fork_server, tmp_path):
    log = check_kills_against_uninterrupted(fork_server, tmp_path, n_kills=150, seed=1)
    assert log.kills == 150 and log.during_write > 0 and log.fallbacks == log.corrupted > 0


# ---------------------------------------------------------------- full disk, unwritable folder


def fail_writes_after(monkeypatch, calls: int, err: int = errno.ENOSPC) -> None:
    """Make checkpoint writes fail like a full disk once `calls` files have been written."""
    real, count = ckpt_io._write_bytes, {"n": 0}

    def write(path: Path, data: bytes) -> None:
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(err, os.strerror(err), str(path))
        real(path, data)

    monkeypatch.setattr(ckpt_io, "_write_bytes", write)


def run_cli(capsys, argv: list) -> tuple[int, str]:
    """`genlab ARGV` in-process: (exit code, stderr)."""
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, *phrases: str) -> None:
    """Exit code 2 and one `error:` line naming `phrases`."""
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_disk_full_during_training_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    fail_writes_after(monkeypatch, calls=4)  # step 1 and 2 written (weights + JSON each), step 3 fails
    rc, err = run_cli(capsys, ["train", GAUSS_CONFIG, *TINY, "trainer.ckpt_every=1", "trainer.max_steps=5",
                               "--out", out])
    assert_one_line_error(rc, err, "cannot write checkpoint", "step-000000003", "No space left on device",
                          "free space or choose another --out")
    assert [p.name for p in list_checkpoints(out / CHECKPOINTS)] == ["step-000000001.json", "step-000000002.json"]
    verify_checkpoint(list_checkpoints(out / CHECKPOINTS)[-1])
    assert not stale_temp_files(out / CHECKPOINTS)
    RunLock(out).acquire().release()
    monkeypatch.undo()  # space again: the run resumes from step 2
    rc, err = run_cli(capsys, ["train", "--resume", out])
    assert rc == 0, err
    assert newest_step(out) == 5


@pytest.mark.parametrize("where", ["config", "metrics"])
def test_disk_full_outside_checkpoints_is_one_line(where, tmp_path, monkeypatch, capsys):
    """A full disk met writing config.yaml (genlab) or metrics.csv (Lightning's logger): one line, exit 2."""
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    import genlab.engine.trainer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metrics.csv")

    if where == "config":
        monkeypatch.setattr(genlab.engine.trainer, "save_config", full)
    else:
        monkeypatch.setattr(ExperimentWriter, "save", full)
    out = tmp_path / "run"
    rc, err = run_cli(capsys, ["train", GAUSS_CONFIG, *TINY, "trainer.max_steps=2", "--out", out])
    assert_one_line_error(rc, err, "No space left on device", "choose another --out")
    RunLock(out).acquire().release()


def test_unwritable_run_folder_is_one_line(tmp_path, capsys):
    """--out below a regular file cannot be created (as root too, unlike a chmod)."""
    (tmp_path / "file").write_text("not a folder")
    rc, err = run_cli(capsys, ["train", GAUSS_CONFIG, *TINY, "--out", tmp_path / "file" / "run"])
    assert_one_line_error(rc, err, "cannot write to run folder", "choose another --out")


def test_stale_temp_files_of_a_killed_writer_are_removed_on_resume(gauss_run, tmp_path):
    from conftest import copy_run

    run = copy_run(gauss_run, tmp_path / "run")
    for suffix in ("safetensors", "json"):  # what a writer killed between its two temp files leaves
        (run / CHECKPOINTS / f".step-000000009.{suffix}.4242.0badc0de.tmp").write_bytes(b"partial")
    assert len(stale_temp_files(run / CHECKPOINTS)) == 2
    train(load_config(run / CONFIG_YAML, ["trainer.max_steps=4"]), run, resume=True)
    assert not stale_temp_files(run / CHECKPOINTS)
    assert newest_step(run) == 4


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_at_step_zero(tmp_path, caplog):
    """config.yaml and run.json written, no checkpoint yet: --resume trains from step 0, as the first run would."""
    straight = train_tiny(GAUSS_CONFIG, tmp_path / "straight", "trainer.max_steps=3")
    early = train_tiny(GAUSS_CONFIG, tmp_path / "early", "trainer.max_steps=3")
    for p in (early / CHECKPOINTS).iterdir():
        p.unlink()
    with caplog.at_level(logging.WARNING, logger="genlab"):
        train(load_config(early / CONFIG_YAML), early, resume=True)
    assert any("starting from step 0" in r.getMessage() for r in caplog.records)
    assert_same_checkpoint(list_checkpoints(early / CHECKPOINTS)[-1], list_checkpoints(straight / CHECKPOINTS)[-1])


def test_resume_at_the_end_does_not_rewrite_the_checkpoint(gauss_run, tmp_path):
    """Nothing left to train: the checkpoint resumed from is not written again (no window without it)."""
    from conftest import copy_run

    run = copy_run(gauss_run, tmp_path / "run")
    (json_path,) = list_checkpoints(run / CHECKPOINTS)
    inode = json_path.stat().st_ino
    train(load_config(run / CONFIG_YAML), run, resume=True)
    assert list_checkpoints(run / CHECKPOINTS) == [json_path] and json_path.stat().st_ino == inode
