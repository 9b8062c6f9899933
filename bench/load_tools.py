"""What the load benchmarks share: launching the app as a user would, timing concurrent users, printing a table."""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
# Long answers on purpose: every reply runs to the token limit, so users stay in the batch the whole time.
QUESTIONS = [f"Write a short story about {topic}." for topic in (
    'a dragon who learns to read',
    'a lighthouse keeper',
    'a robot gardener',
    'two rival bakers',
    'a lost kitten in Paris',
    'a girl who talks to trees',
    'the first day at a new school',
    'a pirate afraid of water',
    'a clock that runs backwards',
    'a snowman in summer',
    'a detective mouse',
    'a boy who collects clouds',
    'an old fisherman and a whale',
    'a library at midnight',
    'a bicycle race in the mountains',
    'a shy volcano',
)]


@dataclass
class Reply:
    tokens: int
    first_token_s: float  # seen by the client: request sent to the first streamed text
    seconds: float  # request sent to the last byte

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, per second after the first: the reply's streaming speed."""
        return (self.tokens - 1) / max(self.seconds - self.first_token_s, 1e-9) if self.tokens > 1 else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRss:
    """Peak resident memory of a process and its children, sampled every 50 ms."""

    def __init__(self, pid: int):
        import psutil

        self.process, self.peak = psutil.Process(pid), 0
        self._done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            try:
                self.peak = max(self.peak, sum(p.memory_info().rss for p in [self.process, *self.process.children(True)]))
            except Exception:  # the process ended
                return

    def stop(self) -> float:
        self._done.set()
        return self.peak / 2**30


@contextmanager
def launched_app(*flags: str, timeout: float = 600, poll_s: float = 0.5) -> Iterator[tuple[str, PeakRss]]:
    """`python app.py --offline ... ` on a free port, as `make run` starts it; yields its URL and memory sampler as
    soon as the port accepts connections (checked every `poll_s`)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    (ROOT / "artifacts").mkdir(exist_ok=True)
    log = open(ROOT / "artifacts" / f"app-{port}.log", "w")
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--port", str(port), *flags],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if app.poll() is not None:
                    raise RuntimeError(f"the app exited with code {app.returncode}; see {log.name}")
                time.sleep(poll_s)
        memory = PeakRss(app.pid)
        yield url, memory
    finally:
        app.terminate()
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
        log.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


@dataclass
class Load:
    """One row: n users at once."""

    replies: list[Reply]
    wall_s: float

    @property
    def rate(self) -> float:
        return sum(r.tokens for r in self.replies) / self.wall_s

    def p95_first(self) -> float:
        return percentile([r.first_token_s for r in self.replies], 95)

    def line(self, label: str) -> str:
        first, whole = [r.first_token_s for r in self.replies], [r.seconds for r in self.replies]
        return (f"{label:44s} {len(self.replies):3d} users | {self.rate:7.1f} tok/s aggregate | first token p50 "
                f"{percentile(first, 50):5.2f} s p95 {percentile(first, 95):5.2f} s | reply p50 "
                f"{percentile(whole, 50):5.2f} s p95 {percentile(whole, 95):5.2f} s | "
                f"{sum(r.tokens for r in self.replies)} tokens")
