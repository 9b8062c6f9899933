"""Attention weights of any loaded transformer: one head, the head average, the model-wide overview and rollout.

Attention shows where each token reads from inside the model, which is the mechanism and not an
explanation of the output; SHAP (core.explain.shap_attribution) measures which tokens changed the output.
Models are loaded with eager attention because SDPA and flash kernels never materialise the weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import plotly.graph_objects as go
import torch

from core.common.errors import InputError, PlaygroundError
from core.models.manager import LoadedModel, ModelLoadError, ModelManager, Progress
from core.models.registry import CAUSAL_LM, ENCODER, TEXT_CLASSIFICATION, find_preset
from core.models.store import CARD

DEFAULT_MAX_TOKENS = 48
OVERVIEW_MAX_CELLS = 40_000  # keeps the layers x heads mosaic light in the page (a few hundred kB)
EXPLAIN_TASKS = (TEXT_CLASSIFICATION, CAUSAL_LM, ENCODER)


class ExplainInputError(InputError):
    """Input the Explain views cannot use; the message is written for the person who gave it."""


class AttentionUnavailable(PlaygroundError):
    """The model computed no attention weights (e.g. it runs a fused SDPA/flash kernel)."""


# ---- which model, loaded how -------------------------------------------------------------------------------------
def _task_from_architectures(architectures: list[str]) -> str:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    names = set(architectures or [])
    if names & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return CAUSAL_LM
    if names & set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()):
        return TEXT_CLASSIFICATION
    return ENCODER  # any other checkpoint still has an encoder whose attention can be shown


def explain_task(manager: ModelManager, model_id: str) -> str:
    """Classifier, causal LM or plain encoder: from the preset, the playground card, or the config's architectures."""
    preset = find_preset(model_id.strip())
    if preset and preset.task in EXPLAIN_TASKS:
        return preset.task
    resolved = manager.resolve(model_id)
    card = Path(resolved.path) / CARD
    if card.is_file():
        task = json.loads(card.read_text()).get("task")
        if task in EXPLAIN_TASKS:
            return task
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolved.path)
    except Exception as err:
        raise ModelLoadError(f"Could not read the configuration of '{model_id}': {str(err).splitlines()[0][:200]}") from err
    return _task_from_architectures(getattr(config, "architectures", None) or [])


def load_for_explain(manager: ModelManager, model_id: str, progress: Progress | None = None,
                     attentions: bool = True) -> LoadedModel:
    """The model in fp32 on CPU (explanations want exact numbers, not the fastest dtype), with eager attention when
    its attention weights are to be shown (fused kernels never materialise them) and the default kernel otherwise.

    Variants built in memory by other tabs (e.g. quantized) are used as they are: they cannot be reloaded.
    """
    model_id = (model_id or "").strip()
    in_memory = next((m for m in manager.loaded() if m.model_id == model_id and m.source == "memory"), None)
    if in_memory is not None:
        return in_memory
    precision = "fp32" if manager.device.kind == "cpu" else "auto"
    return manager.load(model_id, explain_task(manager, model_id), precision=precision,
                        attn_implementation="eager" if attentions else None, progress=progress)


# ---- text in, within the token cap ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FittedText:
    text: str  # the text actually explained (cut at a token boundary when it was too long)
    n_tokens: int  # tokens of `text`, special tokens included
    original_tokens: int  # tokens of the text as given

    @property
    def truncated(self) -> bool:
        return self.original_tokens > self.n_tokens

    def notice(self) -> str | None:
        if not self.truncated:
            return None
        return (f"The text has {self.original_tokens} tokens; only the first {self.n_tokens} are explained "
                f"(raise 'Max tokens' to see more, at a higher cost).")


def fit_text(tokenizer, text: str, max_tokens: int) -> FittedText:
    """Refuse empty text and cut text longer than `max_tokens` tokens at the end of the last kept token."""
    text = (text or "").strip()
    if not text:
        raise ExplainInputError("Type a sentence to explain.")
    if max_tokens < 2:
        raise ExplainInputError("Max tokens must be at least 2.")
    full = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(full) <= max_tokens:
        return FittedText(text, len(full), len(full))
    kept = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens,
                     return_offsets_mapping=tokenizer.is_fast)
    if tokenizer.is_fast:
        cut = text[:max(end for _start, end in kept["offset_mapping"])]
    else:
        cut = tokenizer.decode(kept["input_ids"], skip_special_tokens=True)
    return FittedText(cut, len(tokenizer(cut)["input_ids"]), len(full))


def token_labels(tokenizer, text: str, encoding) -> list[str]:
    """Readable token labels: the exact text span of each token, or the special token's name."""
    ids = encoding["input_ids"][0].tolist()
    offsets = encoding["offset_mapping"][0].tolist() if "offset_mapping" in encoding else [(0, 0)] * len(ids)
    special = set(tokenizer.all_special_ids)
    labels = []
    for token_id, (start, end) in zip(ids, offsets):
        piece = text[start:end] if end > start and token_id not in special else tokenizer.convert_ids_to_tokens(token_id)
        piece = piece.strip().replace("\n", "⏎") or "␣"
        labels.append(piece)
    return labels


# ---- the weights ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionMaps:
    model_id: str
    tokens: list[str]  # one label per position, special tokens included
    weights: np.ndarray  # (layers, heads, query, key); each query row sums to 1
    causal: bool  # a causal LM: each token only sees the tokens before it
    fitted: FittedText

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def head(self, layer: int, head: int) -> np.ndarray:
        self._check(layer, head)
        return self.weights[layer, head]

    def head_average(self, layer: int) -> np.ndarray:
        self._check(layer, 0)
        return self.weights[layer].mean(axis=0)

    def rollout(self) -> np.ndarray:
        return attention_rollout(self.weights)

    def _check(self, layer: int, head: int) -> None:
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise ExplainInputError(f"This model has layers 0-{self.n_layers - 1} and heads 0-{self.n_heads - 1}; "
                                    f"got layer {layer}, head {head}.")


def attention_rollout(weights: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema (2020): average heads, add the residual path (0.5 A + 0.5 I), renormalise, multiply up the layers.

    Row i of the result says how much of position i's final representation flows from each input position.
    """
    n = weights.shape[-1]
    flow = np.eye(n)
    for layer in weights.astype(np.float64):
        mixed = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(n)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        flow = mixed @ flow
    return flow


@torch.no_grad()
def extract_attention(loaded: LoadedModel, text: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> AttentionMaps:
    """Run the model once on `text` (cut to `max_tokens`) and collect every layer's attention weights."""
    impl = getattr(loaded.model.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise AttentionUnavailable(
            f"'{loaded.model_id}' runs '{impl}' attention, which computes no attention weights to show. "
            "Pick it from the model list here so it is reloaded with eager attention, or use SHAP on it.")
    tokenizer = loaded.tokenizer
    fitted = fit_text(tokenizer, text, max_tokens)
    encoding = tokenizer(fitted.text, return_tensors="pt", return_offsets_mapping=tokenizer.is_fast)
    device = next(loaded.model.parameters()).device
    inputs = {k: v.to(device) for k, v in encoding.items() if k != "offset_mapping"}
    try:
        attentions = loaded.model(**inputs, output_attentions=True).attentions
    except (IndexError, TypeError, ValueError) as err:  # transformers fails this way when a layer returns no weights
        raise AttentionUnavailable(f"'{loaded.model_id}' returned no attention weights ({type(err).__name__}).") from err
    if not attentions or any(a is None for a in attentions):
        raise AttentionUnavailable(f"'{loaded.model_id}' returned no attention weights for this input.")
    weights = torch.stack([a[0].float() for a in attentions]).cpu().numpy()
    return AttentionMaps(loaded.model_id, token_labels(tokenizer, fitted.text, encoding), weights,
                         loaded.task == CAUSAL_LM, fitted)


# ---- figures -------------------------------------------------------------------------------------------------------
def matrix_figure(maps: AttentionMaps, matrix: np.ndarray, title: str) -> go.Figure:
    """Query tokens down, key tokens across; hovering a cell gives both tokens and the exact weight."""
    n = len(maps.tokens)
    hover = [[f"{maps.tokens[i]!r} (#{i}) attends to {maps.tokens[j]!r} (#{j})" for j in range(n)] for i in range(n)]
    shown = np.where(np.triu(np.ones((n, n), bool), 1), np.nan, matrix) if maps.causal else matrix
    fig = go.Figure(go.Heatmap(z=shown, x=list(range(n)), y=list(range(n)), text=hover, colorscale="Blues", zmin=0,
                               hovertemplate="%{text}<br>weight %{z:.4f}<extra></extra>", colorbar={"title": "weight"}))
    side = max(420, min(900, 26 * n + 160))
    fig.update_layout(title=title, height=side, plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      xaxis={"tickvals": list(range(n)), "ticktext": maps.tokens, "tickangle": -60, "side": "top",
                             "title": "attends to (key)"},
                      yaxis={"tickvals": list(range(n)), "ticktext": maps.tokens, "autorange": "reversed",
                             "title": "token (query)"})
    return fig


def _pool(matrix: np.ndarray, size: int) -> np.ndarray:
    """Block-average an n x n map down to size x size (no-op when it is already small enough)."""
    n = matrix.shape[0]
    if n <= size:
        return matrix
    edges = np.linspace(0, n, size + 1).astype(int)
    return np.array([[matrix[a:b, c:d].mean() for c, d in zip(edges[:-1], edges[1:])]
                     for a, b in zip(edges[:-1], edges[1:])])


def overview_figure(maps: AttentionMaps) -> go.Figure:
    """Small multiples of every layer x head as one heatmap mosaic (layers across, heads down), panels pooled to stay light."""
    layers, heads, n = maps.n_layers, maps.n_heads, len(maps.tokens)
    size = max(4, min(n, int(np.sqrt(OVERVIEW_MAX_CELLS / (layers * heads)))))
    cell = size + 1  # one empty row/column between panels as a gap
    mosaic = np.full((heads * cell - 1, layers * cell - 1), np.nan)
    where = np.empty(mosaic.shape, dtype=object)
    for layer in range(layers):
        for head in range(heads):
            r, c = head * cell, layer * cell
            mosaic[r:r + size, c:c + size] = _pool(maps.weights[layer, head], size)
            where[r:r + size, c:c + size] = f"layer {layer}, head {head}"
    fig = go.Figure(go.Heatmap(z=mosaic, text=where, colorscale="Blues", zmin=0, showscale=False,
                               hovertemplate="%{text}<br>weight %{z:.3f}<extra></extra>"))
    pooled = f"; each panel pooled to {size}x{size}" if size < n else ""
    # Square panels: the page is ~1300 px wide, so the height follows the heads/layers ratio.
    height = int(min(1000, max(260, 1300 * heads / layers + 110)))
    fig.update_layout(title=f"All {layers} layers (across) x {heads} heads (down){pooled}", height=height,
                      plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 70, "b": 10},
                      xaxis={"tickvals": [l * cell + size / 2 for l in range(layers)], "ticktext": [f"L{l}" for l in range(layers)],
                             "side": "top", "showgrid": False, "zeroline": False, "constrain": "domain"},
                      yaxis={"tickvals": [h * cell + size / 2 for h in range(heads)], "ticktext": [f"h{h}" for h in range(heads)],
                             "autorange": "reversed", "showgrid": False, "zeroline": False, "scaleanchor": "x",
                             "constrain": "domain"})
    return fig


# View name -> (matrix, title) for one layer and head: the Explain tab's choices, in order.
VIEW_MATRICES: dict[str, Callable[[AttentionMaps, int, int], tuple[np.ndarray, str]]] = {
    "One head": lambda maps, layer, head: (maps.head(layer, head), f"Layer {layer}, head {head}"),
    "Head average": lambda maps, layer, head: (maps.head_average(layer),
                                               f"Layer {layer}, average of {maps.n_heads} heads"),
    "Rollout": lambda maps, layer, head: (maps.rollout(), f"Attention rollout through all {maps.n_layers} layers"),
}
VIEWS = tuple(VIEW_MATRICES)


def view_figure(maps: AttentionMaps, view: str, layer: int, head: int) -> go.Figure:
    """The chosen view of the maps as a token x token heatmap."""
    if view not in VIEW_MATRICES:
        raise ExplainInputError(f"Unknown view '{view}'; choose one of {', '.join(VIEWS)}.")
    return matrix_figure(maps, *VIEW_MATRICES[view](maps, layer, head))
