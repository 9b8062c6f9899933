"""How a tokenizer cuts text: pieces, ids, special tokens and counts, for one model or two side by side.

Byte-level BPE (GPT-2, SmolLM2) marks a leading space with 'Ġ', SentencePiece (LLaMA, T5) with '▁', WordPiece
(BERT, MiniLM) marks a word's continuation with '##': the view shows each piece as it covers the text, with the
tokenizer's own spelling and id on hover, and the chat template's rendering of the text as a user message.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.common.errors import InputError

MAX_CHARS = 5_000


@dataclass(frozen=True)
class Piece:
    text: str  # the stretch of the input this token covers ("" for special tokens)
    spelling: str  # the tokenizer's own spelling, e.g. 'Ġthe', '▁the', '##ing', '<|im_start|>'
    token_id: int
    special: bool


@dataclass(frozen=True)
class Tokenized:
    model_id: str
    kind: str  # e.g. "byte-level BPE", "WordPiece"
    text: str
    pieces: tuple[Piece, ...]
    template: str = ""  # the chat template's rendering of the text as a user message ("" without a template)
    template_tokens: int = 0

    @property
    def chars_per_token(self) -> float:
        words = sum(1 for p in self.pieces if not p.special)
        return len(self.text) / words if words else 0.0


def kind_of(tokenizer) -> str:
    """The tokenization algorithm, read from the fast tokenizer's model and pre-tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return type(tokenizer).__name__
    model = type(backend.model).__name__
    pre = type(backend.pre_tokenizer).__name__ if backend.pre_tokenizer else ""
    if model == "WordPiece":
        return "WordPiece"
    if "ByteLevel" in pre or "ByteLevel" in str(backend.pre_tokenizer):
        return "byte-level BPE" if model == "BPE" else f"byte-level {model}"
    if "Metaspace" in pre or "Metaspace" in str(backend.normalizer):
        return f"SentencePiece {model}"
    return model


def tokenize(tokenizer, text: str, model_id: str) -> Tokenized:
    if not text.strip():
        raise InputError("Type some text to tokenize.")
    if len(text) > MAX_CHARS:
        raise InputError(f"The text has {len(text):,} characters; the tokenizer view takes up to {MAX_CHARS:,}.")
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    spellings = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    special = set(tokenizer.all_special_ids)
    pieces = tuple(Piece("" if i in special else text[a:b], spelling, i, i in special)
                   for i, spelling, (a, b) in zip(encoded["input_ids"], spellings, encoded["offset_mapping"]))
    template, count = "", 0
    if getattr(tokenizer, "chat_template", None):
        template = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        count = len(tokenizer(template, add_special_tokens=False)["input_ids"])
    return Tokenized(model_id, kind_of(tokenizer), text, pieces, template, count)
