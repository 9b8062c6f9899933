"""What every tab shares: the operator's settings, the model manager, the model store, the heavy-work queue and
the chat engines."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.chat.serving import ChatRuntimes
from core.common.readiness import Readiness, Stage
from core.common.settings import Settings
from core.common.work_queue import WorkQueue
from core.models.manager import ModelManager
from core.models.registry import CAUSAL_LM, DEFAULT_CHAT_MODEL, OFFLINE_CLASSIFIER, TEXT_CLASSIFICATION, presets
from core.models.store import ModelStore

# Which tabs open on each default model (tab names as the UI registers them).
CHAT_MODEL_TABS = ("chat", "evaluate")
CLASSIFIER_TABS = ("classify", "explain", "bias")


@dataclass
class Services:
    settings: Settings = field(default_factory=Settings)
    manager: ModelManager | None = None
    store: ModelStore = field(default_factory=ModelStore)
    default_chat_model: str = DEFAULT_CHAT_MODEL
    default_classifier: str = OFFLINE_CLASSIFIER
    work: WorkQueue | None = None
    chat: ChatRuntimes | None = None
    prepare_tabs: tuple[str, ...] = ()  # the tabs whose default models are prepared at start (none: on first use)
    readiness: Readiness | None = None

    def __post_init__(self) -> None:
        if self.manager is None:
            self.manager = ModelManager(allow_remote_code=self.settings.allow_remote_code)
        if self.work is None:
            self.work = WorkQueue(self.settings.heavy_runs_at_once, self.settings.run_seconds)
        if self.chat is None:
            self.chat = ChatRuntimes(self.manager, self.settings.chat_runtime, max_batch=self.settings.chat_batch)
        if self.readiness is None:
            self.readiness = Readiness(self.startup_stages(self.prepare_tabs))

    def startup_stages(self, tabs: tuple[str, ...]) -> list[Stage]:
        """What the given tabs need prepared, in order: the chat engine (conversion, exports, the measured runtime
        choice), then the classifier (its one-time training), each loaded so the first click answers at once."""
        stages = [Stage("chat", f"Chat model {self.default_chat_model}", CHAT_MODEL_TABS,
                        lambda progress: self.chat.serve(self.default_chat_model, progress=progress)),
                  Stage("classifier", f"Classifier {self.default_classifier}", CLASSIFIER_TABS,
                        lambda progress: self.manager.load(self.default_classifier, task=TEXT_CLASSIFICATION,
                                                           progress=progress))]
        return [s for s in stages if set(s.tabs) & set(tabs)]

    @property
    def offline(self) -> bool:
        return self.manager.offline

    def chat_models(self) -> dict[str, str]:
        """What the OpenAI-compatible API offers: id -> what to load (offline models, presets when online, models
        made here, models being served). Nothing else, so an API caller cannot make the server read other paths."""
        offered = {p.model_id: p.model_id for p in presets(CAUSAL_LM) if p.offline or not self.offline}
        offered |= {m.card.name: str(m.path) for m in self.store.list(CAUSAL_LM)}
        offered |= {s.model_id: s.model_id for s in self.chat.served()}
        offered |= {m.model_id: m.model_id for m in self.manager.loaded() if m.task == CAUSAL_LM and m.source == "memory"}
        return offered

    def model_choices(self, *tasks: str) -> list[tuple[str, str]]:
        """Presets, then the user's own stored models, then in-memory variants, for a picker."""
        choices = [p.choice for t in tasks for p in presets(t)]
        choices += [m.choice for t in tasks for m in self.store.list(t)]
        seen = {value for _, value in choices}
        choices += [(f"◆ {m.model_id} (in memory)", m.model_id) for m in self.manager.loaded()
                    if m.task in tasks and m.model_id not in seen and m.source == "memory"]
        return choices
