"""Soak and fault suite: the real server under mixed, hostile load above its in-flight limit.

    python -m tests.soak [--seconds N] [--max-requests M] [--concurrency C] [--model-dir DIR]

Against one server (a tiny random model unless --model-dir): a load of good and bad
requests from ``concurrency`` client threads (twice ``--max-inflight``), with a local
image server that also drips and 404s; then /metrics must fall back to zero in flight,
the process RSS must not have grown past ``rss_growth`` x its post-warm-up value,
``max_inflight`` requests at once must all succeed (no leaked slots) and SIGTERM with
``max_inflight`` long streams open must finish every one with ``data: [DONE]`` and exit 0.
A second server (started beside the first, idle until its turn) then has its engine core
killed: its open stream must still end with ``data: [DONE]``, /health must turn 503 and a
new chat request must get a 503.

Every loop and wait is bounded in time and count. One summary line at the end; the exit
status is non-zero when any check failed (the failures are listed above it).
"""

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

KEY = "soak-key"
MODEL = "soak-llava"
CHAT = "/v1/chat/completions"
DONE = "data: [DONE]"


@dataclass
class SoakConfig:
    seconds: float = 60.0  # load budget, warm-up included
    max_requests: int = 200_000  # load bound by count as well (a safety net: ~100 requests/s here)
    concurrency: int = 8  # client threads; above max_inflight on purpose
    max_inflight: int = 4
    model_dir: Path | None = None  # None: a tiny random model built in work_dir
    work_dir: Path | None = None  # model and server logs; None: a temporary directory
    warmup_fraction: float = 0.25  # RSS baseline taken after this share of the load
    request_bound_s: float = 30.0  # a response or stream slower than this is a hang
    image_timeout_s: float = 2.0  # the server's --image-timeout-s
    drip_interval_s: float = 0.3  # the drip route sends one byte per interval ...
    drip_bytes: int = 40  # ... this many times (12 s: past slow-image's bound), then ends
    drip_every_s: float = 8.0  # at most one request of each drip kind started per this many seconds
    backoff_s: float = 0.25  # a client told 429 waits this long (Retry-After, capped) before its next request
    abort_after_s: float = 0.5  # client timeout of the mid-download disconnects
    rss_growth: float = 1.15
    settle_s: float = 30.0  # bound on /metrics falling back to zero in flight
    long_tokens: int = 300  # tokens of the drain streams (burst: a third of it)
    shutdown_bound_s: float = 90.0
    dead_bound_s: float = 60.0


# ---- the local image server -------------------------------------------------------------------


def _png(image) -> bytes:
    from tests.server_proc import png

    return png(image)


@contextmanager
def image_server(cfg: SoakConfig):
    """tests.hostile's image server (a PNG, a 404, a non-image) with the soak's drip."""
    from tests.hostile import drip, hostile_server

    with hostile_server(routes={"/drip": drip(cfg.drip_interval_s, cfg.drip_bytes)}) as (base, _):
        yield base


# ---- request kinds ------------------------------------------------------------------------------


def _data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def _user(text: str, *urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def chat_body(*urls: str, text: str = "What is in the image?", **extra) -> dict:
    return {"model": MODEL, "messages": [_user(text, *urls)], "max_tokens": 8, **extra}


@dataclass(frozen=True)
class Kind:
    body: Callable[[str, list[str]], dict | bytes]  # (image server url, data urls) -> body
    expect: frozenset = frozenset({200})  # fine statuses; a 429 with Retry-After always is
    stream: bool = False
    choices: int = 1
    key: str = KEY
    leave_after_first_chunk: bool = False
    client_timeout_s: float | None = None  # the client gives up after this: an abort, not a hang
    wait_s: float | None = None  # a longer bound for this kind (slow image fetches)
    gated: bool = False  # at most one per drip_every_s (each may hold a server slot for the drip)


def _kinds(cfg: SoakConfig) -> dict[str, Kind]:
    bad = frozenset({400})
    stream_opts = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "chat": Kind(lambda img, d: chat_body(d[0], temperature=0)),
        "stream": Kind(lambda img, d: chat_body(d[1], max_tokens=16, **stream_opts), stream=True),
        "n2-sampled": Kind(lambda img, d: chat_body(d[0], n=2, temperature=0.7, seed=7), choices=2),
        "n2-greedy": Kind(lambda img, d: chat_body(d[0], n=2, temperature=0), choices=2),
        "n2-greedy-stream": Kind(lambda img, d: chat_body(d[1], n=2, temperature=0, **stream_opts),
                                 stream=True),
        "multi-image": Kind(lambda img, d: chat_body(d[0], img + "/img.png", d[1], text="Compare them.")),
        "stream-disconnect": Kind(lambda img, d: chat_body(d[1], max_tokens=200, min_tokens=200,
                                                           **stream_opts),
                                  stream=True, leave_after_first_chunk=True),
        "fetch-disconnect": Kind(lambda img, d: chat_body(img + "/drip"), expect=bad,
                                 client_timeout_s=cfg.abort_after_s, gated=True),
        "slow-image": Kind(lambda img, d: chat_body(img + "/drip"), expect=bad,
                           wait_s=cfg.image_timeout_s + 8, gated=True),
        "bad-json": Kind(lambda img, d: b'{"model": "' + MODEL.encode() + b'", "messages": [', expect=bad),
        "wrong-types": Kind(lambda img, d: {"model": MODEL, "messages": [{"role": "user", "content": 5}],
                                            "temperature": "hot"}, expect=bad),
        "unknown-model": Kind(lambda img, d: {**chat_body(), "model": "gpt-4o"}, expect=frozenset({404})),
        "too-many-images": Kind(lambda img, d: chat_body(*d[:2], *d[:2]), expect=bad),
        "undecodable-image": Kind(lambda img, d: chat_body(
            "data:image/png;base64," + base64.b64encode(b"GIF89a not really").decode()), expect=bad),
        "image-404": Kind(lambda img, d: chat_body(img + "/missing.png"), expect=bad),
        "image-not-image": Kind(lambda img, d: chat_body(img + "/text"), expect=bad),
        "wrong-key": Kind(lambda img, d: chat_body(d[0]), key="wrong", expect=frozenset({401})),
        "body-too-large": Kind(lambda img, d: chat_body(text="x" * 2_500_000), expect=frozenset({413})),
    }


# One cycle of the load; a gated kind that comes up too soon is replaced by "chat".
SCHEDULE = [
    "chat", "stream", "multi-image", "bad-json", "chat", "n2-sampled", "stream-disconnect", "unknown-model",
    "stream", "fetch-disconnect", "n2-greedy", "wrong-types", "chat", "multi-image", "too-many-images",
    "stream", "undecodable-image", "slow-image", "n2-greedy-stream", "wrong-key", "chat", "image-404",
    "stream-disconnect", "body-too-large", "image-not-image",
]

# ---- one request, judged --------------------------------------------------------------------------

OK, EXPECTED_4XX, LIMITED, ABORT, UNEXPECTED = "ok", "expected-4xx", "429", "client-abort", "unexpected"


@dataclass
class Outcome:
    category: str
    label: str  # the status, or what happened instead of one
    detail: str = ""


def judge(kind: Kind, status: int, headers, text: str, lines: list[str] | None) -> Outcome:
    if status == 429:
        if "retry-after" in headers:
            return Outcome(LIMITED, "429")
        return Outcome(UNEXPECTED, "429 without Retry-After", text)
    if status not in kind.expect:
        return Outcome(UNEXPECTED, str(status), text)
    if status != 200:
        return Outcome(EXPECTED_4XX, str(status))
    if lines is not None:
        if not lines or lines[-1] != DONE:
            return Outcome(UNEXPECTED, "200 stream without [DONE]", "\n".join(lines[-3:]))
        errors = [line for line in lines if line.startswith('data: {"error"')]
        if errors:
            return Outcome(UNEXPECTED, "200 stream with an error event", errors[0])
        return Outcome(OK, "200")
    try:
        choices = json.loads(text)["choices"]
    except (ValueError, KeyError, TypeError):
        return Outcome(UNEXPECTED, "200 unreadable", text)
    if len(choices) != kind.choices:
        return Outcome(UNEXPECTED, f"200 with {len(choices)} choices", text)
    return Outcome(OK, "200")


def send(http: httpx.Client, base: str, kind: Kind, body: dict | bytes, bound_s: float) -> Outcome:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {kind.key}", "Content-Type": "application/json"}
    timeout = kind.client_timeout_s or kind.wait_s or bound_s
    started = time.monotonic()
    try:
        with http.stream("POST", base + CHAT, content=content, headers=headers, timeout=timeout) as r:
            if not (kind.stream and r.status_code == 200):
                r.read()
                return judge(kind, r.status_code, r.headers, r.text, None)
            lines = []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if lines and kind.leave_after_first_chunk:
                    return Outcome(ABORT, "left after the first chunk")
                if time.monotonic() - started > timeout:
                    return Outcome(UNEXPECTED, "hang", f"stream still open after {timeout:g} s")
            return judge(kind, 200, r.headers, "", lines)
    except httpx.TimeoutException:
        if kind.client_timeout_s:
            return Outcome(ABORT, "client timeout")
        return Outcome(UNEXPECTED, "hang", f"no response within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(UNEXPECTED, f"transport {type(exc).__name__}", str(exc))


# ---- the load ----------------------------------------------------------------------------------


@dataclass
class Tally:
    per_kind: Counter = field(default_factory=Counter)  # (kind, label) -> count
    categories: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)  # (kind, label, detail[:200]) -> count
    requests: int = 0
    seconds: float = 0.0

    def add(self, name: str, outcome: Outcome) -> None:
        self.requests += 1
        self.per_kind[name, outcome.label] += 1
        self.categories[outcome.category] += 1
        if outcome.category == UNEXPECTED:
            self.unexpected[name, outcome.label, outcome.detail[:200]] += 1


class Load:
    """``concurrency`` threads sending the schedule's kinds round-robin until a deadline or a count."""

    def __init__(self, cfg: SoakConfig, base: str, images: str):
        from tests.images import noise, photo_like

        self.cfg, self.base, self.images = cfg, base, images
        self.kinds = _kinds(cfg)
        self.data_urls = [_data_url(photo_like(40, 32, seed=1)), _data_url(noise(24, 24, seed=2))]
        self.tally = Tally()
        self.lock = threading.Lock()
        self.ticket = itertools.count()
        self.last_gated: dict[str, float] = {}

    def _next(self) -> str | None:
        with self.lock:
            n = next(self.ticket)
            if n >= self.cfg.max_requests:
                return None
            name = SCHEDULE[n % len(SCHEDULE)]
            if self.kinds[name].gated:
                if time.monotonic() - self.last_gated.get(name, -1e9) < self.cfg.drip_every_s:
                    return "chat"
                self.last_gated[name] = time.monotonic()
            return name

    def _worker(self, deadline: float) -> None:
        previous = None  # one request at a time: the next one reuses this one's connection
        with httpx.Client(trust_env=False) as http:
            while time.monotonic() < deadline and (name := self._next()) is not None:
                kind = self.kinds[name]
                body = kind.body(self.images, self.data_urls)
                outcome = send(http, self.base, kind, body, self.cfg.request_bound_s)
                if outcome.label.startswith("transport") and previous is not None:
                    outcome.detail = f"(the connection's previous answer: {previous}) {outcome.detail}"
                previous = outcome.label
                with self.lock:
                    self.tally.add(name, outcome)
                    if outcome.category == LIMITED and kind.gated:
                        self.last_gated.pop(name, None)  # it never reached the fetch: due again
                if outcome.category == LIMITED:
                    time.sleep(self.cfg.backoff_s)

    def run(self, seconds: float) -> None:
        started = time.monotonic()
        deadline = started + seconds
        threads = [threading.Thread(target=self._worker, args=(deadline,), daemon=True)
                   for _ in range(self.cfg.concurrency)]
        for t in threads:
            t.start()
        for t in threads:  # a request in progress at the deadline is itself bounded
            t.join(max(0.0, deadline - time.monotonic()) + self.cfg.request_bound_s + 15)
        self.tally.seconds += time.monotonic() - started


# ---- checks after the load ---------------------------------------------------------------------------


def gauges(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


IDLE = ("llava_requests_in_flight", "llava_engine_requests_running", "llava_engine_requests_waiting")


def settle(base: str, bound_s: float) -> dict[str, float]:
    """Polls /metrics until nothing is in flight or running or waiting; returns the last values."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            values = {name: gauges(base).get(name, float("nan")) for name in IDLE}
        except httpx.HTTPError as exc:
            values = {"/metrics": type(exc).__name__}
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def rss_mb(proc) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def stream_lines(base: str, body: dict, bound_s: float, first: threading.Event | None = None,
                 lines_before_first: int = 1) -> tuple[int | None, list[str], str]:
    """Reads one stream to its end: (status, non-empty lines, how it ended)."""
    lines, status = [], None
    started = time.monotonic()
    try:
        with httpx.stream("POST", base + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=bound_s) as r:
            status = r.status_code
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if first is not None and len(lines) >= lines_before_first:
                    first.set()
                if time.monotonic() - started > bound_s:
                    return status, lines, "still open"
        return status, lines, "closed"
    except httpx.HTTPError as exc:
        return status, lines, type(exc).__name__
    finally:
        if first is not None:
            first.set()


def long_body(tokens: int, stream: bool) -> dict:
    extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    return chat_body(text="count", max_tokens=tokens, min_tokens=tokens, temperature=0, **extra)


def burst(base: str, n: int, tokens: int, bound_s: float) -> list[httpx.Response | str]:
    """n requests released at once."""
    gate = threading.Barrier(n)

    def one(_):
        gate.wait(30)
        try:
            return httpx.post(base + CHAT, json=long_body(tokens, False), timeout=bound_s,
                              headers={"Authorization": f"Bearer {KEY}"})
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def open_streams(base: str, n: int, body: dict, bound_s: float, lines_before_first: int = 1):
    """Starts n streams; returns (threads, results, events) once each has sent its first chunk (bounded)."""
    results: list = [None] * n
    events = [threading.Event() for _ in range(n)]

    def run(i):
        results[i] = stream_lines(base, body, bound_s, events[i], lines_before_first)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + bound_s
    for e in events:
        e.wait(max(0.0, deadline - time.monotonic()))
    return threads, results, events


def _stream_failure(what: str, result, tokens: int | None = None) -> str | None:
    if result is None:
        return f"{what}: the stream did not finish within its bound"
    status, lines, ended = result
    if status != 200:
        return f"{what}: status {status} ({ended})"
    if not lines or lines[-1] != DONE:
        return f"{what}: ended {ended} without {DONE}; last lines: {lines[-2:]}"
    if tokens is not None:
        try:
            done = json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"]
        except (IndexError, ValueError, KeyError, TypeError):
            done = None
        if done != tokens:
            return f"{what}: {done} of {tokens} tokens before {DONE}"
    return None


def drain(base: str, proc, cfg: SoakConfig) -> tuple[str, list[str]]:
    """SIGTERM with max_inflight long streams open: all must finish whole, then exit 0."""
    n, failures = cfg.max_inflight, []
    body = long_body(cfg.long_tokens, True)
    threads, results, events = open_streams(base, n, body, cfg.request_bound_s * 4)
    if not all(e.is_set() for e in events):
        failures.append("drain: not every stream sent its first chunk before SIGTERM")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + cfg.shutdown_bound_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    try:
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
    whole = 0
    for i, result in enumerate(results):
        problem = _stream_failure(f"drain stream {i + 1}", result, cfg.long_tokens)
        failures += [problem] if problem else []
        whole += problem is None
    if code != 0:
        failures.append(f"drain: the server exited with {code} (None: still running after "
                        f"{cfg.shutdown_bound_s:g} s)")
    return f"drain {whole}/{n} [DONE] exit {code}", failures


def engine_cores(proc) -> list:
    children = psutil.Process(proc.pid).children(recursive=True)
    return [c for c in children if "EngineCore" in c.name() or "EngineCore" in " ".join(c.cmdline())]


def dead_engine(base: str, proc, cfg: SoakConfig) -> tuple[str, list[str]]:
    """Kills the engine core under an open stream: the stream ends with [DONE], /health and chat say 503."""
    failures = []
    cores = engine_cores(proc)
    if not cores:
        return "dead engine: no EngineCore process", ["dead engine: no EngineCore child process found"]
    threads, results, _ = open_streams(base, 1, long_body(800, True), cfg.dead_bound_s, lines_before_first=2)
    for core in cores:
        core.kill()
    threads[0].join(cfg.dead_bound_s + 5)
    problem = _stream_failure("dead engine: the open stream", results[0])
    failures += [problem] if problem else []
    deadline, health = time.monotonic() + cfg.dead_bound_s, None
    while time.monotonic() < deadline:
        try:
            health = httpx.get(base + "/health", timeout=5).status_code
        except httpx.HTTPError as exc:
            health = type(exc).__name__
        if health == 503:
            break
        time.sleep(0.5)
    if health != 503:
        failures.append(f"dead engine: /health said {health}, not 503, for {cfg.dead_bound_s:g} s")
    try:
        r = httpx.post(base + CHAT, json=chat_body(text="hi"), headers={"Authorization": f"Bearer {KEY}"},
                       timeout=30)
        chat, text = r.status_code, r.text[:200]
    except httpx.HTTPError as exc:
        timed_out = isinstance(exc, httpx.TimeoutException)
        chat, text = type(exc).__name__, "(no response within 30 s)" if timed_out else ""
    if chat != 503:
        failures.append(f"dead engine: a new chat request got {chat}, not 503: {text}")
    if not failures:
        return "dead engine 503", []
    return f"dead engine: stream {'cut' if problem else '[DONE]'}, health {health}, chat {chat}", failures


# ---- the whole soak ------------------------------------------------------------------------------


@dataclass
class SoakResult:
    tally: Tally
    parts: list[str]  # pieces of the summary line after the counts
    failures: list[str]
    work_dir: Path
    phases: str = ""

    @property
    def summary(self) -> str:
        t, c = self.tally, self.tally.categories
        counts = (f"soak: {t.requests} requests in {t.seconds:.1f} s: {c[OK]} ok, "
                  f"{c[EXPECTED_4XX]} expected-4xx, {c[LIMITED]} 429, {c[ABORT]} client-aborts, "
                  f"{c[UNEXPECTED]} unexpected")
        return "; ".join([counts, *self.parts])

    def report(self) -> str:
        lines = []
        for name in sorted({k for k, _ in self.tally.per_kind}):
            seen = sorted((label, n) for (k, label), n in self.tally.per_kind.items() if k == name)
            lines.append(f"  {name:18} " + ", ".join(f"{label} x{n}" for label, n in seen))
        lines.append(self.phases)
        if self.failures:
            lines.append(f"FAILURES ({len(self.failures)}; server logs in {self.work_dir}):")
            lines += [f"  - {f}" for f in self.failures]
        lines.append(self.summary)
        return "\n".join(lines)


def server_flags(cfg: SoakConfig) -> list[str]:
    return [
        "--served-model-name", MODEL, "--api-key", KEY, "--max-inflight", str(cfg.max_inflight),
        "--allowed-image-hosts", "127.0.0.1", "--image-timeout-s", str(cfg.image_timeout_s),
        "--limit-images-per-prompt", "3", "--max-image-bytes", "300000", "--max-body-bytes", "2000000",
        "--shutdown-grace-s", "60",
    ]


class _Phases:
    """Wall time per phase, for the report."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.mark = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times[name] = self.times.get(name, 0.0) + now - self.mark
        self.mark = now

    def __str__(self) -> str:
        return "phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.times.items())


def _load_checks(cfg: SoakConfig, base: str, proc, images: str, phases: _Phases) -> tuple[Tally, list, list]:
    """Warm-up, RSS, the rest of the load, settle, RSS, burst and the SIGTERM drain on one server."""
    parts, failures = [], []
    load = Load(cfg, base, images)
    load.run(cfg.seconds * cfg.warmup_fraction)
    phases.done("load")
    settle(base, cfg.settle_s)
    rss_warm = rss_mb(proc)
    phases.done("settle")
    load.run(max(0.0, cfg.seconds - load.tally.seconds))
    phases.done("load")
    idle = settle(base, cfg.settle_s)
    rss_end = rss_mb(proc)
    phases.done("settle")

    for (name, label, detail), n in sorted(load.tally.unexpected.items()):
        failures.append(f"unexpected x{n}: {name} -> {label}: {detail}")
    growth = rss_end / rss_warm
    parts.append(f"rss {rss_warm:.0f}->{rss_end:.0f} MB ({(growth - 1) * 100:+.1f}%)")
    if growth > cfg.rss_growth:
        failures.append(f"rss grew {rss_warm:.0f} -> {rss_end:.0f} MB, over x{cfg.rss_growth}")
    if all(v == 0 for v in idle.values()):
        parts.append("in-flight back to 0")
    else:
        parts.append("in-flight NOT back to 0")
        failures.append(f"after {cfg.settle_s:g} s idle /metrics still says {idle}")

    got = burst(base, cfg.max_inflight, cfg.long_tokens // 3, cfg.request_bound_s * 2)
    parts.append(f"burst {sum(getattr(r, 'status_code', None) == 200 for r in got)}/{cfg.max_inflight}")
    for r in got:
        if getattr(r, "status_code", None) != 200:
            failures.append(f"burst: {getattr(r, 'status_code', r)} {getattr(r, 'text', '')[:200]}")
    phases.done("burst")

    part, more = drain(base, proc, cfg)
    phases.done("drain")
    return load.tally, parts + [part], failures + more


def run_soak(cfg: SoakConfig) -> SoakResult:
    phases = _Phases()
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = cfg.model_dir
    if model_dir is None:
        from llava_model.tiny import TinyLlavaSpec, build_tiny_llava

        model_dir = work / "model"
        if not (model_dir / "config.json").is_file():
            build_tiny_llava(model_dir, TinyLlavaSpec())
        phases.done("model")
    with ExitStack() as stack:
        images = stack.enter_context(image_server(cfg))
        (base, proc), (dead_base, dead_proc) = start_servers(stack, [
            (model_dir, *server_flags(cfg), work / "server.log"),
            (model_dir, "--served-model-name", MODEL, "--api-key", KEY, work / "server-dead-engine.log"),
        ])
        phases.done("start")
        tally, parts, failures = _load_checks(cfg, base, proc, images, phases)
        part, more = dead_engine(dead_base, dead_proc, cfg)
        phases.done("dead-engine")
    return SoakResult(tally, parts + [part], failures + more, work, str(phases))


def start_servers(stack: ExitStack, specs: list[tuple]) -> list[tuple[str, object]]:
    """Starts servers side by side (each spec: model dir, flags..., log path); ``stack`` stops them.
    The dead-engine server starts with the first and then idles (~1 % of a core) until its turn."""
    from server.child_process import running_server

    managers = [running_server(model, *flags, log_path=log) for model, *flags, log in specs]
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
    for manager, future in zip(managers, futures):
        if future.exception() is None:
            stack.push(manager.__exit__)
    return [future.result() for future in futures]  # a failed start raises; the stack stops the others


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=SoakConfig.seconds, help="load budget (warm-up included)")
    p.add_argument("--max-requests", type=int, default=SoakConfig.max_requests)
    p.add_argument("--concurrency", type=int, default=SoakConfig.concurrency)
    p.add_argument("--max-inflight", type=int, default=SoakConfig.max_inflight)
    p.add_argument("--model-dir", type=Path, help="serve this model instead of a tiny random one")
    p.add_argument("--work-dir", type=Path, help="keep the model and server logs here")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = SoakConfig(seconds=args.seconds, max_requests=args.max_requests, concurrency=args.concurrency,
                     max_inflight=args.max_inflight, model_dir=args.model_dir, work_dir=args.work_dir)
    result = run_soak(cfg)
    print(result.report(), flush=True)
    if not result.failures and args.work_dir is None:
        shutil.rmtree(result.work_dir, ignore_errors=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
