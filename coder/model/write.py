"""Writing a model folder's description: the card, then the config with every file's sha256."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coder.hashing import file_sha256
from coder.io.atomic import write_text
from coder.model.card import write_card
from coder.model.folder import CONFIG_FILE, ModelConfig, folder_files, library_versions


def finalize(folder: Path, config: ModelConfig) -> ModelConfig:
    """Write the card, then the config with the sha256 of every file of the folder (atomically)."""
    write_card(folder, config)
    files = {name: file_sha256(folder / name) for name in folder_files(folder)}
    config = dataclasses.replace(config, files=files, versions=library_versions())
    write_text(folder / CONFIG_FILE, config.to_json())
    return config
