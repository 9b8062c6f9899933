"""Lesson links and files in the page: opening `/?lesson=temperature` (or `/?tab=chat&temperature=1.2&...`) presets
the tabs and controls and locks some; the Lessons menu opens a shipped lesson with one click; "Share this setup"
gives the link for what is on screen. Layout and wiring only: core.lessons.links checks every value."""
from __future__ import annotations

from dataclasses import asdict

import gradio as gr

from core.chat.sampling import SamplingSettings
from core.explain.examples import DEFAULT_EXAMPLE
from core.lessons.links import SETTINGS, Lesson, from_query, library, share_link
from ui.explain_inside import example_values

# Where a lesson's prompt goes, by lesson tab.
PROMPT_TARGET = {"chat": "message", "sampling": "message", "compare": "compare_prompt", "tokenizer": "tokenizer_text"}


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
    chat = shell.components.get("chat", {})
    updates = {shell.tabs: gr.Tabs(selected=lesson.top_tab)} if lesson.top_tab in shell.components else {}
    if chat:
        updates[chat["views"]] = gr.Tabs(selected=lesson.sub_tab if lesson.top_tab == "chat" and lesson.sub_tab
                                         else "conversation")
        updates[chat["lesson"]] = gr.update(value=notes_markdown(lesson), visible=True)
        settings = asdict(lesson.settings)
        for name in SETTINGS:
            updates[chat[name]] = gr.update(value=-1 if name == "seed" and settings[name] is None else settings[name],
                                            interactive=name not in lesson.lock)
        updates[chat["system"]] = gr.update(value=lesson.system or chat["system"].value,
                                            interactive="system" not in lesson.lock)
        model = lesson.model or shell.services.default_chat_model
        for key in ("model", "compare_model_a", "compare_model_b", "tokenizer_a"):
            updates[chat[key]] = gr.update(value=model, interactive="model" not in lesson.lock)
        if lesson.prompt and lesson.tab in PROMPT_TARGET:
            updates[chat[PROMPT_TARGET[lesson.tab]]] = lesson.prompt
        updates[chat["compare_temperature_a"]] = settings["temperature"]
        if settings["seed"] is not None:  # a comparison of settings draws with the same seed on both sides
            updates[chat["compare_seed_a"]] = updates[chat["compare_seed_b"]] = settings["seed"]
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


def wire(shell, demo: gr.Blocks, picker: gr.Dropdown, open_button: gr.Button) -> None:
    chat = shell.components.get("chat", {})
    chat_keys = ("views", "lesson", "system", "model", "compare_model_a", "compare_model_b", "tokenizer_a",
                 "compare_temperature_a", "compare_seed_a", "compare_seed_b", *SETTINGS, *PROMPT_TARGET.values())
    targets = [shell.tabs, *dict.fromkeys(chat[k] for k in chat_keys if k in chat)]
    targets += [shell.components[t][k] for t, k in (("explain", "model"), ("explain", "views"), ("bias", "lm"))
                if t in shell.components]
    if "explain" in shell.components:  # an example pair fills the prompt and the lens, patching and contrast fields
        targets += list(example_values(shell.components["explain"], DEFAULT_EXAMPLE))

    def on_load(request: gr.Request):
        return lesson_updates(shell, from_query(dict(request.query_params))) or [gr.skip()] * len(targets)

    def on_open(name: str):
        return lesson_updates(shell, from_query({"lesson": name or ""}))

    demo.load(on_load, None, targets, api_visibility="private")
    open_button.click(on_open, picker, targets, api_name="open_lesson")
    if chat:
        share_inputs = [chat["views"], chat["model"], chat["message"], chat["system"], *(chat[n] for n in SETTINGS)]
        chat["share"].click(share, [chat["session"], *share_inputs[1:]], chat["share_link"], api_name="share_setup")


def share(session, model: str, message: str, system: str, temperature, top_k, top_p, min_p, repetition_penalty,
          max_new_tokens, seed, request: gr.Request):
    """The link to the Chat tab as it is now: model, prompt (the box, or the last message sent) and settings."""
    prompt = message or (session.exchanges[-1].user if session.exchanges else "")
    settings = SamplingSettings(temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens,
                                None if seed is None or seed < 0 else seed)
    headers = request.headers
    scheme = headers.get("x-forwarded-proto") or request.request.url.scheme
    host = headers.get("x-forwarded-host") or headers.get("host", "127.0.0.1:7860")
    return gr.update(value=share_link(f"{scheme}://{host}", "chat", model, prompt, system, settings), visible=True)


def lesson_menu() -> tuple[gr.Dropdown, gr.Button]:
    """The header's Lessons menu: every lesson that ships with the app, opened with one click."""
    lessons = library()
    with gr.Row(equal_height=True):
        picker = gr.Dropdown([(lesson.title, name) for name, lesson in lessons.items()], value=None, label="Lessons",
                             info="Open a ready setup for a class (or share its link: /?lesson=<name>)", scale=4)
        button = gr.Button("Open lesson", scale=1, min_width=120)
    return picker, button

