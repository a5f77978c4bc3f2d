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
from conftest import (
    DIGITS_CONFIG,
    GAUSS_CONFIG,
    TINY,
    TINY_UNET,
    copy_run,
    folder_digest,
    genlab_argv,
    genlab_cmd,
    genlab_env,
    one_thread,
    train_tiny,
)
from PIL import Image

from genlab.cli import main
from genlab.diffusion.samplers import SAMPLERS
from genlab.engine.runs import CHECKPOINTS, CONFIG_YAML


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


def library_sample(run: Path, n: int, **opts) -> np.ndarray:
    """What `genlab sample RUN -n N` should write: the run's model sampled in this process, seed 0 (the default)."""
    import torch

    from genlab.engine.runs import load_run_model

    return load_run_model(run).sample(n, generator=torch.Generator().manual_seed(0), **opts).numpy()


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
    np.testing.assert_array_equal(x, library_sample(digits_run, 6, steps=2))  # what the library draws, seed 0


def test_sample_8gaussians_png_and_npz(gauss_run, tmp_path, capsys):
    with Image.open(sample(capsys, gauss_run, tmp_path / "scatter.png", "-n", "50", "--steps", "2")) as img:
        assert img.format == "PNG" and img.size[0] == img.size[1] > 0
    x = load_npz(sample(capsys, gauss_run, tmp_path / "x.npz", "-n", "50", "--steps", "2"))
    assert x.shape == (50, 2)
    np.testing.assert_array_equal(x, library_sample(gauss_run, 50, steps=2))


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
    assert x.shape == (8, 2)
    np.testing.assert_array_equal(x, library_sample(gauss_run, 8, sampler=sampler, steps=2))  # that sampler's draw


def test_class_conditional_sampling(tmp_path, capsys, cli):
    run = train_tiny(GAUSS_CONFIG, tmp_path / "cond", "model.class_cond=true", "trainer.max_steps=2")
    x = load_npz(sample(capsys, run, tmp_path / "x.npz", "-n", "8", "--steps", "2", "--class", "3", "--guidance", "2"))
    assert x.shape == (8, 2)
    np.testing.assert_array_equal(x, library_sample(run, 8, steps=2, label=3, guidance=2.0))
    assert not np.allclose(x, library_sample(run, 8, steps=2, label=4, guidance=2.0))  # the class reaches the net
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


IS_FOLDER = b"<a folder>"  # BAD_CONFIGS content: make the config path a folder

BAD_CONFIGS = {
    "missing": (None, ["does not exist"]),
    "a-folder": (IS_FOLDER, ["is a folder"]),
    "binary": (b"\x00\x01\xff\xfe\x89PNG", ["not UTF-8"]),
    "python-tag": ("name: !!python/object/apply:os.system [echo hi]\n", ["not valid YAML", "constructor"]),
    "section-not-a-mapping": ("optim: 5\n", ["cannot set optim.batch_size", "optim is 5"]),
    "data-not-a-mapping": ("data: 5\n", ["bad value for data", "got 5"]),
    "wrong-type-in-file": ("trainer: {max_steps: many}\n", ["trainer.max_steps", "many"]),
    "nan-in-file": ("optim: {lr: .nan}\n", ["optim.lr", "nan"]),
    "unknown-family": ("family: gann\n", ['unknown family "gann"', 'did you mean "gan"']),
    "family-not-a-name": ("family: [gan, vae]\n", ["unknown family", "choose one of"]),
    "name-escapes-runs": ("name: ..\n", ["bad value for name", "runs/<name>"]),
    "name-is-a-path": ("name: /etc/cron.d\n", ["bad value for name"]),
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
    if content is IS_FOLDER:
        path.mkdir()
    elif content is not None:
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
    "empty-toy-dataset": (["data.n=0"], ["data.n", "greater than or equal to 1"]),
    "negative-lr": (["optim.lr=-1"], ["optim.lr", "greater than 0"]),
    "sigma-data-zero": (["model.sigma_data=0"], ["model.sigma_data", "positive standard deviation"]),
    "sigma-data-negative": (["model.sigma_data=-0.5"], ["model.sigma_data", "use auto"]),
    "dit-on-points": (["model.net=dit"], ["model.net=dit", "model.net=mlp"]),
    "vp-key-under-edm": (["model.prediction=v"], ["model.prediction=v", "model.precond=vp"]),
    "betas-out-of-range": (["optim.betas=[2,0.9]"], ["optim.betas.0", "less than 1"]),
    "nan-factor-out-of-range": (["trainer.nan_lr_factor=2"], ["trainer.nan_lr_factor"]),
    "strategy-lightning-refuses": (["trainer.strategy=fsdp", "trainer.accelerator=cpu"],
                                   ["Lightning refuses", "fsdp", "trainer.strategy"]),
    # absurd sizes, refused before anything is allocated (genlab/engine/memory.py): ~8 TB of weights
    "absurd-network": (["data.name=digits", "model.net=unet", "model.unet.channels=1024",
                        "model.unet.channel_mult=[64,64]", "model.unet.attention_resolutions=[8]"],
                       ["the model needs about", "GiB", "more than the"]),
    "override-with-newline": (["optim.lr\n=1"], ["unknown key", "'optim.lr\\n'"]),
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
    if case == "empty-classes":  # class sub-folders, none holding an image
        for p in root.iterdir():
            p.unlink()
        for name in ("cats", "dogs"):
            (root / name).mkdir()
            write(root / name / "readme.txt", "none yet")
        return [], ["no images"]
    if case == "all-corrupt":
        for p in root.iterdir():
            write(p, b"GIF89a truncated")
        return ["data.skip_bad=true"], ["no readable images", "all 4 files failed"]
    if case == "mixed":
        (root / "cats").mkdir()
        gray_png(root / "cats" / "0.png")
        return [], ["holds both", "class sub-folders"]
    if case == "truncated":  # a real PNG cut short
        data = (root / "0.png").read_bytes()
        write(root / "0.png", data[: len(data) // 2])
        return [], ["0.png", "cannot read image"]
    gray_png(root / "9-wide.png", size=(9, 8))  # "size"
    return ["data.resolution=null"], ["9-wide.png", "9x8", "data.resolution"]


@pytest.mark.parametrize("case", ["empty", "corrupt", "size", "empty-classes", "all-corrupt", "mixed", "truncated",
                                  "not-a-folder"])
def test_bad_image_folder(case, victim, tmp_path, cli):
    if case == "not-a-folder":
        overrides, phrases = [], ["is not a folder"]
        write(tmp_path / "images", "a file where the folder should be")
    else:
        overrides, phrases = folder_case(tmp_path / "images", case)
    folder = f"data.name=folder:{tmp_path / 'images'}"
    args = [DIGITS_CONFIG, *TINY, *TINY_UNET, "optim.batch_size=2", folder, *overrides]
    assert_train_error(cli, args, phrases, tmp_path / "fresh", victim)


@pytest.mark.parametrize("stray", ["notakey", "--no-such-flag", "-x=1"])
def test_a_stray_argument_after_the_options_is_refused(stray, victim, tmp_path, cli):
    assert_user_error(cli, ["train", GAUSS_CONFIG, *TINY, "--out", tmp_path / "fresh", stray], "unrecognized arguments",
                      stray, unchanged=(victim,))
    assert not (tmp_path / "fresh").exists()
    assert_user_error(cli, ["sample", victim, "seed=1"], "unrecognized arguments", "seed=1", unchanged=(victim,))


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
    from genlab.engine.runlock import RunLock

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
        (["--batch-size", "0"], ["--batch-size", "positive"]),
        (["-n", str(10**12)], [f"-n {10**12} samples", "need", "draw fewer"]),  # ~8 TB of samples
    ]
    for args, phrases in cases:
        assert_user_error(cli, ["sample", victim, "--out", out, *args], *phrases, unchanged=(victim,))
    assert not out.exists() and not (tmp_path / "x.jpg").exists()


def test_run_json_that_is_corrupt(victim, tmp_path, cli):
    write(victim / "run.json", json.dumps({"family": "diffusion"}))
    assert_user_error(cli, ["sample", victim, "--out", tmp_path / "x.png"], "run.json", "corrupt",
                      unchanged=(victim,))


def _edit_checkpoint_json(run: Path, **changes) -> None:
    """Change top-level keys of the header of a run's only checkpoint."""
    (path,) = (run / CHECKPOINTS).glob("*.json")
    write(path, json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}))


def _flip_a_weight_byte(run: Path) -> None:
    """Alter one byte of the run's only weights file, keeping its size (only the sha256 can tell)."""
    (path,) = (run / CHECKPOINTS).glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGED_RUNS = {  # case: (damage to a copy of a run, commands to try, phrases of the error)
    "config-not-utf8": (lambda run: write(run / CONFIG_YAML, "name: caf\xe9\n".encode("latin-1")),
                        ("resume", "sample", "eval"), ["config.yaml", "not UTF-8"]),
    "config-malformed": (lambda run: write(run / CONFIG_YAML, "model: [\n"), ("resume", "sample", "eval"),
                         ["not valid YAML"]),
    "config-of-another-family": (lambda run: write(run / CONFIG_YAML, (run / CONFIG_YAML).read_text().replace(
        "family: diffusion", "family: rbm")), ("resume", "sample", "eval"), ["unknown key model."]),
    "run-json-missing": (lambda run: (run / "run.json").unlink(), ("resume", "sample", "eval"),
                         ["not a genlab run folder"]),
    "run-json-not-json": (lambda run: write(run / "run.json", "{"), ("resume", "sample", "eval"),
                          ["run.json", "corrupt"]),
    "checkpoint-json-garbage": (lambda run: write(next((run / CHECKPOINTS).glob("*.json")), "{\"format"),
                                ("resume", "sample", "eval"), ["not valid JSON", "none of the 1 checkpoints"]),
    "checkpoint-newer-format": (lambda run: _edit_checkpoint_json(run, version=99), ("resume", "sample"),
                                ["format version 99"]),
    "checkpoint-not-genlab": (lambda run: _edit_checkpoint_json(run, format="pickle"), ("resume", "sample"),
                              ["not a genlab checkpoint"]),
    "checkpoint-weights-missing": (lambda run: next((run / CHECKPOINTS).glob("*.safetensors")).unlink(),
                                   ("resume", "sample"), ["weights", "missing"]),
    "checkpoint-weights-altered": (_flip_a_weight_byte, ("resume", "sample", "eval"), ["sha256"]),
}


@pytest.mark.parametrize("case", list(DAMAGED_RUNS))
def test_damaged_run_folder(case, victim, tmp_path, cli):
    damage, commands, phrases = DAMAGED_RUNS[case]
    damage(victim)
    argv = {"resume": ["train", "--resume", victim, "trainer.max_steps=9"],
            "sample": ["sample", victim, "-n", "2", "--out", tmp_path / "x.png"],
            "eval": ["eval", victim, "--n", "16", "--steps", "1"]}
    for command in commands:
        assert_user_error(cli, argv[command], *phrases, unchanged=(victim,))
    assert not (tmp_path / "x.png").exists()


def test_bad_eval_arguments(victim, tmp_path, cli):
    good = tmp_path / "good.npz"
    np.savez(good, samples=np.zeros((8, 2), np.float32))
    cases = [
        ([victim, "--n", str(10**12)], [f"--n {10**12} samples", "need"]),
        ([victim, "--sampler", "dpm2m"], ['did you mean "dpmpp-2m"']),
        ([victim, "--samples", tmp_path / "missing.npz"], ["missing.npz", "does not exist"]),
        ([victim, "--real", "digits", "--samples", good], ["either RUN_DIR or --real"]),
        (["--real", "8gaussianz", "--samples", good], ['unknown dataset "8gaussianz"', 'did you mean "8gaussians"']),
        ([tmp_path / "not-a-run"], ["not a genlab run folder"]),
    ]
    for args, phrases in cases:
        assert_user_error(cli, ["eval", *args], *phrases, unchanged=(victim,))


def test_batch_too_large_for_the_memory_is_refused_before_allocating(victim, tmp_path, cli, monkeypatch):
    """On a machine with 64 MiB, batch 1024 of the digits U-Net at 16x16 is refused from one example's
    measured activations (about 1 MiB each): one line, before training and before the run folder is written."""
    import genlab.engine.memory

    monkeypatch.setattr(genlab.engine.memory, "device_memory", lambda accelerator="cpu": (64 * 2**20, "machine"))
    args = [DIGITS_CONFIG, *TINY, "optim.batch_size=1024"]
    assert_train_error(cli, args, ["micro-batch of 1024 examples", "more than the machine's 64.0 MiB",
                                   "lower optim.batch_size"], tmp_path / "fresh", victim)


def test_unknown_command(cli):
    assert_user_error(cli, ["trian", "configs/x.yaml"], "invalid choice", "'trian'")


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
