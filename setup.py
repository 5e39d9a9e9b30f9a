"""Ships the model folders of models/ in the wheel, under <prefix>/share/coder/models/ (where
``coder.model.folder.default_model_path`` finds the default model after a non-editable install).

Only the files a folder's coder_model.json lists (and the config itself) are shipped, and only those
present: an ONNX variant left out of git is not in a wheel built from a clean clone either.
"""

import json
from pathlib import Path

from setuptools import setup

CONFIG = "coder_model.json"


def model_data_files() -> list[tuple[str, list[str]]]:
    """(install folder, [files]) for every file of every model folder under models/."""
    folders: dict[str, list[str]] = {}
    for config in sorted(Path("models").glob(f"*/{CONFIG}")):
        names = [CONFIG, *json.loads(config.read_text(encoding="utf-8"))["files"]]
        for path in (config.parent / name for name in names):
            if path.is_file():
                folders.setdefault(f"share/coder/{path.parent.as_posix()}", []).append(path.as_posix())
    return sorted(folders.items())


setup(data_files=model_data_files())
