"""Chat engine, prompt building, token view and chat sessions on tiny random models (no hub)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.chat.engine import GenerationError
from core.chat.prompting import (
    CHAT_TEMPLATE,
    MAX_MESSAGE_CHARS,
    PLAIN,
    Turn,
    build_prompt,
    context_length,
    plain_transcript,
)
from core.chat.sampling import SamplingSettings
from core.chat.serving import torch_engine
from core.chat.session import ChatSession, EmptyMessageError, Exchange, Reply
from core.chat.token_view import TokenStep, describe_steps
from core.chat.types import FinishReason
from core.common.errors import BusyError, InputError
from core.common.stopping import StopFlag
from core.models.manager import ModelLoadError
from tests.test_sampler import hf_processors
from ui.chat_view import describe_stats, token_view_html

FAMILIES = ("gpt2", "llama", "phi", "phi3")
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dirs):
    """family -> (model, tokenizer), loaded once for the module."""
    return {f: (AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d))
            for f, d in tiny_lm_dirs.items()}


@pytest.fixture
def no_eos(monkeypatch):
    """Random tiny models can sample their end-of-text token at any step; tests of lengths and stops must not end early."""
    monkeypatch.setattr("core.chat.serving.eos_ids", lambda *_: set())


def generate_reply(model, tok, ids, settings, stop=None, stop_strings=()):
    return torch_engine(model, tok).submit(ids, settings, stop, stop_strings).result()


class StopAfter(StopFlag):
    """A user who presses Stop while the n-th token is on screen: stopped from the moment the reply has n tokens."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.request = n, None

    @property
    def stopped(self) -> bool:
        if self.request is None:
            return False
        state = self.request.engine.scheduler.states.get(self.request.request_id)
        return state is None or len(state.generated) >= self.n


def prompt_for(model, tok, message="Hello, how are you?", history=(), **kw):
    return build_prompt(tok, list(history), message, use_template=bool(tok.chat_template),
                        context=context_length(model, tok), **kw)


def hf_generate(model, tok, ids, settings: SamplingSettings) -> str:
    """Reference: transformers' own generate with the same settings and seed."""
    kwargs = dict(do_sample=not settings.greedy, repetition_penalty=settings.repetition_penalty,
                  max_new_tokens=settings.max_new_tokens, pad_token_id=tok.pad_token_id)
    if not settings.greedy:
        kwargs.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                      min_p=settings.min_p)
        torch.manual_seed(settings.seed)
    tensor = torch.tensor([ids])
    out = model.generate(tensor, attention_mask=torch.ones_like(tensor), **kwargs)
    return tok.decode(out[0, tensor.shape[1]:], skip_special_tokens=True)


# ---- prompt formats ------------------------------------------------------------------------------
def test_instruct_models_use_their_chat_template_with_system_prompt(tiny):
    model, tok = tiny["llama"]
    prompt = prompt_for(model, tok, history=[Turn("Hi", "Hello!")], system="Be terse.")
    assert prompt.format == CHAT_TEMPLATE and prompt.stop_strings == ()
    assert prompt.text.startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert prompt.text.endswith("<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nHello!<|im_end|>" in prompt.text
    assert tok.decode(prompt.input_ids) == prompt.text  # no doubled special tokens


@pytest.mark.parametrize("family", ["gpt2", "phi"])
def test_base_models_continue_a_visible_transcript(tiny, family):
    model, tok = tiny[family]
    prompt = prompt_for(model, tok, history=[Turn("Hi", "Hello!")], system="A chat.")
    assert prompt.format == PLAIN
    assert prompt.text == "A chat.\n\nUser: Hi\nAssistant: Hello!\nUser: Hello, how are you?\nAssistant:"
    assert prompt.stop_strings == ("\nUser:",)


def test_oldest_turns_are_dropped_when_history_exceeds_the_context(tiny):
    model, tok = tiny["llama"]
    history = [Turn(f"question {i}", f"answer {i}") for i in range(12)]
    prompt = build_prompt(tok, history, "the newest question", use_template=True, context=256, max_new_tokens=64)
    assert prompt.dropped_turns > 0 and len(prompt.input_ids) <= 256 - 64
    assert "question 0<" not in prompt.text and "question 11" in prompt.text and "the newest question" in prompt.text
    assert any("oldest" in n and "left out" in n for n in prompt.notices)
    kept = build_prompt(tok, history[-1:], "short", use_template=True, context=256, max_new_tokens=64)
    assert kept.dropped_turns == 0 and kept.notices == []


def test_a_100k_character_message_is_cut_with_a_notice(tiny):
    model, tok = tiny["gpt2"]
    prompt = prompt_for(model, tok, message="word " * 20_000, max_new_tokens=32)  # gpt2 tiny: 256 positions
    assert len(prompt.message) < MAX_MESSAGE_CHARS and prompt.message.startswith("word word")
    assert len(prompt.input_ids) <= 256 - 32
    assert any("100,000 characters" in n for n in prompt.notices)
    assert any("cut to" in n for n in prompt.notices)


def test_plain_transcript_without_system_prompt():
    assert plain_transcript("  ", [], "Hi") == "User: Hi\nAssistant:"


# ---- engine --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_generate_and_each_sampled_token_is_one_generate_could_draw(tiny, family):
    model, tok = tiny[family]
    ids = prompt_for(model, tok).input_ids
    for settings in (GREEDY, SamplingSettings(temperature=0, repetition_penalty=1.3, max_new_tokens=12)):
        assert generate_reply(model, tok, ids, settings).text == hf_generate(model, tok, ids, settings), settings
    sampled = SamplingSettings(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                               max_new_tokens=12, seed=7)
    reply = generate_reply(model, tok, ids, sampled)
    history = list(ids)
    for step in reply.steps:  # teacher-forced: generate's own processors at each step keep the token we drew
        with torch.no_grad():
            logits = model(torch.tensor([history])).logits[:, -1].float()
        assert torch.softmax(hf_processors(sampled)(torch.tensor([history]), logits), -1)[0, step.token_id] > 0
        history.append(step.token_id)


def test_streaming_grows_the_reply(tiny, no_eos):
    model, tok = tiny["llama"]
    chunks = list(torch_engine(model, tok).submit(prompt_for(model, tok).input_ids, GREEDY).chunks(interval=0.001))
    growing = [c.stats.tokens for c in chunks[:-1]]
    assert growing == sorted(growing) and all(b.text.startswith(a.text) for a, b in zip(chunks[:-2], chunks[1:-1]))
    final = chunks[-1]
    assert final.done and final.stats.finish is FinishReason.LENGTH and final.stats.tokens == 12
    assert len(final.steps) == 12 and final.text == tok.decode([s.token_id for s in final.steps])
    assert final.stats.first_token_s > 0 and final.stats.decode_tokens_per_s > 0
    words = describe_stats(final.stats)
    assert "12 tokens" in words and "tok/s" in words and "max new tokens" in words


def test_stop_ends_generation_within_one_step(tiny, no_eos):
    model, tok = tiny["gpt2"]
    flag = StopAfter(3)
    request = torch_engine(model, tok).submit(prompt_for(model, tok).input_ids,
                                              SamplingSettings(temperature=1.0, max_new_tokens=200, seed=1), flag)
    flag.request = request
    final = request.result()
    assert final.done and final.stats.finish is FinishReason.STOPPED and final.stats.tokens == 3


def test_batched_greedy_equals_unbatched_and_one_stop_leaves_the_others(tiny, no_eos):
    model, tok = tiny["llama"]
    prompts = [prompt_for(model, tok, message=m).input_ids for m in ("Hi", "What is the capital of France?",
                                                                      "Tell me a story about a fox", "Why?")]
    settings = SamplingSettings(temperature=0, repetition_penalty=1.2, max_new_tokens=16)
    alone = [generate_reply(model, tok, ids, settings) for ids in prompts]
    engine = torch_engine(model, tok, max_batch=4)
    stopper = StopAfter(5)
    requests = [engine.submit(ids, settings, stopper if i == 2 else None) for i, ids in enumerate(prompts)]
    stopper.request = requests[2]
    together = [r.result() for r in requests]
    assert max(r.stats.batch for r in together) > 1  # they really shared decode steps
    for i, (a, b) in enumerate(zip(alone, together)):
        if i == 2:
            assert b.stats.finish is FinishReason.STOPPED and b.stats.tokens == 5 and a.text.startswith(b.text)
        else:
            assert b.text == a.text and b.stats.finish is FinishReason.LENGTH, i
    sampled = SamplingSettings(temperature=0.9, max_new_tokens=12, seed=4)
    assert engine.submit(prompts[0], sampled).result().text == generate_reply(model, tok, prompts[0], sampled).text


def test_a_prompt_that_cannot_be_read_fails_alone_and_a_full_queue_says_so(tiny, no_eos):
    model, tok = tiny["phi"]
    ids = prompt_for(model, tok).input_ids
    engine = torch_engine(model, tok, max_batch=2)
    engine.max_waiting = 2
    engine.backend.max_batch = 0  # hold both in line until they are set up
    doomed = engine.submit(ids + [10**6], SamplingSettings(temperature=1.0, max_new_tokens=30, seed=1))  # no such id
    healthy = engine.submit(ids, SamplingSettings(temperature=1.0, max_new_tokens=30, seed=2))
    with pytest.raises(BusyError, match="queue is full"):
        engine.submit(ids, GREEDY)
    engine.backend.max_batch = 2
    engine.notify()  # both prompts are read in one pass, which fails; then one by one
    assert doomed.result().failed and "IndexError" in doomed.result().error
    assert healthy.result().stats.finish is FinishReason.LENGTH and healthy.result().stats.tokens == 30


def test_a_crash_inside_a_step_fails_its_requests_with_a_message_and_the_next_is_served(tiny, no_eos, monkeypatch):
    model, tok = tiny["llama"]
    engine = torch_engine(model, tok, max_batch=4)
    ids = prompt_for(model, tok).input_ids
    broken = {"on": True}
    decode = engine.store.decode

    def flaky(tokens):
        if broken["on"] and engine.store.lengths[0] > len(ids) + 2:
            raise RuntimeError("the runtime fell over")
        return decode(tokens)

    monkeypatch.setattr(engine.store, "decode", flaky)
    first = [engine.submit(ids, SamplingSettings(temperature=1.0, max_new_tokens=50, seed=i)) for i in range(3)]
    for request in first:
        final = request.result()
        assert final.failed and "the runtime fell over" in final.error and final.stats.tokens >= 2
    broken["on"] = False
    assert engine.submit(ids, GREEDY).result().stats.finish is FinishReason.LENGTH


def test_a_reader_that_goes_away_frees_its_slot(tiny, no_eos):
    model, tok = tiny["gpt2"]
    engine = torch_engine(model, tok, max_batch=1)
    ids = prompt_for(model, tok).input_ids
    request = engine.submit(ids, SamplingSettings(temperature=1.0, max_new_tokens=500, seed=1))
    stream = request.chunks(interval=0.001)
    next(stream)
    stream.close()  # the page was closed
    assert request.wait(10) and request.stats.finish is FinishReason.DISCONNECTED
    assert engine.submit(ids, GREEDY).result().stats.tokens == 12  # the slot is free


def test_same_seed_same_reply_and_a_different_seed_differs(tiny, no_eos):
    model, tok = tiny["llama"]
    ids = prompt_for(model, tok).input_ids
    settings = SamplingSettings(temperature=1.2, top_k=0, top_p=1.0, max_new_tokens=16, seed=42)
    first, again = generate_reply(model, tok, ids, settings), generate_reply(model, tok, ids, settings)
    other = generate_reply(model, tok, ids, SamplingSettings(temperature=1.2, top_k=0, top_p=1.0, max_new_tokens=16,
                                                              seed=43))
    assert first.text == again.text and first.stats.seed == 42
    assert other.text != first.text
    random_seed = generate_reply(model, tok, ids, SamplingSettings(max_new_tokens=2, seed=-1))
    assert random_seed.stats.seed is not None and random_seed.stats.seed >= 0


def test_truncating_sampling_settings_narrow_to_the_greedy_choice(tiny):
    model, tok = tiny["phi3"]
    ids = prompt_for(model, tok).input_ids
    greedy = generate_reply(model, tok, ids, GREEDY).text
    for narrow in (dict(top_k=1), dict(top_p=1e-6, top_k=0), dict(min_p=1.0, top_k=0, top_p=1.0)):
        settings = SamplingSettings(temperature=1.5, repetition_penalty=1.0, max_new_tokens=12, seed=5, **narrow)
        assert generate_reply(model, tok, ids, settings).text == greedy, narrow


def test_stop_string_ends_the_reply_before_it(tiny, no_eos):
    model, tok = tiny["gpt2"]
    ids = prompt_for(model, tok).input_ids
    full = generate_reply(model, tok, ids, GREEDY).text
    marker = full[4:7]
    cut = generate_reply(model, tok, ids, GREEDY, stop_strings=(marker,))
    assert cut.stats.finish is FinishReason.STOP_STRING and marker not in cut.text and full.startswith(cut.text.rstrip())


def test_end_of_text_token_ends_the_reply(tiny):
    model, tok = tiny["llama"]
    ids = prompt_for(model, tok).input_ids
    first = generate_reply(model, tok, ids, SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=1))
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first.steps[0].token_id  # pretend the first greedy token is EOS
    try:
        reply = generate_reply(model, tok, ids, GREEDY)
    finally:
        model.generation_config.eos_token_id = original
    assert reply.stats.finish is FinishReason.END_OF_TEXT and reply.stats.tokens == 0 and reply.text == "" and reply.steps == []


def test_a_prompt_that_fills_the_context_is_refused(tiny):
    model, tok = tiny["gpt2"]
    with pytest.raises(GenerationError, match="whole context"):
        generate_reply(model, tok, [tok.bos_token_id] * 256, GREEDY)


# ---- token view ----------------------------------------------------------------------------------
def test_token_view_records_probabilities_and_escapes_html(tiny):
    model, tok = tiny["gpt2"]
    reply = generate_reply(model, tok, prompt_for(model, tok).input_ids, GREEDY)
    for step in reply.steps:
        assert 0 < step.prob <= 1 and len(step.alt_ids) == 5
        assert step.alt_probs == tuple(sorted(step.alt_probs, reverse=True))
        assert step.token_id == step.alt_ids[0]  # greedy picks the model's top choice
    infos = describe_steps(tok, reply.steps)
    assert "".join(i.text for i in infos) == reply.text
    script = tok("<script>", add_special_tokens=False)["input_ids"]
    html_out = token_view_html(describe_steps(tok, [TokenStep(script[0], 0.9, tuple(script[:1]) * 5, (0.9,) * 5)]))
    assert "<script" not in html_out and "&lt;" in html_out and "hsl(108" in html_out
    assert "after a reply" in token_view_html([])


# ---- sessions ------------------------------------------------------------------------------------
def test_session_send_retry_undo_clear(services, tiny_lm_dirs):
    session = ChatSession(str(tiny_lm_dirs["llama"]))
    settings = SamplingSettings(temperature=1.0, max_new_tokens=6, seed=11)
    updates = list(session.reply(services.chat, "Hello", settings))
    assert updates[-1].done and updates[-1].tokens and not any(u.done for u in updates[:-1])
    assert [t.user for t in session.turns] == ["Hello"] and len(session.stats) == 1
    first = session.turns[0].reply
    list(session.retry(services.chat, settings))
    assert len(session.turns) == 1 and session.turns[0].reply == first  # same seed, same reply
    list(session.reply(services.chat, "And then?", settings))
    assert session.undo() == "And then?" and len(session.turns) == 1
    session.clear()
    assert session.turns == [] and session.stats == [] and session.undo() == ""
    with pytest.raises(EmptyMessageError):
        next(session.reply(services.chat, "  \n", settings))
    with pytest.raises(EmptyMessageError):
        next(session.retry(services.chat, settings))


def test_unknown_model_keeps_the_previous_one_and_a_model_change_stops_the_reply(services, tiny_lm_dirs, no_eos):
    session = ChatSession(str(tiny_lm_dirs["gpt2"]))
    stream = session.reply(services.chat, "Hi", SamplingSettings(temperature=1.0, max_new_tokens=100, seed=2))
    next(stream)
    with pytest.raises(ModelLoadError, match="not-a-real-model"):
        session.load(services.chat, "not-a-real-model")
    assert session.model_id == str(tiny_lm_dirs["gpt2"])
    assert list(stream)[-1].stats[-1].finish is FinishReason.STOPPED  # switching model stopped the running reply
    session.load(services.chat, str(tiny_lm_dirs["phi"]))
    assert session.served(services.chat).family == "phi"


def test_session_survives_gradio_state_copy(tiny_lm_dirs):
    import copy

    session = ChatSession("m", exchanges=[Exchange("a", [Reply("b")])])
    clone = copy.deepcopy(session)
    assert clone.turns == session.turns and clone.control is not session.control


@pytest.mark.real_model
def test_smollm2_knows_the_capital_of_france(services):
    session = ChatSession(services.default_chat_model)
    *_, last = session.reply(services.chat, "What is the capital of France?",
                             SamplingSettings(temperature=0, max_new_tokens=24))
    assert "Paris" in last.turns[-1].reply


# ---- teaching: branches, sampling step by step, comparisons, files ----------------------------------------------------
def test_a_reply_branches_at_any_token_and_keeps_every_version(services, tiny_lm_dirs, no_eos):
    session = ChatSession(str(tiny_lm_dirs["llama"]))
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=10)
    *_, first = session.reply(services.chat, "Tell me about foxes", settings)
    original = session.exchanges[-1].reply
    step = 3
    alternative = original.steps[step].alt_ids[2]
    *_, done = session.branch(services.chat, step, alternative, settings)
    exchange = session.exchanges[-1]
    branch = exchange.reply
    assert len(exchange.replies) == 2 and exchange.shown == 1 and branch.branched_at == step
    assert [s.token_id for s in branch.steps[:step]] == [s.token_id for s in original.steps[:step]]
    assert branch.steps[step].token_id == alternative and len(branch.steps) == 10 and done.tokens
    session.show(-1)
    assert session.turns[-1].reply == original.text  # the original is never lost
    session.show(+5)
    assert session.exchanges[-1].shown == 1
    list(session.retry(services.chat, settings))  # Retry adds a version too
    assert len(session.exchanges[-1].replies) == 3
    with pytest.raises(InputError, match="top alternatives"):
        next(session.branch(services.chat, step, 10**6, settings))


def test_sampling_stages_end_at_the_distribution_the_engine_drew_from(services, tiny_lm_dirs, no_eos, monkeypatch):
    from core.chat import sampler
    from core.chat.sampling import StageName
    from core.chat.stepwise import sampling_steps
    from ui.chat_view import describe_sampling, stage_title, stages_figure

    drawn_from = []
    draw = sampler.draw

    def recording(c, u):  # what the engine drew from at each step: the kept candidates' probabilities
        drawn_from.append(torch.zeros(len(tok)).scatter(0, c.ids[0], torch.softmax(c.scores[0], -1)))
        return draw(c, u)

    monkeypatch.setattr(sampler, "draw", recording)
    session = ChatSession(str(tiny_lm_dirs["llama"]))
    tok = AutoTokenizer.from_pretrained(tiny_lm_dirs["llama"])
    settings = SamplingSettings(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02, repetition_penalty=1.3,
                                max_new_tokens=6, seed=11)
    list(session.reply(services.chat, "Tell me a story", settings))
    steps = sampling_steps(services.chat, session, 4)
    assert [stage.name for stage in steps.stages] == list(StageName)
    assert [stage_title(s).split(" · ")[0] for s in steps.stages] == [
        "raw model output", "after repetition penalty 1.3", "after temperature 0.8", "after top-k 20",
        "after top-p 0.9", "after min-p 0.02"]
    last, engine = steps.stages[-1], drawn_from[3]
    assert torch.allclose(torch.tensor(last.probs), engine[list(last.token_ids)], atol=1e-6)
    assert last.candidates == int((engine > 0).sum()) <= 20
    assert steps.drawn == session.exchanges[-1].reply.steps[3].token_id and "Step 4" in describe_sampling(steps)
    assert len(stages_figure(steps).data) == 6
    with pytest.raises(InputError, match="between 1 and 6"):
        sampling_steps(services.chat, session, 7)


def test_a_greedy_comparison_with_itself_never_diverges(services, tiny_lm_dirs, no_eos):
    from core.chat.compare import Side, compare
    from core.common.stopping import StopFlag

    model = str(tiny_lm_dirs["llama"])
    greedy = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
    *_, same = compare(services.chat, "Hello", Side(model, greedy), Side(model, greedy), StopFlag())
    assert same.done and same.divergence is None and same.a.text == same.b.text
    hot = SamplingSettings(temperature=2.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12, seed=3)
    *_, apart = compare(services.chat, "Hello", Side(model, greedy), Side(model, hot), StopFlag())
    d = apart.divergence
    assert d is not None and d.a.text != d.b.text and len(d.a.alternatives) == 5 and len(d.b.alternatives) == 5
    assert apart.a.text.startswith(d.common) and apart.b.text.startswith(d.common)


def test_a_conversation_exports_and_restores_with_its_settings_and_branches(services, tiny_lm_dirs, no_eos):
    from core.chat.transcript import from_json, to_json
    from ui.chat_view import conversation_markdown as to_markdown

    session = ChatSession(str(tiny_lm_dirs["llama"]))
    settings = SamplingSettings(temperature=0.9, max_new_tokens=6, seed=21)
    list(session.reply(services.chat, "Hi <b>there</b>", settings, system="Be kind."))
    markdown = to_markdown(session, "tiny")
    assert "**You:** Hi <b>there</b>" in markdown and "Be kind." in markdown and "seed 21" in markdown
    exchanges, system, model = from_json(to_json(session, {"id": "tiny", "runtime": "PyTorch"}))
    restored = ChatSession(session.model_id, exchanges=exchanges, system=system)
    reply = restored.exchanges[0].reply
    assert reply.text == session.exchanges[0].reply.text and reply.settings == settings and system == "Be kind."
    assert [s.token_id for s in reply.steps] == [s.token_id for s in session.exchanges[0].reply.steps]
    step = reply.steps[1]
    *_, done = restored.branch(services.chat, 1, step.alt_ids[1], settings)  # branching works after a restore
    assert len(restored.exchanges[0].replies) == 2 and done.done
    for bad, message in (("{", "not JSON"), ('{"format": "x"}', "not a conversation"),
                         ('{"format": "llm-playground-conversation", "version": 1, "exchanges": [{"user": "a"}]}',
                          "damaged")):
        with pytest.raises(InputError, match=message):
            from_json(bad)
