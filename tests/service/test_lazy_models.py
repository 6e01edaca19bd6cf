"""Many bundles, one per pair, loaded on demand within TRANSERVE_MAX_LOADED_MODELS: pivots across
bundles, least-recently-used eviction and reload, one load for concurrent requests, a bundle that
breaks after start-up (service/registry.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.errors import ServiceError
from service.registry import LoadedModel, Registry
from tests.conftest import TINY_BUNDLES
from tests.service.conftest import make_client, wait_ready

TEXT = "hallo welt haus katze"


def _pair(out: Path, like: str, source: str, target: str) -> None:
    """A copy of tiny bundle `like` serving source->target (its weights are random anyway)."""
    name = f"{source}-{target}"
    shutil.copytree(TINY_BUNDLES / "models" / like, out / name)
    path = out / name / "manifest.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.update(name=name, source_lang=source, target_lang=target)
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Four one-pair bundles (de-en, en-de, en-fr, fr-en) and the two classifiers."""
    root = tmp_path_factory.mktemp("pairs") / "models"
    root.mkdir()
    for like, src, tgt in (("de-en", "de", "en"), ("en-de", "en", "de"), ("en-de", "en", "fr"), ("de-en", "fr", "en")):
        _pair(root, like, src, tgt)
    for name in ("langid", "sentiment"):
        shutil.copytree(TINY_BUNDLES / "models" / name, root / name)
    return root


def _counter(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? ([0-9.e+-]+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def _translate(client, source: str, target: str, text: str = TEXT):
    return client.post("/translate", json={"q": text, "source": source, "target": target})


def _loaded(client) -> set[str]:
    return {m["name"] for m in client.get("/models").json() if m["loaded"]}


REQUESTS = [  # through English both ways, beam search with alternatives, markup (its word alignment)
    {"source": "de", "target": "fr"},
    {"source": "fr", "target": "de"},
    {"source": "de", "target": "fr", "alternatives": 1, "confidence": True},
    {"source": "de", "target": "en", "format": "html", "q": "<p>hallo <b>welt</b> haus</p>"},
]


@pytest.mark.parametrize("scheduler", ["continuous", "batch"])
def test_a_bound_of_one_answers_as_without_and_languages_list_every_pair(pairs_dir, scheduler):
    def answers(client) -> list[dict]:
        out = []
        for body in REQUESTS:
            r = client.post("/translate", json={"q": TEXT, **body})
            assert r.status_code == 200, r.text
            out.append(r.json())
        return out

    with make_client(pairs_dir, scheduler=scheduler) as free:
        wait_ready(free)
        expected, languages = answers(free), free.get("/languages").json()
        assert _loaded(free) == {"de-en", "en-de", "en-fr", "fr-en", "langid", "sentiment"}
    with make_client(pairs_dir, scheduler=scheduler, max_loaded_models=1) as c:
        ready = wait_ready(c)
        # every bundle serves once checked; only the classifiers are loaded
        assert ready["status"] == "ready" and ready["loaded"] == ["langid", "sentiment"]
        assert ready["models"] == ["de-en", "en-de", "en-fr", "fr-en", "langid", "sentiment"]
        assert c.get("/languages").json() == languages  # every declared pair, none loaded
        assert answers(c) == expected
        assert _loaded(c) == {"de-en", "langid", "sentiment"}  # the last request's; the bound held
        # de->fr: de-en, en-fr; fr->de: fr-en, en-de; de->fr again; de->en
        assert _counter(c, "transerve_model_loads_total", model="de-en", outcome="ok") == 3
        assert _counter(c, "transerve_model_evictions_total", model="en-fr") == 2


def test_least_recently_used_is_evicted_and_reloads_to_the_same_outputs(pairs_dir):
    with make_client(pairs_dir, max_loaded_models=2) as c:
        wait_ready(c)
        first = _translate(c, "de", "en").json()["translatedText"]
        assert _translate(c, "en", "de").status_code == 200
        assert _loaded(c) == {"de-en", "en-de", "langid", "sentiment"}
        evicted = weakref.ref(c.app.state.service.registry.models["de-en"].engine)
        assert _translate(c, "en", "fr").status_code == 200  # de-en is the least recently used
        assert _loaded(c) == {"en-de", "en-fr", "langid", "sentiment"}
        scheduler = c.app.state.service.scheduler
        assert "de-en" not in scheduler.decoders and "de-en" not in scheduler.runners
        assert all(lane.model != "de-en" for w in scheduler.workers for lane in w.batches)
        # nothing holds its sessions any more: the scheduler let it go (a decode worker may still
        # be ending the step it was in when the eviction came: its frame lets go right after)
        deadline = time.monotonic() + 5
        while evicted() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        held = evicted()
        assert held is None, [type(r).__name__ for r in gc.get_referrers(held)]
        assert _translate(c, "en", "de").status_code == 200  # en-de used: en-fr is now the oldest
        again = _translate(c, "de", "en").json()["translatedText"]
        assert again == first
        assert _loaded(c) == {"de-en", "en-de", "langid", "sentiment"}
        assert _counter(c, "transerve_model_loads_total", model="de-en", outcome="ok") == 2
        assert _counter(c, "transerve_model_evictions_total", model="de-en") == 1
        assert _counter(c, "transerve_model_evictions_total", model="en-fr") == 1
        assert _counter(c, "transerve_models_loaded") == 4
        models = {m["name"]: m for m in c.get("/models").json()}
        for name in ("de-en", "en-de", "langid"):
            m = models[name]
            assert m["status"] == "ready" and m["loaded"] and m["load_seconds"] > 0 and m["file_bytes"] > 0
            assert m["memory_bytes"] is not None and m["variant"] == "fp32"
        assert models["de-en"]["on_demand"] and not models["langid"]["on_demand"]
        unloaded = models["en-fr"]
        assert unloaded["status"] == "ready" and not unloaded["loaded"] and unloaded["memory_bytes"] is None


def test_concurrent_requests_for_one_unloaded_bundle_load_it_once(pairs_dir):
    with make_client(pairs_dir, max_loaded_models=1) as c:
        wait_ready(c)
        registry = c.app.state.service.registry
        real, started = registry.loader, threading.Event()

        def slow(bundle_dir, manifest):  # every request arrives while the first load runs
            started.set()
            time.sleep(0.5)
            return real(bundle_dir, manifest)

        registry.loader = slow
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: _translate(c, "de", "en"), range(6)))
        assert started.is_set()
        assert [r.status_code for r in answers] == [200] * 6
        assert len({r.json()["translatedText"] for r in answers}) == 1
        assert _counter(c, "transerve_model_loads_total", model="de-en", outcome="ok") == 1
        assert c.get("/health").status_code == 200


def test_a_bundle_broken_after_start_up_answers_503_naming_it_and_ready_says_so(pairs_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(pairs_dir, root)
    with make_client(root, max_loaded_models=1) as c:
        wait_ready(c)
        (root / "en-fr" / "encoder.onnx").write_bytes(b"not a graph")  # after the checks at start-up
        registry = c.app.state.service.registry
        real = registry.loader

        def refuses(bundle_dir, manifest):  # onnxruntime refusing a graph whose checksum is right
            if bundle_dir.name == "fr-en":
                raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH")
            return real(bundle_dir, manifest)

        registry.loader = refuses
        for pair in (("en", "fr"), ("de", "fr"), ("en", "fr")):  # direct, through English, again
            r = _translate(c, *pair)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error.startswith("model en-fr failed to load: ") and "encoder.onnx sha256" in error
            assert str(root) not in error
        r = _translate(c, "fr", "en")
        assert r.status_code == 503 and r.json()["error"] == (
            "model fr-en failed to load: RuntimeError: [ONNXRuntimeError] : 10 : INVALID_GRAPH"
        )
        assert _translate(c, "de", "en").status_code == 200  # the others serve
        assert _counter(c, "transerve_model_loads_total", model="en-fr", outcome="failed") == 1  # not retried
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert set(ready.json()["failed"]) == {"en-fr", "fr-en"} and "en-fr" not in ready.json()["models"]
        models = {m["name"]: m for m in c.get("/models").json()}
        assert models["en-fr"]["status"] == "failed" and "encoder.onnx sha256" in models["en-fr"]["error"]
        assert not models["en-fr"]["loaded"] and models["de-en"]["loaded"]


# -- the registry alone: fake engines -------------------------------------------------------------


def _registry(names: list[str], bound: int, loads: list[str], delay: float = 0.0) -> Registry:
    reg = Registry(max_loaded=bound)
    manifest = SimpleNamespace(files={}, variants={"fp32": {}}, task="translation")

    def loader(bundle_dir, manifest):
        loads.append(bundle_dir.name)
        time.sleep(delay)
        return SimpleNamespace(manifest=manifest, variant="fp32")

    reg.loader = loader
    for n in names:
        reg.models[n] = LoadedModel(n, manifest, bundle_dir=Path(n), lazy=True)  # type: ignore[arg-type]
    return reg


def _loaded_names(reg: Registry) -> set[str]:
    return {n for n, m in reg.models.items() if m.loaded}


def test_an_engine_in_use_is_never_evicted_and_the_bound_comes_back_when_it_is_released():
    loads: list[str] = []
    reg = _registry(["a", "b", "c"], 1, loads)
    busy = {"c"}  # the scheduler still holds work of c (a request that left)
    reg.connect(lambda name, engine: None, lambda name: name not in busy)

    async def scenario() -> None:
        async with reg.using("a"):
            async with reg.using("b"):  # a is in use: b loads beyond the bound
                assert _loaded_names(reg) == {"a", "b"}
            for _ in range(200):  # b released: back to the bound in a thread, a still in use
                if _loaded_names(reg) == {"a"}:
                    break
                await asyncio.sleep(0.01)
            assert _loaded_names(reg) == {"a"}
        await reg.engine("c")  # a is idle: evicted for c
        assert _loaded_names(reg) == {"c"}
        async with reg.using("a"):  # c's work is still in the scheduler: a loads beside it
            assert _loaded_names(reg) == {"a", "c"}
        for _ in range(200):  # a released: the one that can go goes
            if _loaded_names(reg) == {"c"}:
                break
            await asyncio.sleep(0.01)
        assert _loaded_names(reg) == {"c"}
        busy.clear()
        await reg.engine("b")  # both idle now: the bound holds again
        assert _loaded_names(reg) == {"b"}

    asyncio.run(scenario())
    assert loads == ["a", "b", "c", "a", "b"]


def test_concurrent_users_of_one_model_load_it_once_and_a_failed_load_is_not_retried():
    loads: list[str] = []
    reg = _registry(["a", "b"], 1, loads, delay=0.2)

    async def scenario() -> None:
        engines = await asyncio.gather(*(reg.engine("a") for _ in range(5)))
        assert all(e is engines[0] for e in engines)
        reg.loader = lambda bundle_dir, manifest: (loads.append(bundle_dir.name), 1 / 0)[1]
        for _ in range(2):
            with pytest.raises(ServiceError) as err:
                await reg.engine("b")
            assert err.value.status == 503
            assert err.value.message == "model b failed to load: ZeroDivisionError: division by zero"
        assert _loaded_names(reg) == set() and not reg.models["b"].ready  # a made room for b first
        assert reg.models["a"].users == 0 and reg.models["b"].users == 0

    asyncio.run(scenario())
    assert loads == ["a", "b"]
