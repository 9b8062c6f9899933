"""Turn a conversation into the token ids a causal LM continues, within its context window.

Instruct models get their tokenizer's chat template with a system prompt; base models (GPT-2,
phi-2) get a plain "User:/Assistant:" transcript that the UI shows, so a class can see what a
base model is really asked to continue. History that does not fit is dropped from the oldest
turn and an overlong message is cut, each with a notice for the user.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and briefly."
MAX_MESSAGE_CHARS = 16_000  # longer messages are cut before tokenizing (a 100k paste would stall the CPU)
FALLBACK_CONTEXT = 2048  # for configs that do not state their window
CHAT_TEMPLATE = "chat template"
PLAIN = "plain continuation"
USER, ASSISTANT = "User:", "Assistant:"


@dataclass(frozen=True)
class Turn:
    user: str
    reply: str


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    text: str  # exactly what the model sees, for the "prompt sent" panel
    format: str  # CHAT_TEMPLATE | PLAIN
    stop_strings: tuple[str, ...]  # plain transcripts end a reply where the model starts the next user line
    message: str  # the user message as sent (after any cut)
    dropped_turns: int = 0
    notices: list[str] = field(default_factory=list)


def context_length(model, tokenizer=None) -> int:
    """Positions the model can attend to, from its config (tokenizers often say 1e30)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else FALLBACK_CONTEXT


def cut_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> tuple[str, list[str]]:
    if len(message) <= limit:
        return message, []
    return message[:limit], [f"Your message had {len(message):,} characters; only the first {limit:,} were sent."]


def plain_transcript(system: str, history: list[Turn], message: str) -> str:
    """The visible format for base models: a transcript the model continues after 'Assistant:'."""
    lines = [system.strip(), ""] if system.strip() else []
    for turn in history:
        lines += [f"{USER} {turn.user}", f"{ASSISTANT} {turn.reply}"]
    lines += [f"{USER} {message}", ASSISTANT]
    return "\n".join(lines)


_MARK = "\u2063SYSTEM\u2063"  # a system text no template writes on its own


def template_system_default(tokenizer) -> str | None:
    """The system prompt a chat template writes by itself when the conversation has none (SmolLM2's writes "You are
    a helpful AI assistant named SmolLM, trained by Hugging Face"), or None when it writes none."""
    user = [{"role": "user", "content": "Hi"}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        marked = tokenizer.apply_chat_template([{"role": "system", "content": _MARK}] + user, tokenize=False)
    except Exception:  # a template without a system role writes no default either
        return None
    before, _, after = marked.partition(_MARK)
    if not after or not bare.startswith(before) or not bare.endswith(after):
        return None
    default = bare[len(before):len(bare) - len(after)]
    return default.strip() or None


def _template_text(tokenizer, system: str | None, history: list[Turn], message: str) -> str:
    """`system` None: an empty system turn, so the template writes none of its own (a real "no system prompt")."""
    messages = [m for t in history for m in ({"role": "user", "content": t.user},
                                             {"role": "assistant", "content": t.reply})]
    messages.append({"role": "user", "content": message})
    if system is None:
        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": ""}] + messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # a template without a system role: nothing to leave out
            system = ""
    if system.strip():
        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": system}] + messages,
                                                 tokenize=False, add_generation_prompt=True)
        except Exception:  # some templates (e.g. Gemma's) refuse a system role: fold it into the first message
            first = messages[0]
            messages[0] = {"role": "user", "content": f"{system}\n\n{first['content']}"}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _render(tokenizer, use_template: bool, system: str | None, history: list[Turn], message: str
            ) -> tuple[str, list[int]]:
    if use_template:
        text = _template_text(tokenizer, system, history, message)
        # The template already wrote any BOS token it wants; adding specials again would double it.
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    text = plain_transcript(system or "", history, message)
    return text, tokenizer(text)["input_ids"]


def build_prompt(tokenizer, history: list[Turn], message: str, *, use_template: bool,
                 system: str | None = DEFAULT_SYSTEM_PROMPT, context: int = FALLBACK_CONTEXT,
                 max_new_tokens: int = 256) -> Prompt:
    """Fit system + history + message into `context` minus room for the reply, oldest turns first out. `system`
    "" lets the chat template write its own default (if it has one: the notices say so); None sends none at all."""
    message, notices = cut_message(message)
    default = template_system_default(tokenizer) if use_template and system is not None and not system.strip() else None
    if default:
        notices.append(f"The system prompt is empty, so the model's chat template writes its own: “{default}”. "
                       "Tick “No system prompt” to send none at all.")
    budget = context - min(max_new_tokens, context // 2)
    history = list(history)
    text, ids = _render(tokenizer, use_template, system, history, message)
    dropped = 0
    while len(ids) > budget and history:
        history.pop(0)
        dropped += 1
        text, ids = _render(tokenizer, use_template, system, history, message)
    if dropped:
        notices.append(f"The conversation was longer than the model's {context:,}-token window: the oldest "
                       f"{dropped} turn{'s' if dropped > 1 else ''} {'were' if dropped > 1 else 'was'} left out.")
    if len(ids) > budget:
        message, text, ids = _shorten_message(tokenizer, use_template, system, message, budget)
        notices.append(f"Your message is longer than the model's {context:,}-token window allows: it was cut to "
                       f"{len(message):,} characters.")
    return Prompt(ids, text, CHAT_TEMPLATE if use_template else PLAIN, () if use_template else (f"\n{USER}",),
                  message, dropped, notices)


def _shorten_message(tokenizer, use_template: bool, system: str | None, message: str, budget: int
                     ) -> tuple[str, str, list[int]]:
    """Keep the start of the message, as many tokens as fit in `budget` with the system prompt around it."""
    message_ids = tokenizer(message, add_special_tokens=False)["input_ids"]
    keep = max(0, budget - len(_render(tokenizer, use_template, system, [], "")[1]))
    while True:
        short = tokenizer.decode(message_ids[:keep], skip_special_tokens=True)
        text, ids = _render(tokenizer, use_template, system, [], short)
        if len(ids) <= budget or keep == 0:  # re-tokenizing the cut text can merge differently: retry shorter
            return short, text, ids
        keep = max(0, keep - (len(ids) - budget))
