"""Sentence log-likelihoods under a causal LM, batched with padding and an attention mask.

A sentence is scored as lm-evaluation-harness scores a continuation with an empty context:
the first token is conditioned on the tokenizer's BOS token (EOS when there is none), and the
score is the sum of the log-probabilities of every token of the sentence.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.common.errors import InputError, StoppedError
from core.common.stopping import StopFlag

Progress = Callable[[float, str], None]



def prefix_token_id(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise InputError("the tokenizer has neither a BOS nor an EOS token to condition the first word on")
    return int(token)


def encode_sentences(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, prefixed with the conditioning token (no other special tokens)."""
    prefix = prefix_token_id(tokenizer)
    return [[prefix] + tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


@torch.no_grad()
def sentence_logprobs(model, tokenizer, texts: list[str], batch_size: int = 32, progress: Progress | None = None,
                      stop: StopFlag | None = None) -> np.ndarray:
    """Sum of token log-probabilities for each text (float64, in input order)."""
    encoded = encode_sentences(tokenizer, texts)
    order = np.argsort([len(ids) for ids in encoded], kind="stable")  # similar lengths share a batch: less padding
    device = next(model.parameters()).device
    scores = np.zeros(len(texts), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        if stop is not None and stop.stopped:
            raise StoppedError("stopped by the user")
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # right padding keeps every real token at its natural position
            ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, :len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        scores[rows] = (logprobs * mask[:, 1:]).sum(dim=1).double().cpu().numpy()
        if progress:
            done = min(start + batch_size, len(order))
            progress(done / len(order), f"Scored {done:,} of {len(order):,} sentences")
    return scores
