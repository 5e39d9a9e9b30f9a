"""What the fitted candidate components share: parameters read back from ``__init__`` (the
scikit-learn habit) and a JSON state file beside their arrays."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from coder.errors import ModelBundleError, NotFittedError


class ParamsMixin:
    """``get_params``: the keyword arguments of ``__init__``, as stored on the instance, which is what
    ``sklearn.base.clone`` needs to build an unfitted copy."""

    def get_params(self, deep: bool = True) -> dict:
        """``deep`` is scikit-learn's signature: no parameter here is itself an estimator, so it changes nothing."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}


def read_state(folder: Path, name: str, *, what: str, also: tuple[str, ...] = ()) -> dict:
    """The JSON state ``folder/name`` of a saved ``what``; ``also``: files that must sit beside it."""
    missing = [file for file in (name, *also) if not (folder / file).is_file()]
    if missing:
        raise ModelBundleError(f"no {what} in {folder}: expected {', '.join(missing)}; fit and save one there")
    return json.loads((folder / name).read_text())


def check_fitted(estimator: object) -> None:
    """NotFittedError unless ``fit`` or ``load`` has set the estimator's state: an attribute whose name
    ends in ``_`` (scikit-learn's convention)."""
    if not any(name.endswith("_") and not name.startswith("_") for name in vars(estimator)):
        kind = type(estimator).__name__
        raise NotFittedError(f"{kind} is not fitted: fit it, or read a saved one with {kind}.load(path)")
