"""Optional dependencies (pyproject's extras), imported when a feature first needs them.

A missing one is a one-line MissingExtraError with the pip command that installs it, never an
ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from genlab.errors import MissingExtraError

#: module -> (pyproject extra, what needs it)
EXTRAS = {
    "optuna": ("sweep", "genlab sweep"),
    "wandb": ("wandb", "trainer.loggers: [wandb]"),
    "mlflow": ("mlflow", "trainer.loggers: [mlflow]"),
}


def require_extra(module: str) -> ModuleType:
    """Import an optional dependency named in EXTRAS.

    Raises:
        MissingExtraError: "genlab sweep needs optuna, which is not installed: pip install 'genlab[sweep]'
            (or pip install optuna)".
    """
    extra, feature = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{feature} needs {module}, which is not installed: pip install 'genlab[{extra}]' "
                                f"(or pip install {module})") from None
