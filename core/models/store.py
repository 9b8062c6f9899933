"""Local store of models made in the playground (fine-tuned, quantized): folders with a card."""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.common.json_cache import read_json, write_json
from core.models.paths import cache_dir

CARD = "playground_card.json"


@dataclass
class ModelCard:
    name: str
    task: str  # a core.models.registry task
    base_model: str
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    data_hash: str = ""
    hyperparameters: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    notes: str = ""


@dataclass(frozen=True)
class StoredModel:
    path: Path
    card: ModelCard

    @property
    def choice(self) -> tuple[str, str]:
        # The base's last name only: a picker selects the first label containing what was typed, so a label
        # holding a whole folder path or hub id would capture a user typing that path or id.
        base = self.card.base_model.rstrip("/").rsplit("/", 1)[-1]
        return (f"★ {self.card.name} (fine-tuned from {base})", str(self.path))


class ModelStore:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir() / "models"
        self.root.mkdir(parents=True, exist_ok=True)

    def new_folder(self, name: str) -> Path:
        """A fresh folder for a model named `name` (made filesystem-safe, never overwriting)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"
        folder, n = self.root / safe, 1
        while folder.exists():
            n += 1
            folder = self.root / f"{safe}-{n}"
        folder.mkdir(parents=True)
        return folder

    @staticmethod
    def write_card(folder: Path, card: ModelCard) -> None:
        write_json(Path(folder) / CARD, asdict(card))

    def list(self, task: str | None = None) -> list[StoredModel]:
        models = []
        for card_file in sorted(self.root.glob(f"*/{CARD}")):
            try:
                card = ModelCard(**read_json(card_file))
            except TypeError:
                continue  # a half-written or foreign card: not offered
            if task is None or card.task == task:
                models.append(StoredModel(card_file.parent, card))
        return models
