"""End-to-end tests of the `genlab` command: help, list, sample outputs, and every bad input a
user is likely to type, each of which must be one `error: ...` line, exit code 2, no traceback,
and no change to an existing run folder.

Most commands run in-process through `genlab.cli.main` (seconds faster than a new interpreter
that imports Lightning); --help and a few train errors also run as real subprocesses.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import (DIGITS_CONFIG, GAUSS_CONFIG, TINY, TINY_UNET, copy_run, folder_digest, genlab_argv, genlab_cmd,
                      genlab_env, one_thread, train_tiny)
from genlab.cli import main
from genlab.diffusion.samplers import SAMPLERS
from genlab.runs import CHECKPOINTS, CONFIG_YAML


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Every test here on one torch thread (see conftest.one_thread)."""
    with one_thread():
        yield


# ---------------------------------------------------------------- help and list

HELP_MENTIONS = {
    (): ["train", "sample", "list", "--version", "--verbose"],
    ("train",): ["config", "key=value", "--out", "--resume", "--max-time"],
    ("sample",): ["RUN_DIR", "-n", "--sampler", "--steps", "--seed", "--out", "--no-ema", "--class",
                  "--guidance", "--temperature", "--batch-size"],
    ("list",): ["dataset", "sampler"],
}


@pytest.mark.parametrize("command", list(HELP_MENTIONS), ids=lambda c: " ".join(c) or "genlab")
def test_help_mentions_every_option(command):
    proc = genlab_cmd(*command, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in HELP_MENTIONS[command]:
        assert word in proc.stdout, f"`genlab {' '.join(command)} --help` does not mention {word}"


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "8gaussians", "folder:PATH", "dpmpp-2m", "heun", "ddim", "unet", "mlp", "diffusion",
                 "cosine"):
        assert name in out
    for name in SAMPLERS:
        assert f"  {name} " in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("genlab ")


# ---------------------------------------------------------------- sample


def sample(capsys, run: Path, out: Path, *args: str) -> Path:
    """`genlab sample RUN --out OUT ARGS...` in-process; asserts success and returns OUT."""
    rc = main(["sample", str(run), "--out", str(out), *args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert out.is_file()
    return out


def load_npz(path: Path) -> np.ndarray:
    """The `samples` array of an .npz written by `genlab sample`."""
    with np.load(path) as f:
        return f["samples"]


def test_sample_digits_png_and_npz(digits_run, tmp_path, capsys):
    png = sample(capsys, digits_run, tmp_path / "grid.png", "-n", "6", "--steps", "2")
    with Image.open(png) as img:
        # 6 images of 8x8 in rows of ceil(sqrt 6) = 3, 1-pixel gaps, drawn at 4x: 4 * (3 * 9 + 1) by 4 * (2 * 9 + 1).
        assert img.format == "PNG" and img.mode == "L"
        assert img.size == (112, 76)
    x = load_npz(sample(capsys, digits_run, tmp_path / "x.npz", "-n", "6", "--steps", "2"))
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1


def test_sample_8gaussians_png_and_npz(gauss_run, tmp_path, capsys):
    with Image.open(sample(capsys, gauss_run, tmp_path / "scatter.png", "-n", "50", "--steps", "2")) as img:
        assert img.format == "PNG" and img.size[0] == img.size[1] > 0
    x = load_npz(sample(capsys, gauss_run, tmp_path / "x.npz", "-n", "50", "--steps", "2"))
    assert x.shape == (50, 2) and np.isfinite(x).all()


def test_sample_is_a_function_of_the_seed_and_weights(gauss_run, tmp_path, capsys):
    def draw(name: str, *args: str) -> np.ndarray:
        return load_npz(sample(capsys, gauss_run, tmp_path / f"{name}.npz", "-n", "32", "--steps", "3", *args))

    a, again = draw("a", "--seed", "1"), draw("again", "--seed", "1")
    assert np.array_equal(a, again)
    assert not np.allclose(a, draw("b", "--seed", "2"))
    assert not np.allclose(a, draw("raw", "--seed", "1", "--no-ema"))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_works_through_the_cli(sampler, gauss_run, tmp_path, capsys):
    x = load_npz(sample(capsys, gauss_run, tmp_path / "x.npz", "-n", "8", "--steps", "2", "--sampler", sampler))
    assert x.shape == (8, 2) and np.isfinite(x).all()


def test_class_conditional_sampling(tmp_path, capsys, cli):
    run = train_tiny(GAUSS_CONFIG, tmp_path / "cond", "model.class_cond=true", "trainer.max_steps=2")
    x = load_npz(sample(capsys, run, tmp_path / "x.npz", "-n", "8", "--steps", "2", "--class", "3", "--guidance", "2"))
    assert x.shape == (8, 2) and np.isfinite(x).all()
    assert_user_error(cli, ["sample", run, "--class", "8", "--out", tmp_path / "y.npz"], "--class 8", "0..7")


# ---------------------------------------------------------------- bad inputs


@dataclass
class CLICapture:
    """What a failing in-process command wrote: stdout/stderr (capsys) and log records (caplog)."""

    capsys: pytest.CaptureFixture
    caplog: pytest.LogCaptureFixture


@pytest.fixture
def cli(capsys, caplog) -> CLICapture:
    """Captures of stdout, stderr and logging for `assert_user_error`."""
    return CLICapture(capsys, caplog)


def assert_user_error(cli: CLICapture, argv: list[str], *phrases: str, unchanged: tuple[Path, ...] = (),
                      logs: bool = False) -> str:
    """`genlab ARGV` fails with exit code 2 and one `error: ...` line naming `phrases`, touching no folder."""
    before = [folder_digest(p) for p in unchanged]
    cli.caplog.clear()
    try:
        with cli.caplog.at_level(logging.INFO, logger="genlab"):
            rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit from inside parse_args
        rc = e.code
    out, err = cli.capsys.readouterr()
    # The real command prints genlab's log records on stderr too (see cli._quiet): there must be none.
    logged = [r.getMessage() for r in cli.caplog.records if r.name.startswith("genlab")]
    assert logs or not logged, f"log lines besides the error: {logged}"
    assert rc == 2, f"rc={rc}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"
    for folder, digest in zip(unchanged, before):
        assert folder_digest(folder) == digest, f"{folder} changed"
    return lines[0]


def assert_train_error(cli: CLICapture, args: list, phrases: list[str], fresh: Path, victim: Path) -> None:
    """`genlab train ARGS --out FRESH` fails naming `phrases` and leaves no config or checkpoint behind;
    `--out VICTIM` (an existing run) fails too and leaves the run unchanged."""
    assert_user_error(cli, ["train", *args, "--out", fresh], *phrases)
    assert not (fresh / CONFIG_YAML).exists() and not (fresh / CHECKPOINTS).exists()  # nothing half-written
    assert_user_error(cli, ["train", *args, "--out", victim], unchanged=(victim,))


@pytest.fixture
def victim(gauss_run, tmp_path) -> Path:
    """A private copy of the 8gaussians run, used as --out / RUN_DIR of bad commands: it must not change."""
    return copy_run(gauss_run, tmp_path / "victim")


def write(path: Path, data: str | bytes) -> Path:
    """Write text or bytes to `path` and return it."""
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def gray_png(path: Path, size: tuple[int, int] = (8, 8), value: int = 128) -> Path:
    """A small grayscale PNG."""
    Image.new("L", size, value).save(path)
    return path


BAD_CONFIGS = {
    "missing": (None, ["does not exist"]),
    "malformed": ("data: {name: digits\nmodel: [\n", ["not valid YAML", "line"]),
    "list": ("- data\n- model\n", ["must be a mapping", "list"]),
    "not-utf8": (b"name: caf\xe9\n", ["not UTF-8"]),
    "unknown-top-key": ("datta: {name: digits}\n", ["unknown key datta", 'did you mean "data"']),
    "unknown-sampler": ("data: {name: 8gaussians}\nmodel: {net: mlp, sampler: dpm2m}\n", ['"dpm2m"', "dpmpp-2m"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file(case, victim, tmp_path, cli):
    content, phrases = BAD_CONFIGS[case]
    path = tmp_path / f"{case}.yaml"
    if content is not None:
        write(path, content)
    assert_train_error(cli, [path, *TINY], phrases, tmp_path / "fresh", victim)


BAD_OVERRIDES = {
    "nested-typo": (["model.unet.chanels=16"], ["model.unet.chanels", 'did you mean "channels"']),
    "wrong-type": (["optim.lr=abc"], ["optim.lr", "abc"]),
    "zero-batch": (["optim.batch_size=0"], ["optim.batch_size", "greater than or equal to 1"]),
    "huge-resolution": (["data.resolution=100000"], ["data.resolution", "100000"]),
    "unknown-dataset": (["data.name=digit"], ['"digit"', 'did you mean "digits"']),
    "unknown-sampler": (["model.sampler=dpm2m"], ['did you mean "dpmpp-2m"']),
    "not-key-value": (["optim.lr"], ["key=value"]),
    "unet-on-points": (["model.net=unet"], ["model.net=unet", "model.net=mlp"]),
    "batch-over-dataset": (["data.n=50"], ["larger than the dataset", "optim.batch_size<=50"]),
    "batch-not-divisible": (["optim.accumulate=3"], ["divisible"]),
    "batch-not-divisible-ddp": (["optim.batch_size=63", "trainer.devices=2", "trainer.strategy=ddp_spawn",
                                 "trainer.accelerator=cpu"], ["divisible by devices x accumulate = 2"]),
    "missing-folder": (["data.name=folder:/no/such/folder"], ["/no/such/folder", "does not exist"]),
    "folder-without-path": (["data.name=folder:"], ["has no path", "folder:PATH"]),
}


@pytest.mark.parametrize("case", list(BAD_OVERRIDES))
def test_bad_override(case, victim, tmp_path, cli):
    overrides, phrases = BAD_OVERRIDES[case]
    assert_train_error(cli, [GAUSS_CONFIG, *TINY, *overrides], phrases, tmp_path / "fresh", victim)


def folder_case(root: Path, case: str) -> tuple[list[str], list[str]]:
    """An image folder with one problem; returns (overrides, phrases of the expected error)."""
    root.mkdir()
    for i in range(4):
        gray_png(root / f"{i}.png", value=40 * i)
    if case == "empty":
        for p in root.iterdir():
            p.unlink()
        write(root / "notes.txt", "no images here")
        return [], ["no images"]
    if case == "corrupt":
        write(root / "9-broken.png", b"\x89PNG\r\n\x1a\nnot an image")
        return [], ["9-broken.png", "data.skip_bad"]
    gray_png(root / "9-wide.png", size=(9, 8))  # "size"
    return ["data.resolution=null"], ["9-wide.png", "9x8", "data.resolution"]


@pytest.mark.parametrize("case", ["empty", "corrupt", "size"])
def test_bad_image_folder(case, victim, tmp_path, cli):
    overrides, phrases = folder_case(tmp_path / "images", case)
    folder = f"data.name=folder:{tmp_path / 'images'}"
    args = [DIGITS_CONFIG, *TINY, *TINY_UNET, "optim.batch_size=2", folder, *overrides]
    assert_train_error(cli, args, phrases, tmp_path / "fresh", victim)


def test_train_into_an_existing_run_suggests_resume(victim, cli):
    assert_user_error(cli, ["train", GAUSS_CONFIG, *TINY, "--out", victim], "already holds a run", "--resume",
                      unchanged=(victim,))


def test_resume_refuses_non_trainer_overrides(victim, cli):
    assert_user_error(cli, ["train", "--resume", victim, "optim.lr=0.1"], "optim.lr=0.1", "trainer.",
                      unchanged=(victim,))
    assert_user_error(cli, ["train", "--resume", victim, "trainer.max_stepz=9"], 'did you mean "max_steps"',
                      unchanged=(victim,))
    assert_user_error(cli, ["train", GAUSS_CONFIG, "--resume", victim], "either a CONFIG or --resume",
                      unchanged=(victim,))


def test_run_in_use_by_another_writer(victim, cli):
    from genlab.runlock import RunLock

    with RunLock(victim):
        before = folder_digest(victim)
        assert_user_error(cli, ["train", "--resume", victim, "trainer.max_steps=9"], "in use by process")
        assert folder_digest(victim) == before


def test_not_a_run_folder(tmp_path, cli):
    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain / "notes.txt", "hello")
    for argv in (["sample", plain], ["train", "--resume", plain], ["sample", tmp_path / "missing"]):
        assert_user_error(cli, argv, "not a genlab run folder", unchanged=(plain,))


def test_checkpoint_of_another_model(gauss_run, digits_run, tmp_path, cli):
    """A U-Net run holding an MLP checkpoint, and an MLP run whose config asks for other widths."""
    other_arch = copy_run(digits_run, tmp_path / "other-arch")
    shutil.rmtree(other_arch / CHECKPOINTS)
    shutil.copytree(gauss_run / CHECKPOINTS, other_arch / CHECKPOINTS)
    wider = copy_run(gauss_run, tmp_path / "wider")
    cfg = (wider / CONFIG_YAML).read_text(encoding="utf-8")
    assert "hidden: 32" in cfg
    write(wider / CONFIG_YAML, cfg.replace("hidden: 32", "hidden: 48"))
    for run in (other_arch, wider):
        assert_user_error(cli, ["sample", run, "-n", "2", "--out", tmp_path / "x.png"], "does not fit the model",
                          unchanged=(run,))
        assert_user_error(cli, ["train", "--resume", run, "trainer.max_steps=9"], "does not fit the model",
                          unchanged=(run,))


def truncate_only_checkpoint(run: Path) -> None:
    """Cut the run's only weights file to 100 bytes."""
    (weights,) = (run / CHECKPOINTS).glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])


def test_truncated_only_checkpoint(victim, tmp_path, cli):
    truncate_only_checkpoint(victim)
    for argv in (["sample", victim, "-n", "2", "--out", tmp_path / "x.png"], ["train", "--resume", victim]):
        assert_user_error(cli, argv, "intact", unchanged=(victim,), logs=True)


def test_truncated_only_checkpoint_is_one_line(victim, tmp_path, cli):
    truncate_only_checkpoint(victim)
    assert_user_error(cli, ["sample", victim, "-n", "2", "--out", tmp_path / "x.png"], "intact")


def test_bad_sample_arguments(victim, tmp_path, cli):
    out = tmp_path / "x.npz"
    cases = [
        (["--steps", "0"], ["--steps", "positive"]),
        (["--steps", "-3"], ["--steps"]),
        (["-n", "0"], ["-n", "positive"]),
        (["--out", tmp_path / "x.jpg"], ["x.jpg", ".png", ".npz"]),
        (["--sampler", "dpm2m"], ['"dpm2m"', 'did you mean "dpmpp-2m"']),
        (["--class", "1"], ["--class", "class_cond"]),
        (["--seed", "-1"], ["--seed"]),
        (["--temperature", "0.5"], ["--temperature", "diffusion family", "--sampler"]),
        (["--temperature", "0"], ["--temperature", "positive"]),
    ]
    for args, phrases in cases:
        assert_user_error(cli, ["sample", victim, "--out", out, *args], *phrases, unchanged=(victim,))
    assert not out.exists() and not (tmp_path / "x.jpg").exists()


def test_run_json_that_is_corrupt(victim, tmp_path, cli):
    write(victim / "run.json", json.dumps({"family": "diffusion"}))
    assert_user_error(cli, ["sample", victim, "--out", tmp_path / "x.png"], "run.json", "corrupt",
                      unchanged=(victim,))


def test_errors_through_a_real_process(victim, tmp_path):
    """The installed entry point prints one `error:` line and exits 2 (no traceback, no log lines)."""
    before = folder_digest(victim)
    cases = [(["train", write(tmp_path / "bad.yaml", "model: [\n")], "not valid YAML"),
             (["train", GAUSS_CONFIG, *TINY, "--out", victim], "--resume"),
             (["sample", victim, "--sampler", "dpm2m", "--out", tmp_path / "x.png"], 'did you mean "dpmpp-2m"')]
    # Side by side: most of each process's time is importing torch and Lightning.
    procs = [subprocess.Popen(genlab_argv(*map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=genlab_env()) for argv, _ in cases]
    for proc, (argv, phrase) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], stderr
    assert folder_digest(victim) == before
