"""Contrastive attribution: why the next token is ' Paris' and not ' London' (Yin & Neubig, 2022; inseq's contrast).

Each prompt token gets a score for its effect on log p(target) − log p(foil), which is also the logit difference
(the softmax's normaliser cancels). Two methods, both linear in what they explain, so the difference's attribution
is exactly the target's minus the foil's:
- gradient × input: d(difference)/d(token embedding) · token embedding, from one forward and backward pass;
- SHAP: the Partition explainer of core.explain.shap_attribution, masking prompt tokens as "...".
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from core.common.stopping import StopFlag
from core.explain.attention import ExplainInputError, FittedText
from core.explain.residual import Answer, Prompt, encode_prompt, model_device, one_token_answer, require_causal_lm
from core.explain.shap_attribution import Attribution, next_token_log_probs, shap_on_prompt
from core.models.manager import LoadedModel, Progress

CONTRAST_MAX_TOKENS = 64
GRADIENT, SHAP = "gradient", "shap"
UNIT = "log-probability (the difference is the logit difference)"
GRADIENT_CAVEAT = ("Gradient × input is a first-order estimate at this one input: it says how the difference would move "
                   "if a token's embedding were scaled a little, not what removing the token does. It misses saturation "
                   "and interactions between tokens, and the values need not add up to the difference.")
SHAP_CAVEAT = ("SHAP removes groups of tokens (shown to the model as \"...\") and measures the change, so its values add "
               "up to (full prompt − every token masked). Masked prompts are unlike real text, and the budget caps how "
               "finely the groups are split.")


@dataclass(frozen=True)
class Contrast:
    attribution: Attribution  # outputs: 0 = target − foil, 1 = target, 2 = foil
    target: Answer
    foil: Answer
    log_probs: tuple[float, float]  # log p(target), log p(foil) after the whole prompt
    method: str  # GRADIENT or SHAP

    @property
    def caveat(self) -> str:
        return GRADIENT_CAVEAT if self.method == GRADIENT else SHAP_CAVEAT

    @property
    def difference(self) -> float:
        return self.log_probs[0] - self.log_probs[1]

    def completeness(self) -> str:
        """How the values relate to the difference they explain (the one sentence that keeps a reader honest)."""
        total = float(self.attribution.values[:, 0].sum())
        base = float(self.attribution.base_values[0])
        if self.method == GRADIENT:  # no baseline run: nothing makes the values add up
            return f"the values sum to {total:+.3f}; the actual difference is {self.difference:+.3f}"
        return (f"every token masked: {base:+.3f}; the values add {total:+.3f}, giving {base + total:+.3f} "
                f"= the full prompt's difference")


@dataclass(frozen=True)
class ContrastInputs:
    prompt: Prompt
    target: Answer
    foil: Answer

    @property
    def names(self) -> list[str]:
        return [f"{self.target.label} − {self.foil.label}", self.target.label, self.foil.label]


def contrast_inputs(loaded: LoadedModel, prompt: str, target: str, foil: str) -> ContrastInputs:
    """The checked prompt and the two one-token answers, or a message naming what is wrong (no model run)."""
    require_causal_lm(loaded, "Contrastive attribution")
    encoded = encode_prompt(loaded, prompt, CONTRAST_MAX_TOKENS)
    target_answer = one_token_answer(loaded, encoded.text, target, "target")
    foil_answer = one_token_answer(loaded, encoded.text, foil, "foil")
    if target_answer.token_id == foil_answer.token_id:
        raise ExplainInputError(f"The target and the foil are the same token ({target_answer.label}): the contrast needs "
                                "two different words, e.g. Paris and London.")
    return ContrastInputs(encoded, target_answer, foil_answer)


def token_pieces(loaded: LoadedModel, text: str) -> list[str]:
    """The prompt cut at its tokens with the whitespace kept (so the pieces read as the text); special tokens by name."""
    tokenizer = loaded.tokenizer
    if not tokenizer.is_fast:
        return [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]
    encoding = tokenizer(text, return_offsets_mapping=True)
    pieces, previous = [], 0
    for token_id, (_start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if end <= previous:  # a special token, or a second token inside the same characters
            pieces.append(tokenizer.convert_ids_to_tokens(token_id) if end == 0 else "")
            continue
        pieces.append(text[previous:end])
        previous = end
    return pieces


def contrast_gradient(loaded: LoadedModel, inputs: ContrastInputs) -> Contrast:
    """Gradient × input of the difference, and of each log-probability on its own, in one forward pass."""
    start = time.perf_counter()
    encoded, target_answer, foil_answer = inputs.prompt, inputs.target, inputs.foil
    model = loaded.model
    ids = encoded.tensor(model_device(loaded))
    try:
        with torch.enable_grad():
            embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeddings, logits_to_keep=1).logits[0, -1].float()
            log_p = torch.log_softmax(logits, -1)[[target_answer.token_id, foil_answer.token_id]]
            # Only the embeddings' gradients are asked for: the shared model's parameters get no .grad.
            grads = [torch.autograd.grad(out, embeddings, retain_graph=True)[0]
                     for out in (log_p[0] - log_p[1], log_p[0], log_p[1])]
    except RuntimeError as err:
        raise ExplainInputError(f"'{loaded.model_id}' gives no gradients ({str(err).splitlines()[0][:120]}); use SHAP "
                                "for it.") from err
    values = torch.stack([(g * embeddings).sum(-1)[0] for g in grads], -1).detach().float().cpu().numpy()
    fitted = FittedText(encoded.text, len(encoded.ids), len(encoded.ids))
    attribution = Attribution(token_pieces(loaded, encoded.text), values.astype(np.float64), np.zeros(3),
                              inputs.names, UNIT, "Gradient × input (token embeddings)", 1, 1,
                              time.perf_counter() - start, fitted, 0)
    lp = log_p.detach().cpu().tolist()
    return Contrast(attribution, target_answer, foil_answer, (lp[0], lp[1]), GRADIENT)


def contrast_shap(loaded: LoadedModel, inputs: ContrastInputs, max_evals: int, stop: StopFlag | None = None,
                  progress: Progress | None = None) -> Contrast:
    """SHAP values of the difference and of each log-probability, from the same masked prompts."""
    start = time.perf_counter()
    encoded, target_answer, foil_answer = inputs.prompt, inputs.target, inputs.foil
    candidates = [target_answer.token_id, foil_answer.token_id]

    def score(batch: list[str]) -> np.ndarray:
        log_p = next_token_log_probs(loaded, batch, candidates)
        return np.stack([log_p[:, 0] - log_p[:, 1], log_p[:, 0], log_p[:, 1]], axis=1)

    tokens, values, base, scorer = shap_on_prompt(loaded, encoded.text, score, inputs.names,
                                                  max_evals, stop, progress)
    fitted = FittedText(encoded.text, len(encoded.ids), len(encoded.ids))
    attribution = Attribution(tokens, values, base, inputs.names, UNIT,
                              "SHAP Partition explainer (masked tokens become \"...\")", scorer.evals, scorer.batches,
                              time.perf_counter() - start, fitted, 0)
    full = score([encoded.text])[0]
    return Contrast(attribution, target_answer, foil_answer, (float(full[1]), float(full[2])), SHAP)
