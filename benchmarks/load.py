"""HTTP load on the real service: a `python -m service` process on loopback, driven by an
asyncio HTTP client in this (second) process (raw keep-alive HTTP/1.1: cheap enough
that the server, not the client, is what gets measured). Three modes:

    # throughput and latency at several concurrencies, dynamic batching on and off
    python benchmarks/load.py sweep --concurrency 1 8 32 64 --seconds 15 --out benchmarks/results/http.json

    # a burst of 4x the sustainable load: 503 + Retry-After for the excess, every accepted
    # request answered, no growth, throughput back at once afterwards
    python benchmarks/load.py overload --factor 4 --seconds 10 --out benchmarks/results/overload.json

    # minutes at ~80% of capacity: errors and resident memory over time
    python benchmarks/load.py soak --minutes 10 --fraction 0.8 --out benchmarks/results/soak.json

    # the old batcher vs continuous batching, one after the other on the same load: open-loop
    # Poisson arrivals of a realistic mix at 50/80/95% of the old batcher's capacity; short
    # requests beside a stream of long paragraphs; 300 abandoned paragraphs
    python benchmarks/load.py poisson --model-dir model --seconds 30 --out benchmarks/results/poisson.json

    # one-sentence greedy requests beside requests with alternatives (beam search): beam batches
    # stepped beside the running batches vs run whole between two of their steps
    python benchmarks/load.py beam-beside --model-dir model --seconds 8 --out benchmarks/results/beam-beside.json

Requests are de->en sentences of test_2016_flickr (`--data`), either one sentence per request
(`single`) or 16 per request (`batch16`). Closed loop for `sweep` (each of `c` clients sends
its next request when the last one is answered); open loop (requests at a fixed rate, whatever
the answers do) for `overload` and `soak`. Every run is bounded in time and in requests.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

try:  # run as a script (python benchmarks/load.py) or as a module
    from machine import describe  # type: ignore[import-not-found, no-redef]
except ImportError:
    from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parents[1]


# -- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` in its own process, with TRANSERVE_* overrides."""

    def __init__(self, model_dir: Path, threads: int, **settings: object) -> None:
        self.port = free_port()
        env = {**os.environ, **{f"TRANSERVE_{k.upper()}": str(v) for k, v in settings.items()}}
        env["TRANSERVE_ACCESS_LOG"] = "false"
        env.setdefault("TRANSERVE_MAX_CONNECTIONS_PER_CLIENT", "0")  # the load comes from one address
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--model-dir", str(model_dir), "--threads", str(threads), "--log-level", "warning"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ready_s = self._wait_ready()

    def _wait_ready(self) -> float:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.base + "/ready", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready after 120 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """The server process's user + system CPU time so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def host_cpu() -> tuple[float, float]:
    """(all CPU time, stolen CPU time) of this machine so far, in seconds, from /proc/stat.
    Steal is time the hypervisor gave our virtual CPUs to someone else."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return sum(values[:8]) / tick, (values[7] if len(values) > 7 else 0) / tick


# -- the load -------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, answered (200) requests only
    statuses: dict[str, int] = field(default_factory=dict)
    sentences: int = 0
    retry_after_missing: int = 0
    wrong_answers: int = 0

    def add(self, status: str, latency: float, sentences: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == "200":
            self.latencies.append(latency)
            self.sentences += sentences

    def summary(self, seconds: float) -> dict:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 1) if lat else None

        errors = sum(n for s, n in self.statuses.items() if s not in ("200", "503", "429"))
        return {
            "seconds": round(seconds, 2),
            "requests": sum(self.statuses.values()),
            "answered": len(lat),
            "statuses": dict(sorted(self.statuses.items())),
            "errors": errors,
            "requests_per_s": round(len(lat) / seconds, 1),
            "sentences_per_s": round(self.sentences / seconds, 1),
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "retry_after_missing": self.retry_after_missing,
            "wrong_answers": self.wrong_answers,
        }


def load_sentences(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams, for a load generator that costs
    the server's cores as little CPU per request as it can: with httpx the load generator, not
    the server, was the bottleneck on a 2-core machine (BENCHMARKS.md, "HTTP under load"). At most
    `max_connections` connections: beyond them a request waits here, and that wait counts in
    its latency (measured from when it was due, so queueing in the client is not hidden)."""

    def __init__(self, base: str, max_connections: int) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def post_json(self, path: str, payload: dict) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        async with self.slots:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                try:
                    writer.write(head + body)
                    status_line = await reader.readline()
                except ConnectionError:
                    if not reused:
                        raise
                    status_line = b""  # reset before any answer: the same race as below
                if not status_line and reused:
                    # The server closed this idle keep-alive connection (its keep-alive timeout)
                    # as we reused it: a FIN gives an empty read, a request arriving just after
                    # the close gives a reset. No byte of an answer came, so, as HTTP clients do
                    # (and /translate is a pure function), send it again on a fresh connection.
                    writer.close()
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    writer.write(head + body)
                    status_line = await reader.readline()
                status = int(status_line.split()[1])
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                data = await reader.readexactly(int(headers.get("content-length", "0")))
            except BaseException:
                writer.close()
                raise
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self.idle.append((reader, writer))
            return status, headers, data

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class Load:
    def __init__(
        self, base: str, sentences: list[str], per_request: int, seed: int = 1, max_connections: int = 1024
    ) -> None:
        self.base, self.sentences, self.per_request = base, sentences, per_request
        self.rng = random.Random(seed)
        self.client = RawHTTP(base, max_connections)

    def body(self) -> dict:
        picked = [self.rng.choice(self.sentences) for _ in range(self.per_request)]
        return {"q": picked[0] if self.per_request == 1 else picked, "source": "de", "target": "en"}

    async def one(self, tally: Tally, due: float | None = None) -> None:
        """One request; latency from `due` (open loop: when it should have been sent) or now."""
        body = self.body()
        t0 = due if due is not None else time.perf_counter()
        try:
            status, headers, data = await asyncio.wait_for(self.client.post_json("/translate", body), 300)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
            tally.add(type(e).__name__, time.perf_counter() - t0, 0)
            return
        latency = time.perf_counter() - t0
        if status == 200:
            out = json.loads(data).get("translatedText")
            if self.per_request == 1:
                ok = isinstance(out, str) and bool(out)
            else:
                ok = isinstance(out, list) and len(out) == self.per_request and all(out)
            if not ok:
                tally.wrong_answers += 1
        elif status in (503, 429) and "retry-after" not in headers:
            tally.retry_after_missing += 1
        tally.add(str(status), latency, self.per_request)

    async def closed_loop(self, concurrency: int, seconds: float, max_requests: int) -> dict:
        tally, sent = Tally(), 0
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                await self.one(tally)

        t0 = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        return {"concurrency": concurrency, **tally.summary(time.perf_counter() - t0)}

    async def open_loop(self, rate: float, seconds: float, tally: Tally | None = None) -> dict:
        """`rate` requests per second for `seconds`, each sent on time whatever the others do."""
        tally = tally or Tally()
        tasks, t0 = [], time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(tally, due=t0 + i / rate)))
        await asyncio.gather(*tasks)
        return {"rate": rate, **tally.summary(time.perf_counter() - t0)}

    async def close(self) -> None:
        await self.client.close()


class MixLoad(Load):
    """A realistic mix: single sentences of everyday (Tatoeba), caption (Multi30k) and news
    length, and 16-sentence paragraphs (`weights`: each kind's share of the requests). Each
    request's kind and latency are tallied apart as well as together."""

    KINDS = ("tatoeba", "multi30k", "news", "paragraph16")

    def __init__(self, base: str, pools: dict[str, list[str]], weights: dict[str, float], seed: int = 1) -> None:
        super().__init__(base, pools["tatoeba"], 1, seed)
        self.seed, self.pools, self.weights = seed, pools, weights
        self.by_kind: dict[str, Tally] = {k: Tally() for k in weights}

    def pick(self) -> str:
        kinds = [k for k in self.weights if self.weights[k] > 0]
        return self.rng.choices(kinds, [self.weights[k] for k in kinds])[0]

    def body_of(self, kind: str, rng: random.Random | None = None) -> dict:
        rng = rng or self.rng
        if kind == "paragraph16":
            picked = [rng.choice(self.pools["tatoeba"] + self.pools["news"]) for _ in range(16)]
            return {"q": " ".join(picked), "source": "de", "target": "en"}
        return {"q": rng.choice(self.pools[kind]), "source": "de", "target": "en"}

    async def one_of(self, kind: str, tally: Tally, due: float | None = None, body: dict | None = None) -> None:
        body = body or self.body_of(kind)
        t0 = due if due is not None else time.perf_counter()
        try:
            status, headers, data = await asyncio.wait_for(self.client.post_json("/translate", body), 300)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as e:
            status, headers, data = type(e).__name__, {}, b""
        latency = time.perf_counter() - t0
        if status == 200 and not json.loads(data).get("translatedText"):
            tally.wrong_answers += 1
        elif status in (503, 429) and "retry-after" not in headers:
            tally.retry_after_missing += 1
        n = 16 if kind == "paragraph16" else 1
        tally.add(str(status), latency, n)
        self.by_kind[kind].add(str(status), latency, n)

    def plan(self, rate: float, seconds: float) -> list[tuple[float, str, dict]]:
        """The arrivals (seconds from the start, kind, body) of a Poisson load: drawn from the
        seed, the rate and the length alone, so that every server given the same load gets the
        same requests at the same moments (drawn while sending, they depended on the timing)."""
        rng = random.Random(f"{self.seed}:{rate:.6f}:{seconds}")
        kinds = [k for k in self.weights if self.weights[k] > 0]
        plan, at = [], 0.0
        while (at := at + rng.expovariate(rate)) < seconds:
            kind = rng.choices(kinds, [self.weights[k] for k in kinds])[0]
            plan.append((at, kind, self.body_of(kind, rng)))
        return plan

    async def poisson(self, rate: float, seconds: float) -> dict:
        """Open loop: requests at exponential intervals of mean 1/`rate`, each sent when due (the
        same requests for the same seed, rate and length: `plan`)."""
        tally, tasks = Tally(), []
        self.by_kind = {k: Tally() for k in self.weights}
        t0 = time.perf_counter()
        for offset, kind, body in self.plan(rate, seconds):
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one_of(kind, tally, t0 + offset, body)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        kinds = {
            k: {key: v for key, v in t.summary(wall).items() if key in ("answered", "p50_ms", "p95_ms", "p99_ms")}
            for k, t in self.by_kind.items()
        }
        return {"rate": round(rate, 2), **tally.summary(wall), "by_kind": kinds}

    async def saturate(self, concurrency: int, seconds: float) -> float:
        """Requests/s of the mix with `concurrency` clients always waiting (closed loop)."""
        tally = Tally()
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await self.one_of(self.pick(), tally)

        t0 = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        return len(tally.latencies) / (time.perf_counter() - t0)


# -- modes ----------------------------------------------------------------------------------


async def warm_up(base: str, sentences: list[str]) -> None:
    load = Load(base, sentences, 16)
    await load.closed_loop(4, 3.0, 10_000)
    await load.close()


async def sweep(args: argparse.Namespace, sentences: list[str]) -> dict:
    runs = []
    for batching in args.batching:
        server = Server(args.model_dir, args.threads, batching=batching == "on")
        try:
            await warm_up(server.base, sentences)
            for kind, per_request in (("single", 1), ("batch16", 16)):
                for c in args.concurrency:
                    load = Load(server.base, sentences, per_request)
                    row = await load.closed_loop(c, args.seconds, args.max_requests)
                    await load.close()
                    row.update(batching=batching, kind=kind, rss_mb=round(server.rss_mb(), 1))
                    print(json.dumps(row), flush=True)
                    runs.append(row)
        finally:
            server.stop()
    return {"mode": "sweep", "runs": runs}


async def capacity(base: str, sentences: list[str], seconds: float) -> float:
    """Sustainable single-sentence requests/s: closed loop at concurrency 32."""
    load = Load(base, sentences, 1)
    row = await load.closed_loop(32, seconds, 1_000_000)
    await load.close()
    return row["requests_per_s"]


async def overload(args: argparse.Namespace, sentences: list[str]) -> dict:
    server = Server(args.model_dir, args.threads, max_queue=args.max_queue, max_inflight_requests=args.max_inflight)
    result: dict = {"mode": "overload"}
    try:
        await warm_up(server.base, sentences)
        cap = await capacity(server.base, sentences, args.seconds)
        rss_before = server.rss_mb()
        load = Load(server.base, sentences, 1)
        burst = await load.open_loop(args.factor * cap, args.seconds)
        rss_after_burst = server.rss_mb()
        # recovery: the same closed loop as the capacity measurement, right after the burst
        after = await load.closed_loop(32, args.seconds, 1_000_000)
        await load.close()
        result |= {
            "capacity_requests_per_s": cap,
            "burst_factor": args.factor,
            "max_queue": args.max_queue,
            "max_inflight_requests": args.max_inflight,
            "burst": burst,
            "after": after,
            "recovery_ratio": round(after["requests_per_s"] / cap, 3),
            "rss_mb": {"before": round(rss_before, 1), "after_burst": round(rss_after_burst, 1)},
            "alive": server.proc.poll() is None,
        }
    finally:
        result["exit_code"] = server.stop()
    return result


async def soak(args: argparse.Namespace, sentences: list[str]) -> dict:
    arena = {} if args.memory_arena is None else {"memory_arena": args.memory_arena == "on"}
    if args.scheduler:
        arena["scheduler"] = args.scheduler
    server = Server(args.model_dir, args.threads, **arena)
    try:
        await warm_up(server.base, sentences)
        cap = await capacity(server.base, sentences, 10)
        rate = args.fraction * cap
        load = Load(server.base, sentences, 1)
        tally, samples = Tally(), []
        t0 = time.monotonic()
        total = args.minutes * 60
        while (elapsed := time.monotonic() - t0) < total:
            # Where the CPU went in this window: the server, this load generator, or (steal)
            # other tenants of the host; a slow window with high steal is the host, not us.
            w0, cpu0, (all0, steal0), me0 = time.monotonic(), server.cpu_seconds(), host_cpu(), time.process_time()
            window = await load.open_loop(rate, min(args.sample_seconds, total - elapsed), Tally())
            wall = time.monotonic() - w0
            all1, steal1 = host_cpu()
            for k, v in window["statuses"].items():
                tally.statuses[k] = tally.statuses.get(k, 0) + v
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_mb": round(server.rss_mb(), 1),
                    "requests_per_s": window["requests_per_s"],
                    "p50_ms": window["p50_ms"],
                    "p99_ms": window["p99_ms"],
                    "errors": window["errors"] + window["statuses"].get("503", 0),
                    "server_cpu_pct": round(100 * (server.cpu_seconds() - cpu0) / wall, 1),
                    "loadgen_cpu_pct": round(100 * (time.process_time() - me0) / wall, 1),
                    "host_steal_pct": round(100 * (steal1 - steal0) / max(all1 - all0, 1e-9), 1),
                }
            )
            print(json.dumps(samples[-1]), flush=True)
        await load.close()
        warm = [s["rss_mb"] for s in samples[len(samples) // 5 :]] or [samples[-1]["rss_mb"]]
        result = {
            "mode": "soak",
            "capacity_requests_per_s": cap,
            "rate": round(rate, 1),
            "minutes": args.minutes,
            "memory_arena": args.memory_arena or "service default",
            "statuses": tally.statuses,
            "rss_after_warmup_mb": warm[0],
            "rss_end_mb": samples[-1]["rss_mb"],
            "rss_max_mb": max(s["rss_mb"] for s in samples),
            "samples": samples,
        }
    finally:
        server.stop()
    return result


def load_pools(data: Path) -> dict[str, list[str]]:
    """German sources of the three lengths (validation and test splits only)."""
    return {
        "tatoeba": load_sentences(data / "tatoeba-de-en/valid.de.gz"),
        "multi30k": load_sentences(data / "multi30k/test_2016_flickr.de.gz"),
        "news": load_sentences(data / "newstest/de-en/newstest2013.de.gz"),
    }


MIX = {"tatoeba": 0.4, "multi30k": 0.25, "news": 0.2, "paragraph16": 0.15}


def scheduler_settings(name: str) -> dict[str, object]:
    """The server settings of a `--schedulers` name: `batch`, `continuous`, or either with
    settings after colons, e.g. `continuous:decode_workers=1:decode_lanes=24` (TRANSERVE_*)."""
    scheduler, *pairs = name.split(":")
    return {"scheduler": scheduler, **dict(p.split("=", 1) for p in pairs)}


async def poisson(args: argparse.Namespace, _sentences: list[str]) -> dict:
    """Both schedulers on the same open-loop loads (rates from the old batcher's capacity), one
    server each, both up for the whole run and loaded in turn: the capacities alternate, then
    each load level runs on one server and then the other, then each one's side tests. (Run one
    after the other, the two schedulers would meet different minutes of a shared VM, whose
    speed moves between minutes.)"""
    pools = load_pools(args.data_root)
    result: dict = {"mode": "poisson", "mix": MIX, "runs": {}, "order": "interleaved by level"}
    servers = {
        s: Server(args.model_dir, args.threads, max_inflight_requests=1024, **scheduler_settings(s))
        for s in args.schedulers
    }
    runs: dict[str, dict] = {s: {"levels": {}} for s in args.schedulers}
    loads: dict[str, MixLoad] = {}
    try:
        for scheduler, server in servers.items():
            await warm_up(server.base, pools["tatoeba"])
            loads[scheduler] = MixLoad(server.base, pools, MIX, seed=7)
        for scheduler in args.schedulers:
            runs[scheduler]["capacity_requests_per_s"] = round(await loads[scheduler].saturate(64, args.seconds), 2)
            print(scheduler, "capacity", runs[scheduler]["capacity_requests_per_s"], flush=True)
        reference = args.reference_capacity or runs[args.schedulers[0]]["capacity_requests_per_s"]
        for fraction in args.fractions:
            for scheduler, server in servers.items():
                before = schedule_totals(server.base)
                row = await loads[scheduler].poisson(fraction * reference, args.seconds)
                row["rss_mb"] = round(server.rss_mb(), 1)
                row["schedule_mean_ms"] = schedule_means(before, schedule_totals(server.base))
                runs[scheduler]["levels"][str(fraction)] = row
                print(scheduler, fraction, json.dumps({k: v for k, v in row.items() if k != "by_kind"}), flush=True)
        for scheduler, server in servers.items():
            await _side_tests(args, server, pools, reference, runs[scheduler], scheduler)
            await loads[scheduler].close()
    finally:
        for server in servers.values():
            server.stop()
    result["runs"] = runs
    return result


async def beam_beside(args: argparse.Namespace, _sentences: list[str]) -> dict:
    """One-sentence greedy requests (Tatoeba de-en) every 25 ms beside 0, 1 or 2 clients that each
    keep a request of 32 texts with `alternatives: 3` going (beam search; what LibreTranslate
    clients asking for alternatives send), on two continuous servers: beam batches stepped (one
    decoder step per worker turn, the default) and run whole between two decoder steps
    (`TRANSERVE_BEAM_STEPPED=false`); each load on one and then the other."""
    pools = load_pools(args.data_root)
    texts = pools["tatoeba"]
    servers = {
        "stepped": Server(args.model_dir, args.threads, beam_stepped="true"),
        "whole": Server(args.model_dir, args.threads, beam_stepped="false"),
    }
    rows = []
    try:
        for server in servers.values():
            await warm_up(server.base, texts)
        for clients in (0, 1, 2):
            for name, server in servers.items():
                rows.append(
                    {"beam_batches": name, "beam_clients": clients, **await _beside(server, texts, clients, args)}
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {"mode": "beam-beside", "rows": rows}


async def _beside(server: Server, texts: list[str], clients: int, args: argparse.Namespace) -> dict:
    client = RawHTTP(server.base, 64)
    greedy, beam = Tally(), Tally()
    stop = time.perf_counter() + args.seconds

    async def beam_client(k: int) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            start = (32 * k) % (len(texts) - 32)
            body = {"q": texts[start : start + 32], "source": "de", "target": "en", "alternatives": 3}
            status, _, _ = await client.post_json("/translate", body)
            beam.add(str(status), time.perf_counter() - t0, 32)

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        status, _, _ = await client.post_json(
            "/translate", {"q": texts[i % len(texts)], "source": "de", "target": "en"}
        )
        greedy.add(str(status), time.perf_counter() - t0, 1)

    loads = [asyncio.create_task(beam_client(k)) for k in range(clients)]
    singles, i, t0 = [], 0, time.perf_counter()
    while time.perf_counter() < stop:
        singles.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(0.025)
    await asyncio.gather(*singles, *loads)
    seconds = time.perf_counter() - t0
    await client.close()
    return {"greedy": greedy.summary(seconds), "beam": beam.summary(seconds), "rss_mb": round(server.rss_mb(), 1)}


async def _side_tests(
    args: argparse.Namespace, server: Server, pools: dict, reference: float, run: dict, name: str
) -> None:
    """Short requests alone, then beside a stream of paragraphs (at 60% of capacity in
    paragraphs), /detect beside them, and the next request after 300 abandoned paragraphs."""
    short = MixLoad(server.base, pools, {"tatoeba": 1.0}, seed=3)
    run["short_idle"] = await short.poisson(2.0, args.seconds / 2)
    paragraphs = MixLoad(server.base, pools, {"paragraph16": 1.0}, seed=5)
    para_rate = 0.6 * reference * _sentences_per_request(MIX) / 16
    stream = asyncio.create_task(paragraphs.poisson(para_rate, args.seconds))
    await asyncio.sleep(2)
    beside = asyncio.create_task(short.poisson(2.0, args.seconds - 4))
    if args.detect:  # classification beside the same stream: one batch between decoder steps
        run["detect_beside_paragraphs"] = await _detect(server.base, pools["tatoeba"], 2.0, args.seconds - 4)
    run["short_beside_paragraphs"] = await beside
    run["paragraphs"] = await stream
    if args.detect:
        run["detect_idle"] = await _detect(server.base, pools["tatoeba"], 2.0, args.seconds / 2)
    idle, busy = run["short_idle"]["p50_ms"], run["short_beside_paragraphs"]["p50_ms"]
    run["short_slowdown"] = round(busy / idle, 2) if idle and busy else None
    print(name, "short idle", idle, "beside paragraphs", busy, flush=True)
    # 300 clients give up on their 16-sentence paragraphs; then one request
    run["abandoned"] = await _abandon(server.base, pools, 300)
    print(name, "after abandoned:", run["abandoned"], flush=True)
    await short.close()
    await paragraphs.close()


def metric_samples(base: str, names: tuple[str, ...]) -> list[tuple[str, dict[str, str], float]]:
    """The server's /metrics samples (name, labels, value) whose sample name is one of `names`
    (prometheus_client's parser)."""
    text = httpx.get(base + "/metrics").text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in names
    ]


def schedule_totals(base: str) -> dict[tuple[str, str, str], float]:
    """The server's transerve_schedule_seconds sums and counts, by (sum|count, stage, size)."""
    samples = metric_samples(base, ("transerve_schedule_seconds_sum", "transerve_schedule_seconds_count"))
    return {(name.rsplit("_", 1)[1], labels["stage"], labels["size"]): value for name, labels, value in samples}


def schedule_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per stage of the continuously decoded requests answered between two scrapes, by
    request size ("5-16/queue": a paragraph's wait for its first row)."""
    means = {}
    for kind, stage, size in after:
        if kind == "count":
            n = after[(kind, stage, size)] - before.get((kind, stage, size), 0.0)
            total = after[("sum", stage, size)] - before.get(("sum", stage, size), 0.0)
            if n:
                means[f"{size}/{stage}"] = round(1000 * total / n, 1)
    return dict(sorted(means.items()))


def _sentences_per_request(mix: dict[str, float]) -> float:
    return sum(w * (16 if k == "paragraph16" else 1) for k, w in mix.items())


async def _detect(base: str, texts: list[str], rate: float, seconds: float) -> dict:
    """POST /detect at Poisson arrivals: latency percentiles."""
    client, rng, tally, tasks = RawHTTP(base, 64), random.Random(13), Tally(), []

    async def one(due: float) -> None:
        status, _, _ = await client.post_json("/detect", {"q": rng.choice(texts)})
        tally.add(str(status), time.perf_counter() - due, 1)

    t0 = due = time.perf_counter()
    while (due := due + rng.expovariate(rate)) < t0 + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    await client.close()
    return {
        k: v
        for k, v in tally.summary(time.perf_counter() - t0).items()
        if k in ("answered", "statuses", "p50_ms", "p99_ms")
    }


async def _abandon(base: str, pools: dict[str, list[str]], n: int) -> dict:
    rng = random.Random(11)
    client = httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.2), limits=httpx.Limits(max_connections=n))
    text = " ".join(rng.choice(pools["tatoeba"]) for _ in range(16))

    async def give_up() -> str:
        try:
            r = await client.post(f"{base}/translate", json={"q": text, "source": "de", "target": "en"})
            return str(r.status_code)
        except httpx.TimeoutException:
            return "gave up"

    outcomes = await asyncio.gather(*[give_up() for _ in range(n)])
    await client.aclose()
    async with httpx.AsyncClient(timeout=60) as c:
        t0 = time.perf_counter()
        r = await c.post(f"{base}/translate", json={"q": pools["tatoeba"][0], "source": "de", "target": "en"})
        after = time.perf_counter() - t0
    return {"gave_up": outcomes.count("gave up"), "next_status": r.status_code, "next_request_s": round(after, 3)}


def plot_poisson(result: dict, out: Path) -> None:
    """p50/p95/p99 latency vs offered load, one line per scheduler and percentile; and the
    short-request medians alone and beside a paragraph stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for i, (scheduler, run) in enumerate(result["runs"].items()):
        levels = sorted(run["levels"].items(), key=lambda kv: float(kv[0]))
        xs = [100 * float(k) for k, _ in levels]
        for pct, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
            ax1.plot(xs, [v[pct] for _, v in levels], style, color=f"C{i}", marker="o", label=f"{scheduler} {pct[:3]}")
        ax2.bar(
            [i - 0.2, i + 0.2],
            [run["short_idle"]["p50_ms"], run["short_beside_paragraphs"]["p50_ms"]],
            width=0.35,
            color=[f"C{i}", f"C{i}"],
            alpha=0.6,
        )
    ax1.set_yscale("log")
    ax1.set_xlabel("offered load, % of the old batcher's capacity (Poisson arrivals, realistic mix)")
    ax1.set_ylabel("latency, ms")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax2.set_xticks(range(len(result["runs"])), list(result["runs"]))
    ax2.set_yscale("log")
    ax2.set_ylabel("short request p50, ms")
    ax2.set_title("idle (left) vs beside paragraphs (right)", fontsize=9)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def plot_sweep(result: dict, out: Path) -> None:
    """Two panels: sentences/s vs concurrency, and p50/p95/p99 latency vs concurrency, one line
    per (request kind, batching)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str], list[dict]] = {}
    for row in result["runs"]:
        series.setdefault((row["kind"], row["batching"]), []).append(row)
    for i, ((kind, batching), rows) in enumerate(sorted(series.items())):
        rows.sort(key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in rows]
        style, color = ("-" if batching == "on" else "--"), f"C{i}"
        label = f"{kind}, batching {batching}"
        ax1.plot(cs, [r["sentences_per_s"] for r in rows], style, color=color, marker="o", label=label)
        for pct, marker in (("p50_ms", "o"), ("p95_ms", "^"), ("p99_ms", "s")):
            ax2.plot(cs, [r[pct] for r in rows], style, color=color, marker=marker, label=f"{label} {pct[:3]}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("sentences/s (answered)")
    ax1.set_title("throughput")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency, ms")
    ax2.set_title("latency percentiles")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["sweep", "overload", "soak", "poisson", "beam-beside"])
    p.add_argument("--model-dir", type=Path, default=ROOT / "model")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k/test_2016_flickr.de.gz")
    p.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads in the server (0: the service's default)"
    )
    p.add_argument("--seconds", type=float, default=15, help="per sweep point / burst length")
    p.add_argument("--max-requests", type=int, default=20_000, help="per sweep point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--factor", type=float, default=4.0, help="overload: burst rate / capacity")
    p.add_argument("--max-queue", type=int, default=256, help="overload: the server's queue bound (sentences)")
    p.add_argument("--max-inflight", type=int, default=64, help="overload: the server's in-flight request cap")
    p.add_argument("--minutes", type=float, default=10, help="soak length")
    p.add_argument("--fraction", type=float, default=0.8, help="soak rate / capacity")
    p.add_argument(
        "--memory-arena",
        choices=["on", "off"],
        help="soak: the server's onnxruntime CPU memory arena (default: the service's own default)",
    )
    p.add_argument("--sample-seconds", type=float, default=30, help="soak: one sample per this many seconds")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared/data", help="poisson: the corpora")
    p.add_argument(
        "--schedulers",
        nargs="+",
        default=["batch", "continuous"],
        help="poisson: batch, continuous, or either with settings, e.g. continuous:decode_workers=1 (TRANSERVE_*); "
        "the first one's capacity sets the rates",
    )
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.8, 0.95], help="poisson: load levels")
    p.add_argument("--reference-capacity", type=float, help="poisson: rates from this, not the first capacity")
    p.add_argument("--detect", action="store_true", help="poisson: also time /detect (needs a langid bundle)")
    p.add_argument("--scheduler", choices=["batch", "continuous"], help="soak: the server's scheduler")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args()
    sentences = load_sentences(args.data)
    modes = {"sweep": sweep, "overload": overload, "soak": soak, "poisson": poisson, "beam-beside": beam_beside}
    result = asyncio.run(modes[args.mode](args, sentences))
    result["command"] = "python benchmarks/load.py " + " ".join(sys.argv[1:])
    result["machine"] = describe()
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        if args.mode == "sweep":
            plot_sweep(result, args.out.with_suffix(".png"))
        if args.mode == "poisson":
            plot_poisson(result, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
