"""The ``llm`` judge: an OpenAI-compatible chat model grades each item under a rubric.

Pure like every judge: no database, no Prefect. ``score`` runs its own asyncio loop
(httpx) with bounded concurrency, an optional requests-per-second limit, a per-request
timeout, and retries with exponential backoff and full jitter for 429, 5xx, timeouts
and connection errors only (a ``Retry-After`` on 429/503 is honoured); any other 4xx
fails at once. Every verdict's ``raw`` records the model, the reply (first 500
characters) and the token usage. At most ``max_reply_bytes`` of a reply are read
(``TUNIX_RT_LLM_MAX_REPLY_BYTES``, default 256 KiB); a longer one is not retried.

Hostile input (the candidate writes the response, and may write it for the grader):
the item's texts are delimited by markers with a per-request random boundary that no
text contains (``tunix_rt.judges.rubrics``), and the grade is only the reply's last
top-level JSON object, which must be exactly ``{"score": <number in [0, 1]>,
"rationale": <text>}`` (the rationale optional): a grade the grader quotes from the
response and then overrules is ignored. The reply is read without recursion, to a
bounded depth; whatever goes wrong with one item's reply costs that item (unscored,
with the reason), never the other items' verdicts or their cache entries.

Wrong and unscored (the rule of ``tunix_rt.judges.base``): an empty or
whitespace-only response is a wrong answer, a scored 0 given without asking the
model (it costs nothing). Unscored, with the reason, are only the judge's own
failures: the item has no reference and the rubric needs one (checked first, so
such an item is unscored whatever its response), the provider kept failing or
refused the request, its reply is over the size cap, or the reply's last JSON object
is not a grade in the schema.

Capabilities: it caches (``cache``), samples (``variant`` changes the seed) and
costs (``ledger``: calls, retries, cache hits and tokens of the last ``score()``).
An optional cache (``get_many``/``put_many``) returns stored verdicts without a call;
its key covers everything that decides the verdict (see ``cache_key``). Only verdicts
the model gave are stored, so a re-run retries the items that failed. They are stored
as they are bought, in batches (``CACHE_BATCH`` verdicts, and at least every
``CACHE_FLUSH_S``), while the other items are still being asked: a process killed
mid-scoring loses at most its last second's verdicts, and its re-run pays for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunix_rt import retrying
from tunix_rt.judges.base import Item, Ledger, ScoringContext, Verdict, is_empty
from tunix_rt.judges.registry import register_judge
from tunix_rt.judges.rubrics import PRESETS, Rubric, build_messages, resolve_rubric, rubric_hash

if TYPE_CHECKING:  # httpx is imported when a judge first calls its provider
    import httpx

    from tunix_rt import settings as tunix_settings

NAME = "llm"
VERSION = "1.1"  # 1.1: delimited prompt, last-object grade in the schema, capped reply
REPLY_CHARS = 500  # how much of the model's reply a verdict keeps
MAX_REPLY_BYTES = 256 * 1024  # the default cap on one provider reply
CACHE_BATCH = 50  # bought verdicts per cache write while scoring goes on
CACHE_FLUSH_S = 1.0  # the longest a bought verdict waits for its cache write

log = logging.getLogger(__name__)


class JudgeConfigError(ValueError):
    """The LLM judge is not configured (or configured with impossible values)."""


@dataclass(frozen=True, slots=True, repr=False)
class LLMConfig:
    """Where the judge model is and how to call it (the repr hides the API key)."""

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    seed: int | None = 0
    max_concurrency: int = 8
    requests_per_second: float | None = None
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 0.5
    preset: str = "default"
    max_backoff_s: float = 60.0  # cap on one wait, Retry-After included
    max_reply_bytes: int = MAX_REPLY_BYTES  # the most of one reply's body that is read

    def __post_init__(self) -> None:
        if not self.base_url:
            raise JudgeConfigError("LLMConfig.base_url is empty")
        if not self.model:
            raise JudgeConfigError("LLMConfig.model is empty")
        if self.max_concurrency < 1:
            raise JudgeConfigError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise JudgeConfigError(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise JudgeConfigError("max_retries and backoff_s must be >= 0 and timeout_s > 0")
        if self.max_reply_bytes < 1:
            raise JudgeConfigError(f"max_reply_bytes must be >= 1, got {self.max_reply_bytes}")
        if self.preset not in PRESETS:
            raise JudgeConfigError(f"unknown prompt preset {self.preset!r}; presets: {', '.join(PRESETS)}")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["api_key"] is not None:
            shown["api_key"] = "**********"
        return f"LLMConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_settings(cls, settings: tunix_settings.Settings | None = None,
                      **overrides: Any) -> LLMConfig:
        """The endpoint and knobs of the ``TUNIX_RT_LLM_*`` settings (default: read now).

        Knobs left unset keep this class's defaults; ``overrides`` win over both. Raises
        ``JudgeConfigError`` naming the variables that are unset.
        """
        if settings is None:
            from tunix_rt import settings as tunix_settings

            settings = tunix_settings.get_settings()
        base_url = (settings.llm_base_url or "").strip()
        model = (settings.llm_model or "").strip()
        missing = [name for name, value in (("TUNIX_RT_LLM_BASE_URL", base_url),
                                            ("TUNIX_RT_LLM_MODEL", model)) if not value]
        if missing:
            raise JudgeConfigError(
                f"the llm judge is not configured: set {' and '.join(missing)} (an OpenAI-compatible "
                "endpoint such as http://localhost:8000/v1, and the model it serves; "
                "TUNIX_RT_LLM_API_KEY if it needs one)")
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        knobs = {"max_concurrency": settings.llm_max_concurrency,
                 "requests_per_second": settings.llm_requests_per_second,
                 "timeout_s": settings.llm_timeout_s, "preset": settings.llm_preset,
                 "max_reply_bytes": settings.llm_max_reply_bytes}
        knobs = {key: value for key, value in knobs.items() if value is not None}
        return cls(base_url=base_url, model=model, api_key=api_key or None,
                   **{**knobs, **overrides})


class VerdictCache(Protocol):
    """Where the judge keeps verdicts: a dict per key (see ``cache_key``).

    ``put_many`` is called while scoring goes on, from a worker thread (one call at a
    time), so that the event loop keeps reading replies during a slow write.
    """

    def get_many(self, keys: list[str]) -> dict[str, dict]: ...

    def put_many(self, entries: dict[str, dict]) -> None: ...


class MemoryCache:
    """An in-process ``VerdictCache`` (tests, one-off scripts)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        with self._lock:
            return {k: json.loads(json.dumps(self.entries[k])) for k in keys if k in self.entries}

    def put_many(self, entries: dict[str, dict]) -> None:
        with self._lock:
            self.entries.update(json.loads(json.dumps(entries)))


def cache_key(*, judge: str, version: str, rubric_hash: str, model: str, temperature: float,
              seed: int | None, preset: str, item_id: str, prompt: str | None, response: str,
              reference: str | None) -> str:
    """The sha256 (hex) of everything that decides one item's verdict."""
    parts = [judge, version, rubric_hash, model, float(temperature), seed, preset, item_id,
             prompt, response, reference]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


# --- parsing the model's reply ------------------------------------------------------------

class ReplyError(ValueError):
    """The model's reply is not a usable grade; the message says why."""


MAX_DEPTH = 32  # the deepest nesting a reply may have; a grade needs 1
_STRUCTURE = re.compile(r'["{}\[\]]')
_OPEN = re.compile(r"[{\[]")
_STRING_END = re.compile(r'["\\]')
_GRADE_KEYS = frozenset({"score", "rationale"})


class _Budget:
    """Bounds the scan of one reply: its work is linear in the reply's length."""

    def __init__(self, text: str) -> None:
        self.left = 16 * len(text) + 10_000

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ReplyError("reply is too convoluted to read (unbalanced brackets throughout)")


def _span_end(text: str, start: int, budget: _Budget) -> int | None:
    """Where the bracketed span opening at ``start`` closes (exclusive), or None if it
    never does. Iterative, strings skipped; deeper than ``MAX_DEPTH`` is a ``ReplyError``."""
    closers: list[str] = []
    pos = start
    while True:
        match = _STRUCTURE.search(text, pos)
        if match is None:
            return None
        budget.spend()
        char, pos = match.group(), match.end()
        if char == '"':
            while True:  # to the string's closing quote, escapes skipped
                match = _STRING_END.search(text, pos)
                if match is None:
                    return None
                budget.spend()
                if match.group() == "\\":
                    pos = match.end() + 1
                    continue
                pos = match.end()
                break
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
            if len(closers) > MAX_DEPTH:
                raise ReplyError(f"reply nests deeper than {MAX_DEPTH} levels")
        elif char != closers[-1]:
            return None
        else:
            closers.pop()
            if not closers:
                return pos


def _top_level_objects(text: str) -> list[tuple[Any, int]]:
    """Every top-level JSON object in ``text`` (with prose, fences, anything around
    them), in order, each with where it ends. An object or array inside another value
    is not top level; a bracketed span that is not JSON is looked into for one."""
    budget = _Budget(text)
    found: list[tuple[Any, int]] = []
    pos = 0
    while True:
        match = _OPEN.search(text, pos)
        if match is None:
            return found
        start = match.start()
        end = _span_end(text, start, budget)
        if end is None:
            pos = start + 1
            continue
        try:
            value = json.loads(text[start:end])
        except (ValueError, RecursionError):
            pos = start + 1
            continue
        if isinstance(value, dict):
            found.append((value, end))
        pos = end


def parse_reply(content: str) -> tuple[float, str]:
    """(score, rationale) from the model's reply; ``ReplyError`` says what is wrong.

    The grade is the reply's last top-level JSON object, and it must be exactly
    ``{"score": <number in [0, 1]>, "rationale": <text>}`` (the rationale optional).
    Objects before it (a grade quoted from the response, say) are ignored; a reply
    that goes on, after its last object, to what looks like an unreadable grade is
    refused rather than graded by an earlier object.
    """
    if not content or not content.strip():
        raise ReplyError("reply is empty")
    objects = _top_level_objects(content)
    if not objects:
        raise ReplyError(f"reply is not JSON: {_clip(content.strip(), 80)!r}")
    data, end = objects[-1]
    tail = content[end:]
    brace = tail.find("{")
    if brace >= 0 and "score" in tail[brace:].lower():
        raise ReplyError(f"reply ends with a grade that is not JSON: {_clip(tail[brace:].strip(), 80)!r}")
    return _grade(data)


def _grade(data: dict[str, Any]) -> tuple[float, str]:
    """(score, rationale) of a grade object in the schema, else ``ReplyError``."""
    if "score" not in data:
        raise ReplyError(f"reply has no \"score\": {_clip(json.dumps(data), 80)}")
    extra = sorted(set(data) - _GRADE_KEYS)
    if extra:
        raise ReplyError(f"reply's grade has keys outside the schema: {_clip(json.dumps(extra), 80)}")
    raw_score = data["score"]
    if isinstance(raw_score, bool) or not isinstance(raw_score, int | float):
        shown = repr(raw_score) if isinstance(raw_score, str) else json.dumps(raw_score)
        raise ReplyError(f"score {_clip(shown, 40)} is not a number")
    try:
        score = float(raw_score)
    except OverflowError:  # an integer too large for a float
        raise ReplyError("score is outside [0, 1]") from None
    if math.isnan(score):
        raise ReplyError("score is NaN")
    if not 0.0 <= score <= 1.0:
        raise ReplyError(f"score {score:g} is outside [0, 1]")
    rationale = data.get("rationale", "")
    if not isinstance(rationale, str):
        raise ReplyError(f"rationale {_clip(json.dumps(rationale), 40)} is not text")
    return score, rationale.strip()


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --- calling the provider -----------------------------------------------------------------

_TLS: Any = None
_TLS_LOCK = threading.Lock()


def tls_context() -> Any:
    """The process's one TLS context for provider clients (certifi's CA bundle, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built on first use.

    httpx builds a context, loading the whole CA bundle, for every new client, even
    one that only speaks plain HTTP: 20-30 ms on a quiet machine, over 150 ms on a
    loaded one. ``score`` makes a client per call, and chunked scoring calls it per
    chunk, so that load was paid again and again, before any request went out.
    """
    global _TLS
    with _TLS_LOCK:
        if _TLS is None:
            import httpx

            _TLS = httpx.create_ssl_context()
        return _TLS


class _Lanes:
    """At most ``size`` requests in flight, each on a client of its own with one connection.

    One httpx client holding c connections scans all of them whenever a request starts
    or ends (httpcore's pool polls each idle connection's socket for a server-side
    close, rebuilding an attribute map apiece): O(c) per request. On a loaded machine,
    where replies land unevenly and many connections sit idle, that scan took over a
    third of the judge's CPU at concurrency 16 (2.0-2.8 ms a request against 1.3-1.45);
    on a quiet one, a few percent. A client per slot keeps the scan at the one
    connection it holds. A lease is taken per attempt, so a retry's backoff frees its
    slot for other items, as a semaphore did.
    """

    def __init__(self, size: int, timeout_s: float) -> None:
        from urllib.request import getproxies

        self._slots = asyncio.Semaphore(size)
        self._timeout_s = timeout_s
        # Proxies from the environment (all that trust_env decides, given our TLS context),
        # looked up once: a client with trust_env reads and parses the whole environment
        # when it is made (3-4 ms on a loaded machine), for each slot.
        self._env_proxies = bool(getproxies())
        self._idle: list[httpx.AsyncClient] = []  # last used first: its connection is warm
        self._all: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> _Lanes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self._all:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        async with self._slots:
            client = self._idle.pop() if self._idle else self._new_client()
            try:
                yield client
            finally:
                self._idle.append(client)

    def _new_client(self) -> httpx.AsyncClient:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        client = httpx.AsyncClient(timeout=self._timeout_s, limits=limits, verify=tls_context(),
                                   trust_env=self._env_proxies)
        self._all.append(client)
        return client


class _RateLimiter:
    """A token bucket of capacity one: at most ``rate`` acquisitions per second."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            now = loop.time()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(slots=True)
class _Outcome:
    content: str | None = None  # the reply's message content, on success
    error: str | None = None  # why there is no content
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the (decoded) body, and whether there was more."""
    declared = response.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > cap:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


class _CacheWriter:
    """Writes bought verdicts to the cache while the other items are still being asked.

    A batch goes out when it holds ``batch`` verdicts or ``interval`` seconds after the
    previous one, from one task (so writes never overlap) through a worker thread. A
    write that fails keeps its verdicts for the next one; only the last write, at
    ``close``, raises, as the single write at the end of scoring used to.
    """

    def __init__(self, cache: VerdictCache, batch: int = CACHE_BATCH,
                 interval: float = CACHE_FLUSH_S) -> None:
        self.cache = cache
        self.batch = batch
        self.interval = interval
        self.pending: dict[str, dict] = {}
        self.writes = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, key: str, entry: dict) -> None:
        self.pending[key] = entry
        if len(self.pending) >= self.batch:
            self._wake.set()

    async def close(self) -> None:
        """Write what is pending, and stop; raises when that last write fails."""
        self._closing = True
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            closing = self._closing
            await self._flush(last=closing)
            if closing:
                return

    async def _flush(self, *, last: bool) -> None:
        if not self.pending:
            return
        entries, self.pending = self.pending, {}
        try:
            await asyncio.to_thread(self.cache.put_many, entries)
        except Exception as exc:
            self.pending = {**entries, **self.pending}
            if last:
                raise
            log.warning("could not write %d verdicts to the judge cache (%s: %s); "
                        "trying again with the next batch", len(entries), type(exc).__name__, exc)
        else:
            self.writes += 1


class LLMJudge:
    """Asks a chat model to grade each item under a rubric; passed = score >= 0.5.

    An empty response is wrong without a call; a missing reference (when the rubric
    needs one), a failing provider and an unreadable grade are unscored.
    """

    name = NAME
    version = VERSION
    ledger: Ledger  # what the last score() spent

    def __init__(self, rubric: Rubric | str | Path = "correctness", config: LLMConfig | None = None,
                 cache: VerdictCache | None = None) -> None:
        self.rubric = resolve_rubric(rubric)
        self.rubric_hash = rubric_hash(self.rubric)
        self.config = config if config is not None else LLMConfig.from_settings()
        self.cache = cache
        self.requires_reference = self.rubric.requires_reference
        self.ledger = Ledger()

    # The Judge protocol ---------------------------------------------------------------

    def score(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """Return one verdict per item, in the order given."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ascore(items, context))
        # Called from async code: run our loop in a thread rather than fail.
        result: list[list[Verdict]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(asyncio.run(self.ascore(items, context)))
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=run, name="llm-judge")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    async def ascore(self, items: Sequence[Item], context: ScoringContext) -> list[Verdict]:
        """``score`` for callers that already run an event loop."""
        self.ledger = ledger = Ledger()
        verdicts: list[Verdict | None] = [None] * len(items)
        keys: dict[int, str] = {}
        for i, item in enumerate(items):
            if self.requires_reference and (item.reference is None or not item.reference.strip()):
                verdicts[i] = self._unscored(item, f"item has no reference; rubric {self.rubric.name!r} "
                                                   "needs one")
            elif is_empty(item.response):
                verdicts[i] = Verdict.wrong(item.id, "empty response", judge=self.name,
                                            judge_version=self.version,
                                            raw={"model": self.config.model,
                                                 "rubric": self.rubric.name, "attempts": 0})
            else:  # without a cache no key is needed: hashing every item is not free
                keys[i] = self.key_for(item) if self.cache is not None else ""

        if self.cache is not None and keys:
            hits = self.cache.get_many(list(dict.fromkeys(keys.values())))
            for i, key in list(keys.items()):
                if key in hits:
                    verdicts[i] = self._from_cache(items[i], hits[key])
                    ledger.cache_hits += 1
                    del keys[i]

        if keys:
            cfg = self.config
            limiter = _RateLimiter(cfg.requests_per_second) if cfg.requests_per_second else None
            async with _Lanes(cfg.max_concurrency, cfg.timeout_s) as lanes:
                writer = _CacheWriter(self.cache) if self.cache is not None else None
                try:
                    fresh = await asyncio.gather(*(
                        self._judge_and_keep(lanes, limiter, items[i], keys[i], writer)
                        for i in keys))
                finally:  # what was bought is kept, also when scoring is cut short
                    if writer is not None:
                        await writer.close()
            for i, verdict in zip(keys, fresh):
                verdicts[i] = verdict
        return [v for v in verdicts if v is not None]

    def variant(self, seed_offset: int) -> LLMJudge:
        """The same judge sampling with another seed and no cache (self-consistency)."""
        import dataclasses

        seed = (self.config.seed or 0) + seed_offset
        return LLMJudge(rubric=self.rubric, config=dataclasses.replace(self.config, seed=seed))

    # Pieces ---------------------------------------------------------------------------

    def key_for(self, item: Item) -> str:
        """The cache key of ``item`` under this judge's rubric and configuration."""
        cfg = self.config
        return cache_key(judge=self.name, version=self.version, rubric_hash=self.rubric_hash,
                         model=cfg.model, temperature=cfg.temperature, seed=cfg.seed,
                         preset=cfg.preset, item_id=item.id, prompt=item.prompt,
                         response=item.response, reference=item.reference)

    def request_body(self, item: Item) -> dict[str, Any]:
        """The chat-completions request for ``item`` (a fresh boundary on every call;
        an item's retries resend the same body)."""
        body: dict[str, Any] = {"model": self.config.model,
                                "messages": build_messages(self.rubric, item, self.config.preset),
                                "temperature": self.config.temperature}
        if self.config.seed is not None:
            body["seed"] = self.config.seed
        return body

    async def _judge_and_keep(self, lanes: _Lanes, limiter: _RateLimiter | None, item: Item,
                              key: str, writer: _CacheWriter | None) -> Verdict:
        """``_judge_safely``, and a scored verdict handed to the cache writer at once."""
        verdict = await self._judge_safely(lanes, limiter, item)
        if writer is not None and verdict.scored:
            writer.add(key, {"score": verdict.score, "passed": verdict.passed,
                             "rationale": verdict.rationale, "raw": dict(verdict.raw or {})})
        return verdict

    async def _judge_safely(self, lanes: _Lanes, limiter: _RateLimiter | None,
                            item: Item) -> Verdict:
        """``_judge_one``, whose failure costs this item only (unscored, with the reason)."""
        try:
            return await self._judge_one(lanes, limiter, item)
        except Exception as exc:  # one item's trouble must not sink the others' verdicts
            return self._unscored(item, f"the judge failed on this item: {type(exc).__name__}: "
                                        f"{_clip(str(exc), 200)}")

    async def _judge_one(self, lanes: _Lanes, limiter: _RateLimiter | None,
                         item: Item) -> Verdict:
        outcome = await self._call(lanes, limiter, item)
        raw: dict[str, Any] = {"model": self.config.model, "rubric": self.rubric.name,
                               "rubric_hash": self.rubric_hash, "attempts": outcome.attempts,
                               "usage": outcome.usage}
        if outcome.content is None:
            return self._unscored(item, outcome.error or "no reply", raw)
        raw["reply"] = outcome.content[:REPLY_CHARS]
        try:
            score, rationale = parse_reply(outcome.content)
        except ReplyError as exc:
            return self._unscored(item, str(exc), raw)
        except RecursionError:  # parse_reply does not recurse; this is a second line
            return self._unscored(item, "reply nests too deeply to read", raw)
        return Verdict(item_id=item.id, score=score, passed=score >= 0.5,
                       rationale=rationale or "(the judge model gave no rationale)",
                       judge=self.name, judge_version=self.version, raw=raw)

    async def _call(self, lanes: _Lanes, limiter: _RateLimiter | None, item: Item) -> _Outcome:
        import httpx

        cfg = self.config
        body: dict[str, Any] | None = None  # built when a slot is first free, kept for retries
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        max_attempts = cfg.max_retries + 1
        outcome = _Outcome()
        last_error = ""
        for attempt in range(1, max_attempts + 1):
            outcome.attempts = attempt
            retry_after: str | None = None  # the header, honoured on 429 and 503 only
            async with lanes.lease() as client:
                if body is None:  # not before: the waiting items would delay the first requests
                    body = self.request_body(item)
                if limiter is not None:
                    await limiter.acquire()
                self.ledger.calls += 1
                try:
                    async with asyncio.timeout(cfg.timeout_s):
                        async with client.stream("POST", url, json=body, headers=headers) as response:
                            payload, oversize = await _read_capped(response, cfg.max_reply_bytes)
                except (TimeoutError, httpx.TimeoutException):
                    response, last_error = None, f"timed out after {cfg.timeout_s:g} s"
                except httpx.TransportError as exc:
                    response, last_error = None, f"connection error: {type(exc).__name__}: {exc}"
            if response is not None:
                status = response.status_code
                if status == 200 and oversize:  # asking again would buy the same flood
                    outcome.error = (f"provider reply is over the {cfg.max_reply_bytes}-byte cap "
                                     "(TUNIX_RT_LLM_MAX_REPLY_BYTES)")
                    return outcome
                if status == 200:
                    return self._read_success(payload, outcome)
                detail = _clip(payload.decode("utf-8", "replace").strip(), 200)
                last_error = f"HTTP {status}" + (f": {detail}" if detail else "")
                if status != 429 and status < 500:
                    outcome.error = f"provider rejected the request: {last_error}"
                    return outcome
                if status in (429, 503):
                    retry_after = response.headers.get("retry-after")
            if attempt == max_attempts:
                break
            self.ledger.retries += 1
            await asyncio.sleep(retrying.retry_delay(attempt, base=cfg.backoff_s,
                                                     cap=cfg.max_backoff_s,
                                                     retry_after=retry_after))
        outcome.error = f"provider failed after {outcome.attempts} attempts: {last_error}"
        return outcome

    def _read_success(self, payload: bytes, outcome: _Outcome) -> _Outcome:
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            text = payload.decode("utf-8", "replace")
            outcome.error = f"provider reply is not a chat completion: {_clip(text, 200)!r}"
            return outcome
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        outcome.usage = usage
        for field_name, ledger_name in (("prompt_tokens", "tokens_in"), ("completion_tokens", "tokens_out")):
            value = usage.get(field_name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self.ledger, ledger_name, getattr(self.ledger, ledger_name) + value)
        if not isinstance(content, str):
            outcome.error = "provider reply has no text content"
            return outcome
        outcome.content = content
        return outcome

    def _from_cache(self, item: Item, entry: Mapping[str, Any]) -> Verdict:
        return Verdict(item_id=item.id, score=entry["score"], passed=entry["passed"],
                       rationale=entry["rationale"], judge=self.name, judge_version=self.version,
                       raw=dict(entry.get("raw") or {}))

    def _unscored(self, item: Item, reason: str, raw: Mapping[str, Any] | None = None) -> Verdict:
        return Verdict.unscored(item.id, reason, judge=self.name, judge_version=self.version,
                                raw=raw if raw is not None else {"model": self.config.model,
                                                                 "rubric": self.rubric.name})


@register_judge(NAME, version=VERSION, requires_reference=True,
                description="an OpenAI-compatible chat model grades each item under a rubric")
def llm_judge(rubric: Rubric | str = "correctness", config: LLMConfig | None = None,
              cache: VerdictCache | None = None) -> LLMJudge:
    """Build the LLM judge; without ``config`` it reads TUNIX_RT_LLM_* (only now, not at import)."""
    return LLMJudge(rubric=rubric, config=config, cache=cache)


__all__ = ["JudgeConfigError", "LLMConfig", "LLMJudge", "Ledger", "MemoryCache", "ReplyError",
           "VerdictCache", "cache_key", "llm_judge", "parse_reply"]
