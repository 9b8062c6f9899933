"""Logit lens (nostalgebraist, 2020): what a causal LM would predict if it stopped after each layer.

Each layer's output (the residual stream at every position) goes through the model's own final norm and
unembedding. After the last layer that is exactly the model's output. Earlier layers were never trained to be read
this way, so their guesses are a view and not a measurement: early rows often show the input token or noise, and the
tuned lens (Belrose et al., 2023) trains a small translator per layer for that reason (not done here).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from core.explain.attention import ExplainInputError
from core.explain.residual import (
    DecoderParts,
    Prompt,
    answer_pieces,
    LayerCall,
    calls_recorded,
    encode_prompt,
    hooked,
    model_device,
    require_causal_lm,
)
from core.models.manager import LoadedModel

LENS_MAX_TOKENS = 64
TOP_K = 10
MAX_FOLLOWED = 5
_CHUNK = 512  # (layer, position) states unembedded at once: bounds the vocabulary-wide logits in memory


@dataclass(frozen=True)
class Track:
    """One token watched through the layers at every position."""
    label: str
    rank: np.ndarray  # (rows, positions): 1 = the lens's top guess
    prob: np.ndarray  # (rows, positions)


@dataclass(frozen=True)
class LensResult:
    model_id: str
    prompt: Prompt
    row_names: list[str]  # "embeddings", then "layer 0" ... "layer N-1" (their outputs); the last is the model's output
    top_ids: np.ndarray  # (rows, positions, TOP_K) the lens's best next-token guesses, best first
    top_probs: np.ndarray  # (rows, positions, TOP_K)
    top_tokens: list[list[list[str]]]  # the decoded text of top_ids
    entropy: np.ndarray  # (rows, positions) in bits
    predicted: list[str]  # per position, the model's own next token (the output's top-1)
    prediction: Track  # that token's rank and probability at each layer
    followed: tuple[Track, ...]  # tokens the user asked to watch
    notices: tuple[str, ...]
    seconds: float

    @property
    def n_rows(self) -> int:
        return len(self.row_names)

    @property
    def n_positions(self) -> int:
        return len(self.prompt.ids)

    def check_cell(self, row: int, position: int) -> None:
        if not (0 <= row < self.n_rows and 0 <= position < self.n_positions):
            raise ExplainInputError(f"The lens has rows 0-{self.n_rows - 1} (0 = embeddings) and positions "
                                    f"0-{self.n_positions - 1}; got row {row}, position {position}.")

    def top(self, row: int, position: int) -> list[tuple[str, float, int]]:
        """(token text, probability, id) of the lens's top-10 at one cell, best first."""
        self.check_cell(row, position)
        return [(self.top_tokens[row][position][k], float(self.top_probs[row, position, k]),
                 int(self.top_ids[row, position, k])) for k in range(self.top_ids.shape[-1])]

    def settles_at(self, position: int) -> int:
        """The first row from which the model's own prediction stays the lens's top guess up to the output."""
        off_top = np.nonzero(self.prediction.rank[:, position] != 1)[0]
        return int(off_top[-1]) + 1 if len(off_top) else 0


def residual_states(model: torch.nn.Module, parts: DecoderParts, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions, hidden): the embeddings then each layer's output for one prompt; and the model's logits."""
    first: dict[int, LayerCall] = {}
    outputs: list[torch.Tensor | None] = [None] * len(parts.layers)

    def record(i: int, hidden: torch.Tensor) -> None:
        outputs[i] = hidden[0].detach().clone()

    with torch.no_grad(), calls_recorded(parts.layers[:1], first), hooked(parts.layers, record):
        logits = model(input_ids=input_ids, use_cache=False).logits[0].float()
    return torch.stack([first[0].hidden[0], *outputs]), logits


def _followed(loaded: LoadedModel, prompt: str, words: str) -> tuple[list[tuple[str, int]], list[str]]:
    """The comma-separated words to watch, each as its first token after the prompt (with a notice when cut)."""
    chosen, notices = [], []
    for word in [w.strip() for w in (words or "").split(",") if w.strip()][:MAX_FOLLOWED]:
        text, ids = answer_pieces(loaded, prompt, word)
        first = loaded.tokenizer.decode([ids[0]])
        if len(ids) > 1:
            notices.append(f"{text!r} is {len(ids)} tokens for this model; its first token {first!r} is followed.")
        chosen.append((first, ids[0]))
    return chosen, notices


def logit_lens(loaded: LoadedModel, prompt: str, follow: str = "") -> LensResult:
    """The lens at every layer and position of `prompt`, with the model's prediction and the `follow` words tracked."""
    start = time.perf_counter()
    parts = require_causal_lm(loaded, "The logit lens")
    encoded = encode_prompt(loaded, prompt, LENS_MAX_TOKENS)
    watched, notices = _followed(loaded, encoded.text, follow)
    states, logits = residual_states(loaded.model, parts, encoded.tensor(model_device(loaded)))
    rows, positions = states.shape[:2]
    predicted = logits.argmax(-1)  # (positions,) the model's own next token at each position
    tracked = torch.stack([predicted, *(torch.full_like(predicted, t) for _, t in watched)])  # (1 + watched, positions)
    flat = states.reshape(rows * positions, -1)
    top_p, top_i, entropy, ranks, probs = [], [], [], [], []
    with torch.no_grad():
        for begin in range(0, len(flat), _CHUNK):
            lens_logits = parts.logits(flat[begin:begin + _CHUNK])
            log_p = torch.log_softmax(lens_logits, -1)
            best = log_p.topk(TOP_K, -1)
            top_p.append(best.values.exp())
            top_i.append(best.indices)
            entropy.append(-(log_p.exp() * log_p).sum(-1) / math.log(2))
            which = tracked[:, torch.arange(begin, begin + len(lens_logits), device=tracked.device) % positions].T
            chosen = lens_logits.gather(1, which)  # (chunk, 1 + watched)
            # (an int32 sum: summing booleans into int64 costs twice as long, and this is the lens's second cost)
            ranks.append((lens_logits[:, None, :] > chosen[:, :, None]).sum(-1, dtype=torch.int32) + 1)
            probs.append(log_p.gather(1, which).exp())
    shape = (rows, positions)
    top_ids = torch.cat(top_i).reshape(*shape, TOP_K).cpu().numpy()
    rank = torch.cat(ranks).reshape(*shape, -1).cpu().numpy()
    prob = torch.cat(probs).reshape(*shape, -1).cpu().numpy()
    vocab = {i: loaded.tokenizer.decode([i]) for i in set(top_ids.ravel().tolist()) | set(predicted.tolist())}
    tracks = tuple(Track(text, rank[..., k + 1], prob[..., k + 1]) for k, (text, _id) in enumerate(watched))
    return LensResult(loaded.model_id, encoded, ["embeddings"] + [f"layer {i}" for i in range(rows - 1)], top_ids,
                      torch.cat(top_p).reshape(*shape, TOP_K).cpu().numpy(),
                      [[[vocab[i] for i in cell] for cell in row] for row in top_ids.tolist()],
                      torch.cat(entropy).reshape(shape).cpu().numpy(), [vocab[i] for i in predicted.tolist()],
                      Track("the model's prediction", rank[..., 0], prob[..., 0]), tracks, tuple(notices),
                      time.perf_counter() - start)
