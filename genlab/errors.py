"""Typed errors. Every error a user can cause is one of these, with a one-line message
that names the problem and the fix; the CLI prints it and exits with code 2."""

import difflib


class GenlabError(Exception):
    """Base class of every error caused by user input (bad config, data, checkpoint...)."""


class ConfigError(GenlabError):
    """A config file or command-line override is malformed, has an unknown key or a bad value."""


class DataError(GenlabError):
    """A dataset cannot be loaded: unknown name, missing folder, no images, corrupt file..."""


class CheckpointError(GenlabError):
    """A run folder or checkpoint is missing, corrupt, or belongs to another model."""


class RunLockedError(GenlabError):
    """Another live process is already writing to this run folder."""


class AutogradError(GenlabError):
    """A computation that needs gradients ran where autograd records nothing (e.g. under torch.inference_mode)."""


class MissingExtraError(GenlabError):
    """An optional dependency (Optuna, wandb, MLflow) is not installed; the message gives the pip command."""


class TrainingError(GenlabError):
    """Training cannot go on: the loss or gradients stayed NaN/Inf after the guard's restores."""


def printable(name) -> str:
    """A user-given name as a message shows it: as written when printable, else its repr (one line, always)."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def did_you_mean(name: str, choices) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_name_error(kind: str, name: str, choices, cls=GenlabError) -> GenlabError:
    """Build the standard error for an unknown registry name: what, the closest match, the choices."""
    choices = sorted(str(c) for c in choices)
    return cls(f'unknown {kind} "{printable(name)}"{did_you_mean(name, choices)}; choose one of: {", ".join(choices)}')
