"""What every tab shares: the model manager, the model store and the app's settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.model_manager import ModelManager
from core.model_store import ModelStore
from core.registry import DEFAULT_CHAT_MODEL, presets


@dataclass
class Services:
    manager: ModelManager = field(default_factory=ModelManager)
    store: ModelStore = field(default_factory=ModelStore)
    default_chat_model: str = DEFAULT_CHAT_MODEL

    @property
    def offline(self) -> bool:
        return self.manager.offline

    def model_choices(self, *tasks: str) -> list[tuple[str, str]]:
        """Presets, then the user's own stored models, then in-memory variants, for a picker."""
        choices = [p.choice for t in tasks for p in presets(t)]
        choices += [m.choice for t in tasks for m in self.store.list(t)]
        seen = {value for _, value in choices}
        choices += [(f"◆ {m.model_id} (in memory)", m.model_id) for m in self.manager.loaded()
                    if m.task in tasks and m.model_id not in seen and m.source == "memory"]
        return choices
