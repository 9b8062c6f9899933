"""Which attribution method explains which kind of model (SHAP, looked up by task), and which methods explain a
contrast between two next tokens (looked up by name): the registries the Explain tab reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.common.errors import check_number
from core.common.stopping import StopFlag
from core.explain.attention import ExplainInputError
from core.explain.contrastive import GRADIENT, SHAP, Contrast, ContrastInputs, contrast_gradient, contrast_inputs, contrast_shap
from core.explain.shap_attribution import (
    DEFAULT_MAX_EVALS,
    DEFAULT_MAX_TOKENS,
    Attribution,
    explain_classifier,
    explain_continuation,
)
from core.models.manager import LoadedModel, Progress
from core.models.registry import CAUSAL_LM, TEXT_CLASSIFICATION

MAX_EVALS_LIMIT = 5000
MAX_TOKENS_LIMIT = 512


@dataclass(frozen=True)
class AttributionRequest:
    text: str  # the classifier's input, or the language model's prompt
    continuation: str = ""  # language models: what to explain ("" = the model's own next token)
    max_evals: int = DEFAULT_MAX_EVALS
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_evals", check_number("SHAP budget", self.max_evals, 10, MAX_EVALS_LIMIT, True))
        object.__setattr__(self, "max_tokens", check_number("Max tokens", self.max_tokens, 4, MAX_TOKENS_LIMIT, True))


Method = Callable[[LoadedModel, AttributionRequest, StopFlag, Progress], tuple[Attribution, str | None]]

ATTRIBUTION_METHODS: dict[str, Method] = {
    TEXT_CLASSIFICATION: lambda loaded, r, stop, progress: (
        explain_classifier(loaded, r.text, r.max_evals, r.max_tokens, stop, progress), None),
    CAUSAL_LM: lambda loaded, r, stop, progress: explain_continuation(
        loaded, r.text, r.continuation, r.max_evals, r.max_tokens, stop, progress),
}


def attribute(loaded: LoadedModel, request: AttributionRequest, stop: StopFlag,
              progress: Progress) -> tuple[Attribution, str | None]:
    """SHAP attributions with the method registered for the model's task, and a notice when the input was cut."""
    method = ATTRIBUTION_METHODS.get(loaded.task)
    if method is None:
        raise ExplainInputError(f"'{loaded.model_id}' is a plain encoder with no output to explain: pick a classifier "
                                "or a language model for SHAP (its attention works).")
    return method(loaded, request, stop, progress)


# ---- contrast: why this next token and not that one -----------------------------------------------------------------
@dataclass(frozen=True)
class ContrastRequest:
    prompt: str
    target: str  # the token to explain, e.g. "Paris"
    foil: str  # the token it is compared with, e.g. "London"
    method: str = GRADIENT
    max_evals: int = DEFAULT_MAX_EVALS  # SHAP only

    def __post_init__(self) -> None:
        if self.method not in CONTRAST_METHODS:
            raise ExplainInputError(f"Unknown method '{self.method}'; choose one of {', '.join(CONTRAST_METHODS)}.")
        object.__setattr__(self, "max_evals", check_number("SHAP budget", self.max_evals, 10, MAX_EVALS_LIMIT, True))

    def inputs(self, loaded: LoadedModel) -> ContrastInputs:
        """The checked prompt and answers (tokenization only): bad input is refused before the run waits in line."""
        return contrast_inputs(loaded, self.prompt, self.target, self.foil)


@dataclass(frozen=True)
class ContrastMethod:
    name: str  # shown to the user
    run: Callable[[LoadedModel, ContrastInputs, ContrastRequest, StopFlag, Progress], Contrast]


CONTRAST_METHODS: dict[str, ContrastMethod] = {
    GRADIENT: ContrastMethod("Gradient × input", lambda loaded, inputs, r, stop, progress: contrast_gradient(
        loaded, inputs)),
    SHAP: ContrastMethod("SHAP (Partition explainer)", lambda loaded, inputs, r, stop, progress: contrast_shap(
        loaded, inputs, r.max_evals, stop, progress)),
}


def contrast(loaded: LoadedModel, inputs: ContrastInputs, request: ContrastRequest, stop: StopFlag,
             progress: Progress) -> Contrast:
    return CONTRAST_METHODS[request.method].run(loaded, inputs, request, stop, progress)
