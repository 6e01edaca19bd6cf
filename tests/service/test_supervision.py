"""Decode workers that cannot die (service/scheduling/): an exception while
a worker admits or steps a request fails that request alone with a 500 and the worker goes on; a
worker whose loop fails anyway fails the requests it held, starts again and is counted; and a
bundle's sessions are all opened at load, so that a graph replaced on disk later changes nothing,
while a bundle that cannot open them is refused and said so by /ready and /models."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from service.runtime.bundle import load_manifest, sha256_file, write_manifest
from tests.conftest import TINY_BUNDLES
from tests.service.conftest import make_client, wait_ready

TIMEOUT = 5.0  # the servers' request timeout: a failed request must be answered well before it
GOOD = {"q": "der hund spielt mit der katze", "source": "de", "target": "en"}
BAD = {"q": "ein mann und eine frau", "source": "de", "target": "en"}


def restarts(client) -> float:
    """transerve_worker_restarts_total as /metrics says it."""
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith("transerve_worker_restarts_total"))
    return float(line.split()[1])


def failed_at_once(response, started: float) -> bool:
    """A model failure's answer: 500 with the stable message and a request id, before the deadline."""
    body = response.json()
    return (
        response.status_code == 500
        and body["error"] == "internal error"
        and len(body["request_id"]) == 12
        and time.monotonic() - started < TIMEOUT / 2
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
@pytest.mark.parametrize("where", ["admitting", "stepping"])
def test_a_request_that_fails_in_a_worker_gets_500_and_the_worker_goes_on(model_dir, workers, where):
    with make_client(model_dir, decode_workers=workers, max_wait_ms=0, request_timeout_s=TIMEOUT) as c:
        wait_ready(c)
        scheduler = c.app.state.service.scheduler
        engine = c.app.state.service.registry.translators()["de-en"]
        bad = engine.encode([BAD["q"]])[0]
        if where == "admitting":  # the sentence's lane cannot be chosen (its decoder could not be made)
            real = engine.target_of

            def target_of(source):
                if list(source) == bad:
                    raise OSError(24, "Too many open files")
                return real(source)

            engine.target_of = target_of
        else:  # the step's answers cannot be handed out
            counted, fail = engine.on_tokens, [True]

            def on_tokens(n):
                if fail[0]:
                    raise RuntimeError("simulated failure after a decoder step")
                counted(n)

            engine.on_tokens = on_tokens
        for _ in range(3):  # more failures than workers: none of them is lost
            t0 = time.monotonic()
            assert failed_at_once(c.post("/translate", json=BAD), t0)
        if where == "stepping":
            fail[0] = False
        r = c.post("/translate", json=GOOD)
        assert r.status_code == 200 and "translatedText" in r.json()
        assert all(t.is_alive() for t in scheduler.threads) and restarts(c) == 0  # no worker had to restart


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_a_worker_whose_loop_fails_is_restarted_and_counted(model_dir, workers):
    with make_client(model_dir, decode_workers=workers, max_wait_ms=0, request_timeout_s=TIMEOUT) as c:
        wait_ready(c)
        scheduler = c.app.state.service.scheduler
        # a fault outside any one request's work (here: pruning the queue), twice: each worker's loop
        # fails at its next turn; the request waiting in the queue is decoded once one has restarted
        real_prune, faults, lock = scheduler.queue.prune, [2], threading.Lock()

        def prune(on_dropped=None):
            with lock:
                if faults[0]:
                    faults[0] -= 1
                    raise RuntimeError("simulated bug in a worker's turn")
            real_prune(on_dropped)

        scheduler.queue.prune = prune
        r = c.post("/translate", json=GOOD)
        assert r.status_code == 200 and "translatedText" in r.json()
        assert restarts(c) == 2

        # the loop fails while a request has rows running: that request fails at once, the next works
        real_admit, once = scheduler._admit, [True]

        def admit(w):
            with lock:
                if w.running and once[0]:
                    once[0] = False
                    raise RuntimeError("simulated bug in a worker's turn")
            return real_admit(w)

        scheduler._admit = admit
        t0 = time.monotonic()
        long = {"q": [f"der hund spielt mit der katze im park {i}" for i in range(8)], "source": "de", "target": "en"}
        assert failed_at_once(c.post("/translate", json=long), t0)
        assert restarts(c) == 3
        r = c.post("/translate", json=long)
        assert r.status_code == 200 and len(r.json()["translatedText"]) == 8
        assert all(t.is_alive() for t in scheduler.threads)


# -- sessions opened at load --------------------------------------------------------------------

VOCAB = {"en": set(range(4, 52)), "de": set(range(28, 80))}  # pieces of the tiny tokenizer (80)


@pytest.fixture
def vocab_models(tmp_path):
    """A model directory with the tiny multilingual bundle given target vocabularies (a decoder
    session per target language)."""
    pytest.importorskip("onnx", reason="writing target vocabularies needs the onnx package (training extras)")
    from training.vocab import write_target_vocab

    root = tmp_path / "models"
    shutil.copytree(TINY_BUNDLES / "multilingual", root)
    write_target_vocab(root / "multi", VOCAB)
    return root


def test_graphs_truncated_on_disk_after_load_change_nothing(vocab_models):
    with make_client(vocab_models, max_wait_ms=0, request_timeout_s=TIMEOUT) as c:
        assert wait_ready(c)["status"] == "ready"
        for graph in (vocab_models / "multi").glob("*.onnx"):  # an operator's copy cut short
            graph.write_bytes(graph.read_bytes()[:1000])
        for source, target in (("en", "de"), ("de", "en"), ("fr", "en")):  # no sentence into either yet
            r = c.post("/translate", json={"q": "hallo welt", "source": source, "target": target})
            assert r.status_code == 200 and "translatedText" in r.json(), r.text
        assert c.get("/ready").status_code == 200 and restarts(c) == 0


def test_a_bundle_whose_language_decoder_cannot_be_opened_is_refused_at_load(vocab_models):
    bundle = vocab_models / "multi"
    manifest = load_manifest(bundle)
    npz = bundle / manifest.target_vocab["file"]
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["ids/de"] = np.append(arrays["ids/de"], 999).astype(arrays["ids/de"].dtype)  # beyond the 80 pieces
    np.savez(npz, **arrays)
    write_manifest(bundle, replace(manifest, files={**manifest.files, npz.name: sha256_file(npz)}))
    shutil.copytree(TINY_BUNDLES / "models" / "langid", vocab_models / "langid")  # a classifier serves
    with make_client(vocab_models, request_timeout_s=TIMEOUT) as c:
        ready = wait_ready(c)
        assert c.get("/ready").status_code == 503  # no translation bundle serves
        assert ready["status"] == "failed" and ready["error"] == "no model loaded for: translation"
        assert "999" in ready["failed"]["multi"]
        models = {m["name"]: m for m in c.get("/models").json()}
        assert models["multi"]["status"] == "failed" and models["multi"]["error"] == ready["failed"]["multi"]
        assert models["langid"]["status"] == "ready" and c.post("/detect", json={"q": "der hund"}).status_code == 200
        r = c.post("/translate", json={"q": "hello world", "source": "en", "target": "de"})
        assert r.status_code == 503 and r.json()["error"].startswith("model multi for en->de failed to load")
