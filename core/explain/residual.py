"""The residual stream of a causal LM: its decoder layers, their attention and MLP blocks, the final norm and the
unembedding, found by name for GPT-2, LLaMA-family and Phi layouts; forward hooks that read or overwrite what those
modules output; and the prompt and answer checks the logit lens, patching and contrastive views share.

The loaded model is shared by every user of the app, so a hook acts only in the thread that installed it: another
user's forward pass through the same modules at the same moment goes through untouched.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from core.explain.attention import ExplainInputError, token_labels
from core.models.manager import LoadedModel
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION

RESID, ATTN, MLP = "resid", "attn", "mlp"
SITES = {RESID: "residual stream", ATTN: "attention output", MLP: "MLP output"}

_LAYER_LISTS = ("layers", "h", "blocks")  # LLaMA / Phi / Phi-3: model.layers; GPT-2: transformer.h
_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")
_BLOCK_NAMES = {ATTN: ("self_attn", "attn", "attention"), MLP: ("mlp", "feed_forward")}


@dataclass(frozen=True)
class DecoderParts:
    layers: tuple[nn.Module, ...]  # each one adds its attention and MLP outputs to the residual stream
    final_norm: nn.Module
    unembed: nn.Module  # hidden state -> vocabulary logits (tied to the input embeddings in many small models)

    def sites(self, site: str) -> tuple[nn.Module, ...]:
        """The module per layer whose output is the `site` (a decoder layer's output is the residual stream)."""
        if site == RESID:
            return self.layers
        names = _BLOCK_NAMES[site]
        found = tuple(next((getattr(layer, n) for n in names if isinstance(getattr(layer, n, None), nn.Module)), None)
                      for layer in self.layers)
        if any(m is None for m in found):
            raise ExplainInputError(f"This model's layers have no {SITES[site]} block under a name this view knows "
                                    f"({', '.join(names)}); patch the residual stream instead.")
        return found

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """What the model would output if `states` (any layer's residual stream) went straight to its final norm and
        unembedding: the logit lens. Applied to the last layer's output this is the model's own output."""
        return self.unembed(self.final_norm(states)).float()


def decoder_parts(model: nn.Module) -> DecoderParts:
    base = getattr(model, "base_model", model)
    layers = next((getattr(base, n) for n in _LAYER_LISTS if isinstance(getattr(base, n, None), nn.ModuleList)), None)
    norm = next((getattr(base, n) for n in _FINAL_NORMS if isinstance(getattr(base, n, None), nn.Module)), None)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if layers is None or norm is None or unembed is None:
        raise ExplainInputError(f"'{type(model).__name__}' keeps its layers, final norm or unembedding under names this "
                                "view does not know; it reads GPT-2, LLaMA-family and Phi layouts.")
    return DecoderParts(tuple(layers), norm, unembed)


def _hidden(output) -> torch.Tensor:
    """Decoder layers and MLPs return a tensor; attention blocks return (output, weights)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def hooked(modules: Sequence[nn.Module], fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call fn(i, output) on the output of modules[i] during forward passes of this thread; fn may read it or change
    it in place (the change then flows on through the rest of the model)."""
    owner = threading.get_ident()

    def make(i: int):
        def hook(_module, _args, output):
            if threading.get_ident() == owner:
                fn(i, _hidden(output))
        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class LayerCall:
    """What one decoder layer was called with in a forward pass: its input hidden states, then the masks and position
    embeddings the model built for it. Calling the layer again with other hidden states restarts the model there."""
    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.args:
            return _hidden(layer(hidden, *self.args[1:], **self.kwargs))
        return _hidden(layer(**{**self.kwargs, "hidden_states": hidden}))


@contextmanager
def calls_recorded(layers: Sequence[nn.Module], into: dict[int, LayerCall]) -> Iterator[None]:
    """Fill `into[i]` with what layers[i] is called with during forward passes of this thread."""
    owner = threading.get_ident()

    def make(i: int):
        def hook(_module, args, kwargs):
            if threading.get_ident() == owner:
                into[i] = LayerCall(tuple(args), dict(kwargs))
        return hook

    handles = [m.register_forward_pre_hook(make(i), with_kwargs=True) for i, m in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_device(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


# ---- what the views check before running ----------------------------------------------------------------------------
def require_causal_lm(loaded: LoadedModel, view: str) -> DecoderParts:
    if loaded.task != CAUSAL_LM:
        kind = "a text classifier" if loaded.task == TEXT_CLASSIFICATION else "not a language model"
        raise ExplainInputError(f"{view} reads a language model's next-token predictions; '{loaded.model_id}' is {kind}. "
                                "Pick a causal LM such as SmolLM2, GPT-2 or Phi.")
    return decoder_parts(loaded.model)


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]
    labels: list[str]  # one readable label per token

    def tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.ids], device=device)


def encode_prompt(loaded: LoadedModel, text: str, max_tokens: int, field: str = "prompt") -> Prompt:
    """The prompt's tokens, or a message naming the field when it is empty or longer than the view can show."""
    text = (text or "").strip()
    if not text:
        raise ExplainInputError(f"Type a {field}.")
    tokenizer = loaded.tokenizer
    encoding = tokenizer(text, return_tensors="pt", return_offsets_mapping=tokenizer.is_fast)
    ids = encoding["input_ids"][0].tolist()
    limit = min(max_tokens, getattr(loaded.model.config, "max_position_embeddings", max_tokens) or max_tokens)
    if len(ids) > limit:
        raise ExplainInputError(f"The {field} has {len(ids)} tokens; this view takes at most {limit} (one column per "
                                "token, and the cost grows with each). Shorten it.")
    return Prompt(text, ids, token_labels(tokenizer, text, encoding))


def continuation_text(prompt: str, text: str) -> str:
    """A word as the model would write it after the prompt: with a space before it unless either side has one."""
    if text and not text[0].isspace() and prompt and not prompt[-1].isspace():
        return " " + text
    return text


@dataclass(frozen=True)
class Answer:
    text: str  # as scored, e.g. " Paris"
    token_id: int

    @property
    def label(self) -> str:
        return repr(self.text)


def answer_pieces(loaded: LoadedModel, prompt: str, text: str) -> tuple[str, list[int]]:
    """The answer as it would follow the prompt, and its token ids."""
    text = continuation_text(prompt, (text or "").rstrip())
    return text, loaded.tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []


def one_token_answer(loaded: LoadedModel, prompt: str, text: str, field: str) -> Answer:
    """The answer's single token id, or a message naming the field when it is empty or more than one token."""
    text, ids = answer_pieces(loaded, prompt, text)
    if not ids:
        raise ExplainInputError(f"Type the {field} (one word, e.g. Paris).")
    if len(ids) > 1:
        pieces = " + ".join(repr(loaded.tokenizer.decode([i])) for i in ids)
        raise ExplainInputError(f"The {field} {text!r} is {len(ids)} tokens for this model ({pieces}); this view compares "
                                f"the scores of one next token. Use a one-token word, or its first piece "
                                f"{loaded.tokenizer.decode([ids[0]])!r}.")
    return Answer(text, ids[0])
