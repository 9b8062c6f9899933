"""Lesson links and files in the page: opening `/?lesson=temperature` (or `/?tab=chat&temperature=1.2&...`) presets
the tabs and controls and locks some; the Lessons menu opens a shipped lesson with one click; "Share this setup"
gives the link for what is on screen, in whichever Chat view it is. Layout and wiring only: core.lessons.links
checks every value."""
from __future__ import annotations

from dataclasses import asdict

import gradio as gr

from core.chat.sampling import SamplingSettings
from core.explain.examples import DEFAULT_EXAMPLE
from core.lessons.links import SETTINGS, Lesson, from_query, library, share_link
from ui.explain_inside import example_values

# Where a lesson's prompt goes, by lesson tab.
PROMPT_TARGET = {"chat": "message", "sampling": "message", "compare": "compare_prompt", "tokenizer": "tokenizer_text"}
# The Chat tab's views in the order ui.chat_tab builds them (a Tabs select event gives the index), and the lesson
# tab that opens each again.
CHAT_VIEWS = ("conversation", "compare", "sampling", "tokenizer")
VIEW_TABS = {"conversation": "chat", "compare": "compare", "sampling": "sampling", "tokenizer": "tokenizer"}
COMPARE_FIELDS = tuple(f"compare_{what}_{side}" for side in ("a", "b") for what in ("model", "precision",
                                                                                    "temperature", "seed"))


def notes_slot(tab: str) -> gr.Markdown:
    """Where a lesson's title and teacher's notes show, at the top of the tab the lesson opens."""
    return gr.Markdown(visible=False, elem_id=f"lesson-notes-{tab}", elem_classes="lesson-notes")


def notes_markdown(lesson: Lesson) -> str:
    lines = [f"### 📘 {lesson.title}" if lesson.title else "### 📘 Lesson"]
    if lesson.notes:
        lines.append(f"*For the teacher:* {lesson.notes}")
    lines += [f"⚠️ {m}" for m in lesson.messages]
    return "\n\n".join(lines)


def lesson_updates(shell, lesson: Lesson | None) -> dict:
    """Component -> update for every preset, lock and note of the lesson (nothing for a plain page)."""
    if lesson is None:
        return {}
    updates = {shell.tabs: gr.Tabs(selected=lesson.top_tab)} if lesson.top_tab in shell.components else {}
    for tab, slot in shell.notes.items():  # the notes go with the lesson, into the tab it opens
        updates[slot] = gr.update(value=notes_markdown(lesson), visible=tab == lesson.top_tab)
    chat = shell.components.get("chat", {})
    if chat:
        updates |= chat_updates(chat, lesson, shell.services.default_chat_model)
    explain = shell.components.get("explain", {})
    if explain and lesson.top_tab == "explain":
        updates[explain["views"]] = gr.Tabs(selected=lesson.sub_tab or "explain_attention_view")
        if lesson.example:
            updates |= example_values(explain, lesson.example)
        if lesson.model:
            updates[explain["model"]] = lesson.model
        if lesson.prompt:
            updates[explain["text"]] = lesson.prompt
    bias = shell.components.get("bias", {})
    if bias and lesson.tab == "bias" and lesson.model:
        updates[bias["lm"]] = lesson.model
    return updates


def chat_updates(chat: dict, lesson: Lesson, default_model: str) -> dict:
    """The Chat tab's view, sidebar settings and both sides of Compare, as the lesson sets them."""
    view = lesson.sub_tab if lesson.top_tab == "chat" and lesson.sub_tab else "conversation"
    updates = {chat["views"]: gr.Tabs(selected=view), chat["view"]: view}
    settings = asdict(lesson.settings)
    for name in SETTINGS:
        updates[chat[name]] = gr.update(value=-1 if name == "seed" and settings[name] is None else settings[name],
                                        interactive=name not in lesson.lock)
    updates[chat["system"]] = gr.update(value=lesson.system or chat["system"].value,
                                        interactive="system" not in lesson.lock)
    model = lesson.model or default_model
    for key in ("model", "compare_model_a", "compare_model_b", "tokenizer_a"):
        updates[chat[key]] = gr.update(value=model, interactive="model" not in lesson.lock)
    if lesson.prompt and lesson.tab in PROMPT_TARGET:
        updates[chat[PROMPT_TARGET[lesson.tab]]] = lesson.prompt
    updates[chat["compare_temperature_a"]] = settings["temperature"]
    if settings["seed"] is not None:  # a comparison of settings draws with the same seed on both sides
        updates[chat["compare_seed_a"]] = updates[chat["compare_seed_b"]] = settings["seed"]
    if lesson.tab == "compare":
        updates[chat["compare_tokens"]] = settings["max_new_tokens"]
    side_b = {"compare_model_b": lesson.model_b, "compare_precision_a": lesson.precision_a,
              "compare_precision_b": lesson.precision_b, "compare_temperature_b": lesson.temperature_b,
              "compare_seed_b": lesson.seed_b}
    for key, value in side_b.items():
        if value not in ("", None):
            updates[chat[key]] = (gr.update(value=value, interactive="model" not in lesson.lock)
                                  if key == "compare_model_b" else value)
    return updates


def wire(shell, demo: gr.Blocks, picker: gr.Dropdown, open_button: gr.Button) -> None:
    chat = shell.components.get("chat", {})
    if chat:
        chat["view"] = gr.State("conversation")  # the Chat view on screen, for Share this setup
        chat["views"].select(view_selected, None, chat["view"], api_visibility="private")
    chat_keys = ("views", "view", "system", "model", "tokenizer_a", "compare_tokens", *COMPARE_FIELDS, *SETTINGS,
                 *PROMPT_TARGET.values())
    targets = [shell.tabs, *shell.notes.values(), *dict.fromkeys(chat[k] for k in chat_keys if k in chat)]
    targets += [shell.components[t][k] for t, k in (("explain", "model"), ("explain", "views"), ("bias", "lm"))
                if t in shell.components]
    if "explain" in shell.components:  # an example pair fills the prompt and the lens, patching and contrast fields
        targets += list(example_values(shell.components["explain"], DEFAULT_EXAMPLE))
    cap = shell.services.settings.max_new_tokens

    def on_load(request: gr.Request):
        return lesson_updates(shell, from_query(dict(request.query_params), cap)) or [gr.skip()] * len(targets)

    def on_open(name: str):
        return lesson_updates(shell, from_query({"lesson": name or ""}, cap))

    demo.load(on_load, None, targets, api_visibility="private")
    open_button.click(on_open, picker, targets, api_name="open_lesson")
    if chat:
        keys = ("view", "model", "message", "system", *SETTINGS, "compare_prompt", "compare_tokens", *COMPARE_FIELDS,
                "tokenizer_text")
        chat["share"].click(share, inputs_kwargs={"session": chat["session"], **{k: chat[k] for k in keys}},
                            outputs=chat["share_link"], api_name="share_setup")


def view_selected(event: gr.SelectData) -> str:
    return CHAT_VIEWS[event.index]


def _seed(value) -> int | None:
    return None if value is None or value < 0 else int(value)


def _named(precision: str | None) -> str:
    """A precision asked for by name ("auto", the measured choice, is the default)."""
    return "" if precision in (None, "auto") else precision


def setup_on_screen(session, view: str, values: dict) -> Lesson:
    """The Chat tab's setup as the named form values hold it, for the view on screen: the conversation (or the
    Sampling view) with its prompt (the box, or the last message sent), Compare with both sides, or the Tokenizer."""
    settings = {name: values[name] for name in SETTINGS} | {"seed": _seed(values["seed"])}
    prompt = values["message"] or (session.exchanges[-1].user if session.exchanges else "")
    tab = VIEW_TABS.get(view, "chat")
    if tab == "tokenizer":
        return Lesson(tab, values["model"], values["tokenizer_text"], values["system"], SamplingSettings(**settings))
    if tab != "compare":
        return Lesson(tab, values["model"], prompt, values["system"], SamplingSettings(**settings))
    side_a = {"temperature": values["compare_temperature_a"], "seed": _seed(values["compare_seed_a"]),
              "max_new_tokens": values["compare_tokens"]}
    model_b = values["compare_model_b"]
    return Lesson(tab, values["compare_model_a"], values["compare_prompt"], values["system"],
                  SamplingSettings(**settings | side_a), precision_a=_named(values["compare_precision_a"]),
                  model_b="" if model_b == values["compare_model_a"] else model_b,
                  precision_b=_named(values["compare_precision_b"]), temperature_b=values["compare_temperature_b"],
                  seed_b=_seed(values["compare_seed_b"]))


def share(session, request: gr.Request, **values):
    """The link to the Chat tab as it is now, in the view on screen."""
    headers = request.headers
    scheme = headers.get("x-forwarded-proto") or request.request.url.scheme
    host = headers.get("x-forwarded-host") or headers.get("host", "127.0.0.1:7860")
    setup = setup_on_screen(session, values.pop("view"), values)
    return gr.update(value=share_link(f"{scheme}://{host}", setup), visible=True)


def lesson_menu() -> tuple[gr.Dropdown, gr.Button]:
    """The header's Lessons menu: every lesson that ships with the app, opened with one click."""
    lessons = library()
    with gr.Row(equal_height=True):
        picker = gr.Dropdown([(lesson.title, name) for name, lesson in lessons.items()], value=None, label="Lessons",
                             info="Open a ready setup for a class (or share its link: /?lesson=<name>)", scale=4)
        button = gr.Button("Open lesson", scale=1, min_width=120)
    return picker, button
