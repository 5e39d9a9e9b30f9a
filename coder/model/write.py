"""Writing a model folder's description: the card (``card.json`` and ``README.md``), then the config with
every file's sha256."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from coder.hashing import file_sha256
from coder.io.atomic import write_json, write_text
from coder.model.card import write_card
from coder.model.folder import CARD_DATA_FILE, CONFIG_FILE, ModelCard, ModelConfig, folder_files, library_versions


def finalize(folder: Path, config: ModelConfig, card: ModelCard) -> ModelConfig:
    """Write the card (with the library versions writing it), then the config with the sha256 of every file
    of the folder (atomically)."""
    card = dataclasses.replace(card, versions=library_versions())
    write_json(folder / CARD_DATA_FILE, dataclasses.asdict(card))
    write_card(folder, config, card)
    config = dataclasses.replace(config, files={name: file_sha256(folder / name) for name in folder_files(folder)})
    write_text(folder / CONFIG_FILE, config.to_json())
    return config
