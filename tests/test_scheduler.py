"""The engine's scheduling with a fake backend and fake logits (no model): the token budget, chunked and batched
prompt reading, joins and leaves, and what each step costs."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core.chat.backends import Backend, KVStore, Prefilled
from core.chat.engine import ChatEngine
from core.chat.sampling import SamplingSettings
from core.chat.scheduler import MIN_PREFILL_TOKENS
from core.chat.types import FinishReason, RequestStatus

VOCAB = 50
GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=5)


def next_token_logits(last: int) -> torch.Tensor:
    """The fake model always predicts last + 1."""
    logits = torch.zeros(VOCAB)
    logits[(last + 1) % VOCAB] = 10.0
    return logits


class FakeStore(KVStore):
    def __init__(self, backend):
        super().__init__(0)
        self.backend = backend
        self.rows_moved = 0

    def _grow(self, rows, columns):
        self.rows, self.columns = max(rows, self.rows), columns

    def _copy_in(self, row, prefilled):
        pass

    def _move(self, source, target, length):
        self.rows_moved += 1

    def _forward(self, tokens):
        self.backend.log.append(("decode", len(tokens)))
        return torch.stack([next_token_logits(t) for t in tokens])


class FakeBackend(Backend):
    def __init__(self, max_batch=4, context=4096, fail_on=None):
        super().__init__("fake", "fp32", "cpu", context, max_batch)
        self.log: list[tuple] = []
        self.fail_on = fail_on  # a token id whose prompt cannot be read

    def _check(self, ids):
        if self.fail_on is not None and self.fail_on in ids:
            raise ValueError("an unreadable prompt")

    def read(self, prompts):
        for p in prompts:
            self._check(p)
        self.log.append(("read", tuple(len(p) for p in prompts)))
        return torch.stack([next_token_logits(p[-1]) for p in prompts]), [Prefilled(None, len(p), i)
                                                                         for i, p in enumerate(prompts)]

    def read_more(self, prefilled, ids, total):
        self._check(ids)
        self.log.append(("chunk", len(ids)))
        return next_token_logits(ids[-1]), Prefilled(None, (prefilled.length if prefilled else 0) + len(ids))

    def new_store(self):
        return FakeStore(self)

    def full_logits(self, ids):
        return torch.stack([next_token_logits(i) for i in ids])


class Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"<{i}>" for i in ids)


def engine(budget=256, **backend) -> ChatEngine:
    return ChatEngine(FakeBackend(**backend), Tokenizer(), eos_ids=set(), token_budget=budget)


def test_short_prompts_are_read_together_and_decode_together():
    e = engine()
    e.backend.max_batch = 0  # hold them in line until all four are in
    handles = [e.submit([1, 2, i], GREEDY) for i in range(4)]
    e.backend.max_batch = 4
    e.notify()
    results = [h.result() for h in handles]
    assert [r.text for r in results] == ["".join(f"<{i + k}>" for k in range(1, 6)) for i in range(4)]
    assert e.backend.log[0] == ("read", (3, 3, 3, 3))  # one batched pass for the four prompts
    assert e.backend.log[1:] == [("decode", 4)] * 4  # the first token came from reading, four more decoded together
    assert all(r.stats.finish is FinishReason.LENGTH and r.stats.batch == 4 for r in results)


def test_a_long_prompt_is_read_in_chunks_within_the_budget_while_a_running_reply_keeps_decoding():
    e = engine(budget=64)
    running = e.submit([1], SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=100_000))
    while not running.snapshot().text:
        time.sleep(0.001)
    long = e.submit(list(range(200)), GREEDY)
    assert long.result().stats.finish is FinishReason.LENGTH
    running.stop.stop()
    assert running.result().stats.finish is FinishReason.STOPPED
    chunks = [n for kind, n in e.backend.log if kind == "chunk"]
    assert sum(chunks) == 200 and max(chunks) <= 64 - 1 and len(chunks) >= 4  # budget minus the running reply's token
    first_chunk = e.backend.log.index(("chunk", chunks[0]))
    between = e.backend.log[first_chunk:e.backend.log.index(("chunk", chunks[-1]))]
    assert ("decode", 1) in between  # the running reply got tokens while the long prompt was read


def test_the_budget_always_leaves_room_to_read_a_prompt():
    e = engine(budget=2)
    handles = [e.submit([5, 6, 7, 8] * 10, GREEDY), e.submit([1] * 40, GREEDY)]
    assert all(h.result().stats.finish is FinishReason.LENGTH for h in handles)
    assert all(n <= MIN_PREFILL_TOKENS for kind, n in e.backend.log if kind == "chunk")


def test_a_full_batch_keeps_the_rest_in_line_and_they_join_as_others_leave():
    e = engine(max_batch=2)
    e.backend.max_batch = 0
    short = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=2)
    handles = [e.submit([i], short if i < 2 else GREEDY) for i in range(5)]
    assert [e.waiting(h.request_id).place for h in handles] == [1, 2, 3, 4, 5]
    assert e.waiting(handles[4].request_id).wait_s > 0
    e.backend.max_batch = 2
    e.notify()
    assert all(h.result().stats.finish is FinishReason.LENGTH for h in handles)
    assert max(n for kind, n in e.backend.log if kind == "decode") == 2
    assert e.store.rows_moved >= 1  # a row that left was filled by moving the last one, not by rebuilding
    assert len(e.store) == 0 and not e.scheduler.states


def test_an_unreadable_prompt_fails_alone_and_stop_ends_a_reply_within_a_step():
    e = engine(fail_on=13)
    e.backend.max_batch = 0
    bad = e.submit([1, 13], GREEDY)
    good = e.submit([2, 3], SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=1000))
    e.backend.max_batch = 4
    e.notify()
    assert bad.result().failed and "unreadable prompt" in bad.result().error
    while good.snapshot().stats.tokens < 3:
        time.sleep(0.001)
    good.stop.stop()
    e.notify()
    final = good.result()
    assert final.stats.finish is FinishReason.STOPPED and final.stats.tokens < 1000
    assert e.scheduler.states == {} and len(e.store) == 0


def test_a_request_moves_through_its_statuses():
    e = engine()
    e.backend.max_batch = 0
    handle = e.submit([1, 2], GREEDY)
    state = e.scheduler.states[handle.request_id]
    assert state.status is RequestStatus.WAITING
    e.backend.max_batch = 4
    e.notify()
    handle.result()
    assert state.status is RequestStatus.FINISHED and state.computed == 2


@pytest.mark.parametrize("context", [100, 1500])
def test_a_step_copies_no_cache(context):
    """The store's buffers are written in place: a decode step never reallocates them (only growth does, rarely)."""
    from core.chat.backends import OnnxStore

    class Model:
        kv_heads, head_size, kv_dtype = 2, 4, np.float32
        past_names = ["k", "v"]

    store = OnnxStore(Model(), 4)
    for key in range(3):
        store.add(key, Prefilled([np.ones((1, 2, context, 4), np.float32)] * 2, context))
    buffers = [b.ctypes.data for b in store.buffers]
    store.remove(1)
    store.add(3, Prefilled([np.full((1, 2, 7, 4), 2, np.float32)] * 2, 7))
    assert [b.ctypes.data for b in store.buffers] == buffers and store.keys == [0, 2, 3]
    assert store.lengths == [context, context, 7] and float(store.buffers[0][2, 0, 6, 0]) == 2.0


def test_a_reader_that_goes_away_under_batching_leaves_within_a_step_and_the_others_go_on():
    e = engine()
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=3000)
    handles = [e.submit([1, i], settings) for i in range(3)]
    stream = handles[1].chunks(interval=0.001)
    while next(stream).stats.tokens < 5:
        pass
    state = e.scheduler.states[handles[1].request_id]
    stream.close()  # the page was closed
    at_close = len(state.generated)
    final = handles[1].result()
    assert final.stats.finish is FinishReason.DISCONNECTED and final.stats.tokens <= at_close + 1
    assert [h.result().stats.finish for h in (handles[0], handles[2])] == [FinishReason.LENGTH] * 2
