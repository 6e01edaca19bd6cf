"""Service settings: one pydantic-settings class, environment prefix ``TRANSERVE_``."""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def cores() -> int:
    """The CPU cores this process may use: those it may run on, within a cgroup (v2) CPU limit
    (a container's `--cpus`, a pod's `limits.cpu`), rounded up."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


class Settings(BaseSettings):
    """Every knob of the service. Environment: ``TRANSERVE_<NAME>`` (lists comma-separated)."""

    model_config = SettingsConfigDict(env_prefix="TRANSERVE_", extra="ignore")

    model_dir: Path = Field(Path("model"), description="folder of model bundles (one per sub-folder)")
    provider: Literal["auto", "cpu", "cuda"] = Field("auto", description="onnxruntime execution provider")
    threads: int = Field(
        0,
        ge=0,
        description="cores the onnxruntime calls use, divided among the continuous scheduler's decode workers "
        "(each call's intra-op threads: threads / workers); 0 = the cores this process may use (its CPU limit "
        "included) divided so, or with one worker onnxruntime's own default",
    )
    variant: Literal["", "fp32", "int8", "int8-blockwise", "int8-static"] = Field(
        "",
        description="bundle variant to load where a bundle has it (a bundle without it serves its default, with "
        "a warning); empty = each bundle's default",
    )
    thread_pool: Literal["shared", "per-session"] = Field(
        "shared",
        description="one onnxruntime thread pool for every session (spinning) or one per session (sleeping)",
    )
    memory_arena: bool = Field(
        False,
        description="onnxruntime CPU memory arena; off keeps resident memory flat under load at the same speed",
    )
    retain_freed_mb: int = Field(
        64,
        ge=0,
        le=1024,
        description="glibc malloc: arrays below this many MB come from the heap, and up to twice that of freed "
        "memory is kept for reuse (no page faults on each decoder step's large arrays); 0 = glibc's defaults",
    )
    target_vocab: bool = Field(
        True,
        description="decode each sentence with the output projection cut to its target language's pieces, where "
        "the bundle has target vocabularies (runtime/vocab.py); false = every piece of the vocabulary",
    )
    shortlist: bool = Field(
        True,
        description="decode each sentence with its lexical shortlist, where the bundle has one (runtime/shortlist.py): "
        "the output projection computed only for the pieces its source suggests and its language's frequent pieces; "
        "false = the target language's every piece",
    )
    beam_size: int = Field(1, ge=1, le=16, description="beam size when a request names none (1 = greedy)")
    max_beam_size: int = Field(8, ge=1, le=16, description="largest beam_size a request may ask for")
    max_alternatives: int = Field(5, ge=0, le=15, description="most alternatives a request may ask for")
    length_penalty: float = Field(1.0, ge=0, le=2, description="beam hypotheses ranked by score / length**this")
    require_all_models: bool = Field(False, description="/ready is 503 unless every bundle loads")
    max_loaded_models: int = Field(
        0,
        ge=0,
        description="translation bundles whose engines stay loaded at once: each is loaded at its first request "
        "(its manifest and checksums checked at start-up) and the least recently used idle one is unloaded to make "
        "room; classifiers always stay loaded. 0 = no bound: every bundle loaded at start-up",
    )
    cache_mb: int = Field(
        64,
        ge=0,
        description="an exact cache of sentence translations, in MB (estimated), least recently used evicted first: "
        "a sentence seen before with the same bundles, pair and decoding options is answered without decoding "
        "(outputs are batch-invariant, so exactly as a fresh decode); 64 MB holds about 90,000 sentences of 60 "
        "characters; 0 = off",
    )
    langid_model: str = Field("langid", description="classification bundle used for /detect and source=auto")

    max_chars: int = Field(5000, ge=1, description="max characters per request (all items together)")
    max_items: int = Field(64, ge=1, description="max texts in one request")
    max_pieces: int = Field(512, ge=1, description="max sentences in one request (after splitting); beyond, 413")
    max_file_chars: int = Field(
        100_000, ge=1, description="/translate_file: characters of text in one file; beyond, 413"
    )
    max_file_paragraphs: int = Field(5000, ge=1, description="/translate_file: paragraphs (lines, cues) in one file")
    max_file_elements: int = Field(
        200_000,
        ge=1,
        description="/translate_file: XML elements of a .docx/.odt (paragraphs, runs, table cells and the rest, "
        "empty ones included; an empty Word document has 18,600 in its styles), counted before the document is parsed; "
        "beyond, 413",
    )
    max_file_jobs: int = Field(
        2,
        ge=1,
        le=64,
        description="/translate_file: files in progress at once, each parsed and written in a thread of its own "
        "(never on the event loop); beyond, 503 + Retry-After",
    )
    file_ttl_s: float = Field(
        600.0, gt=0, description="a translated file can be downloaded this long, then it is deleted"
    )
    file_store_mb: int = Field(
        256,
        ge=1,
        description="/translate_file: the translated files kept for download, in MB all together; a file that "
        "does not fit (or a full disk) is 503 + Retry-After until the oldest expire, nothing of it kept",
    )
    public_url: str = Field(
        "",
        description="the base URL clients reach this service at (e.g. https://translate.example.org/mt); "
        "/translate_file's download links start with it. Empty: from a trusted proxy's X-Forwarded-Host and "
        "X-Forwarded-Proto, else the address the request reached (never the Host header, which a client chooses)",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="request bodies larger than this get 413")
    batching: bool = Field(True, description="merge concurrent requests into shared model calls")
    scheduler: Literal["continuous", "batch"] = Field(
        "continuous",
        description="continuous: greedy sentences join and leave a running decode batch at every step; batch: "
        "concurrent requests are merged into batches that run to their end",
    )
    max_batch_size: int = Field(32, ge=1, description="max sentences per model call (rows of a running decode batch)")
    max_batch_tokens: int = Field(
        8192, ge=128, description="max tokens (padded sources + cache slots) in a running decode batch"
    )
    decode_lanes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [24],
        description="source lengths (tokens) splitting each model's sentences into running batches of their own "
        "(short sentences do not pay for the long ones' widths); empty = one batch per model and target language "
        "(the default in sessions 13-14: 25% more capacity than [24] on one worker; with two decode workers the "
        "same capacity and a shorter tail, BENCHMARKS.md section 12)",
    )
    decode_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="continuous scheduler: worker threads, each stepping running batches of its own on its "
        "share of the cores (0 = auto: 2 on 2 or more CPU cores, or with layout_probe the start-up probe's pick "
        "of one worker on every core or two (service/probe.py), else 1; 1 on CUDA). On 2 vCPUs two "
        "1-thread workers decode 1.3-1.5x the rows of one 2-thread worker (BENCHMARKS.md section 12)",
    )
    admission: Literal["hybrid", "fifo", "round-robin", "shortest-first"] = Field(
        "hybrid",
        description="which waiting sentences join a running batch first: hybrid: requests of 1-2 sentences left "
        "in turn, then longer ones in arrival order; round-robin: one per waiting request in turn; fifo: in "
        "arrival order; shortest-first: the requests with the fewest sentences left (over 1 s waiting: first)",
    )
    beam_stepped: bool = Field(
        True,
        description="continuous scheduler: a beam-search batch (beam_size > 1, alternatives) takes one decoder step "
        "per worker turn beside the running batches; false: it runs whole between two of their steps, and greedy "
        "requests beside beam traffic wait for it (BENCHMARKS.md section 11)",
    )
    layout_probe: bool = Field(
        False,
        description="with threads and decode workers on auto, on 2+ CPU cores, time one worker on every core "
        "against two at start-up and keep the faster (service/probe.py). Off by default: on a 2-vCPU Zen 3 the "
        "decoder-step probe picked one worker at every idle start while two served more requests over HTTP "
        "(Poisson mix capacity 51 vs 59 req/s, BENCHMARKS.md section 14)",
    )
    loop_guard: bool = Field(
        True,
        description="decoding never makes an output repeat one piece 4 times or a sequence of 2-8 pieces 3 times in "
        "a row unless its source does (the row takes its next-best token; greedy, beam and the running batches; "
        "service/runtime/loop_guard.py); false: off",
    )
    html_alignment: bool = Field(
        True,
        description="format=html: carry inline elements by the model's word alignment (forced decoding of the "
        "block's translation) where its bundle has one; false: by the word search alone",
    )
    glossary_dir: Path | None = Field(
        None,
        description="folder of server-side glossaries, `<source>-<target>.tsv` (term<TAB>translation a line, # "
        "comments), applied to every translation of the pair under a request's own `glossary`; reloaded when a "
        "file changes (checked at most once a second). Unset: request glossaries only",
    )
    max_glossary_terms: int = Field(
        256, ge=0, le=10000, description="most terms a request's `glossary` may hold (0: request glossaries refused)"
    )
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests")
    max_queue: int = Field(2048, ge=1, description="max sentences waiting; beyond it requests get 503")
    max_queue_tokens: int = Field(
        65536, ge=128, description="max source tokens waiting; beyond it 503 (one request beyond it alone: 413)"
    )
    max_inflight_requests: int = Field(
        512, ge=0, description="model requests being handled at once; beyond it 503 at once (0 = no cap)"
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="a model request's body must arrive within this; else 408 (it holds no slot meanwhile)"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="a request still waiting after this gets 504")
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="on SIGTERM, accepted work gets this long; what is left then is answered 503 and the process "
        "exits (within this + 5 s: keep the orchestrator's grace period above that)",
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins; empty = CORS closed"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API keys; empty = no key needed"
    )
    open_operational_endpoints: bool = Field(
        False,
        description="with API keys set, /metrics, /models, /docs and /openapi.json answer without a key too",
    )
    rate_limit_per_minute: int = Field(
        0, ge=0, description="requests per minute per API key or client IP (failed ones count against the IP); 0 = off"
    )
    rate_limit_by: Literal["sentences", "requests"] = Field(
        "sentences",
        description="what the rate limit counts: sentences (after splitting; a request costs at least one, so a "
        "client's share of the models follows its work) or requests",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses whose X-Forwarded-For names the client (e.g. your load balancer); none by default",
    )

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535, description="0 = any free port")
    keep_alive_s: int = Field(
        65,
        gt=0,
        description="idle keep-alive connections are closed after this; longer than clients' pool expiry "
        "(httpx 5 s, aiohttp 15 s, Go 90 s... a proxy's own is usually 60 s) so that a client never reuses a "
        "connection the server is closing",
    )
    backlog: int = Field(4096, ge=1, description="listen backlog: connections the kernel queues before accept")
    max_header_bytes: int = Field(16384, ge=1024, description="a request head (request line + headers) larger: 431")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head begun and not complete after this: 408")
    max_connections_per_client: int = Field(
        1024,
        ge=0,
        description="open connections per client address (trusted proxies exempt); beyond, the request head is "
        "answered 429 + Retry-After and the connection closed (0 = no bound). Above what a NAT'ed office of browsers "
        "opens (6 each); docs/reliability.md has the measurement",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    access_log: bool = Field(True, description="one log line per request (method, path, status, ms, client)")

    def workers(self, cuda: bool = False) -> int:
        """The continuous scheduler's decode workers (`decode_workers`, 0 = auto)."""
        if self.scheduler != "continuous" or not self.batching:
            return 1
        if self.decode_workers:
            return self.decode_workers
        return 1 if cuda or cores() < 2 else 2

    def intra_threads(self, cuda: bool = False) -> int:
        """onnxruntime intra-op threads per session call: `threads` (or, 0, the cores this
        process may use) divided among the decode workers; 0 (onnxruntime's own default) when
        `threads` is 0 and there is one worker."""
        workers = self.workers(cuda)
        if not self.threads and workers == 1:
            return 0
        return max(1, (self.threads or cores()) // workers)

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("public_url must be an http:// or https:// URL without a query or fragment")
        return value

    @field_validator("glossary_dir", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("decode_lanes", mode="before")
    @classmethod
    def _comma_separated_ints(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(v) for v in value.split(",") if v.strip()]
        return value

    @field_validator("cors_origins", "api_keys", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
