"""/v1/completions answers that need more than one streamed reply: several prompts at once, and the scored ones
(`echo`, `max_tokens` 0, `logprobs` above the decode steps' 5) that lm-evaluation-harness sends.

Generation runs on the served model's engine (batched with everyone else's replies); the log-probabilities of the
prompt and of what was generated come from one scoring pass (core.evaluate.scoring) through the same engine. The
common request of an evaluation harness, `max_tokens` 1 at temperature 0, needs no generation at all: the scoring
pass over the prompt also gives the most likely next token, which is the greedy reply (an end-of-text token
included, as OpenAI and vLLM return it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from core.chat.engine import GenerationError
from core.chat.openai_protocol import GenerationRequest, finish_reason
from core.chat.serving import ServedModel
from core.chat.token_view import TokenStep
from core.evaluate.scoring import ScoreRequest, TokenScores, score_requests


@dataclass(frozen=True)
class Answer:
    """One prompt's completion: its tokens, and their log-probabilities from a scoring pass or the decode steps."""

    ids: list[int]  # prompt + generated
    prompt_tokens: int
    text: str  # what was generated
    finish: str  # "stop" | "length"
    scores: TokenScores | None = None  # over ids[1:], for scored requests (None for a one-token sequence)
    steps: tuple[TokenStep, ...] = ()  # the decode steps, for plain requests with logprobs

    @property
    def completion_tokens(self) -> int:
        return len(self.ids) - self.prompt_tokens


def _generate(served: ServedModel, request: GenerationRequest, prompts: list[list[int]]) -> list[Answer]:
    """Every prompt through the engine at once (they batch); a failed reply fails the request."""
    replies = [served.engine.submit(ids, request.settings, stop_strings=request.stop, record_steps=True)
               for ids in prompts]
    answers = []
    for ids, reply in zip(prompts, replies):
        chunk = reply.result()
        if chunk.failed:
            raise RuntimeError(f"the reply failed: {chunk.error}")
        generated = [s.token_id for s in chunk.steps]
        answers.append(Answer(ids + generated, len(ids), chunk.text, finish_reason(chunk), steps=tuple(chunk.steps)))
    return answers


def _greedy_next(served: ServedModel, answer: Answer, scores: TokenScores) -> tuple[Answer, TokenScores]:
    """Put the most likely token after the prompt (the last scored position) in place of the placeholder."""
    token = int(scores.top_ids[-1, 0])
    logprobs, greedy = scores.logprobs.copy(), scores.greedy.copy()
    logprobs[-1], greedy[-1] = scores.top_logprobs[-1, 0], True
    text = served.tokenizer.decode([token], skip_special_tokens=True)
    finish = "stop" if token in served.engine.eos_ids else "length"
    return (replace(answer, ids=answer.ids[:-1] + [token], text=text, finish=finish),
            replace(scores, logprobs=logprobs, greedy=greedy))


def answer_completions(served: ServedModel, request: GenerationRequest, prompts: list[list[int]]) -> list[Answer]:
    """The answer to each prompt of a completions request (not streamed)."""
    too_long = next((n for n, ids in enumerate(prompts) if len(ids) + (request.max_tokens > 0) > served.context), None)
    if too_long is not None:
        raise GenerationError(f"prompt[{too_long}] has {len(prompts[too_long]):,} tokens; with max_tokens "
                              f"{request.max_tokens} that is more than the model's context of {served.context:,}.")
    greedy_one = request.max_tokens == 1 and request.settings.temperature == 0
    if request.max_tokens and not greedy_one:
        answers = _generate(served, request, prompts)
    else:  # score only, or one greedy token from the same pass (0 is a placeholder for it)
        answers = [Answer(ids + [0] * greedy_one, len(ids), "", "length") for ids in prompts]
    if not request.scored and not greedy_one:
        return answers
    scorable = [n for n, a in enumerate(answers) if len(a.ids) > 1]
    top = max(request.top_logprobs, 1) if greedy_one else request.top_logprobs
    scores = score_requests(served.engine.exclusive, [ScoreRequest(tuple(answers[n].ids)) for n in scorable], top)
    for n, score in zip(scorable, scores):
        answer = answers[n]
        if greedy_one:
            answer, score = _greedy_next(served, answer, score)
        answers[n] = replace(answer, scores=score, steps=())
    return answers

