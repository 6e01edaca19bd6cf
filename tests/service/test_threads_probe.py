"""The start-up probe that picks decode workers x intra-op threads (service/probe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import probe
from service.app import create_app
from service.probe import Layout, candidates, choose, decide
from service.settings import Settings
from tests.service.conftest import make_client, wait_ready

ONE, TWO = Layout(1, 2), Layout(2, 1)
ROOT = Path(__file__).resolve().parents[2]


# -- the decision: figures in, layout out (no timing) -----------------------------------------


def test_candidates_are_one_worker_on_every_core_or_two_on_half():
    assert candidates(2) == (ONE, TWO)
    assert candidates(8) == (Layout(1, 8), Layout(2, 4))
    assert candidates(3) == (Layout(1, 3), Layout(2, 1))


def test_decide_picks_the_faster_layout():
    assert decide({ONE: [3000, 3100, 2900], TWO: [2000, 2100, 1900]}, TWO) == ONE
    assert decide({ONE: [2000, 2100, 1900], TWO: [3000, 3100, 2900]}, TWO) == TWO


def test_decide_keeps_the_default_within_the_margin():
    assert decide({ONE: [1030, 1040, 1020], TWO: [1000, 1000, 1000]}, TWO) == TWO  # 3-4%: noise
    assert decide({ONE: [1030, 1040, 1020], TWO: [1000, 1000, 1000]}, TWO, margin=0.01) == ONE
    assert decide({ONE: [1000] * 3, TWO: [1000] * 3}, TWO) == TWO  # a tie: the default


def test_decide_compares_rounds_side_by_side():
    # the machine slowed down in rounds 2-3 (a noisy neighbour): each round one worker is 20%
    # faster, though its median of rows/s alone (1,200) is below two workers' (2,000)
    one = [2400, 1200, 1200, 1200, 2400]
    two = [2000, 1000, 1000, 1000, 2000]
    assert decide({ONE: one, TWO: [t * 1.0 for t in two]}, TWO) == ONE
    # one outlier round does not decide it
    assert decide({ONE: [900, 900, 5000, 900, 900], TWO: [1000] * 5}, TWO) == TWO


def test_decide_without_the_default_takes_the_best_median():
    assert decide({ONE: [10, 20, 30], Layout(4, 1): [5, 5, 5]}, TWO) == ONE


# -- when it runs -----------------------------------------------------------------------------


def _no_probe(*args, **kwargs):
    raise AssertionError("the probe ran")


@pytest.mark.parametrize(
    "overrides, cuda, n_cores, workers, threads",
    [
        ({"threads": 2}, False, 2, 2, 1),  # an explicit value overrides it
        ({"decode_workers": 1}, False, 2, 1, 0),
        ({"decode_workers": 2, "threads": 2}, False, 2, 2, 1),
        ({"scheduler": "batch"}, False, 2, 1, 0),
        ({}, True, 2, 1, 0),  # CUDA
    ],
)
def test_explicit_settings_cuda_and_the_batch_scheduler_skip_it(
    monkeypatch, model_dir, overrides, cuda, n_cores, workers, threads
):
    monkeypatch.setattr(probe, "measure", _no_probe)
    monkeypatch.setattr("service.settings.cores", lambda: n_cores)
    choice = choose(Settings(model_dir=model_dir, layout_probe=True, **overrides), cuda, n_cores)
    assert choice.chosen_by == "settings" and choice.reason
    assert (choice.workers, choice.threads) == (workers, threads)
    assert choice.rows_per_s == {} and choice.probe_seconds is None


def test_one_core_skips_it(monkeypatch, model_dir):
    monkeypatch.setattr(probe, "measure", _no_probe)
    monkeypatch.setattr("service.settings.cores", lambda: 1)
    choice = choose(Settings(model_dir=model_dir, layout_probe=True), False, 1)
    assert (choice.chosen_by, choice.reason, choice.workers) == ("settings", "one usable core", 1)


def test_auto_takes_the_probes_pick(monkeypatch, model_dir, caplog):
    monkeypatch.setattr(probe, "measure", lambda *a, **k: {ONE: [3000.0] * 3, TWO: [2000.0] * 3})
    with caplog.at_level("INFO", logger="service.probe"):
        choice = choose(Settings(model_dir=model_dir, layout_probe=True), False, 2)
    assert (choice.workers, choice.threads, choice.chosen_by) == (1, 2, "probe")
    assert choice.rows_per_s == {"1x2": 3000.0, "2x1": 2000.0}
    assert choice.bundle and choice.probe_seconds is not None
    [line] = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()]
    assert "1x2 3,000" in line and "2x1 2,000" in line and "serving 1 worker(s) x 2 thread(s)" in line


def test_a_failed_probe_leaves_the_default(monkeypatch, model_dir):
    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(probe, "measure", broken)
    monkeypatch.setattr("service.settings.cores", lambda: 2)
    choice = choose(Settings(model_dir=model_dir, layout_probe=True), False, 2)
    assert (choice.workers, choice.threads, choice.chosen_by) == (2, 1, "default")


# -- the probe itself, on a tiny bundle -------------------------------------------------------


def test_the_probe_measures_both_layouts(model_dir):
    bundle = probe._probe_bundle(model_dir)
    assert bundle is not None and bundle[1].task == "translation"
    figures = probe.measure(*bundle, Settings(model_dir=model_dir), (ONE, TWO), trial_s=0.005, budget_s=0.05)
    assert set(figures) == {ONE, TWO}
    for rates in figures.values():
        assert probe.MIN_ROUNDS <= len(rates) <= probe.ROUNDS
        assert all(0 < r < 1e8 for r in rates)


def test_the_probe_leaves_the_shared_pool_to_be_set_up():
    """In a process of its own (the shared pool is one per process): the probe's sessions, then
    the shared pool of the size it picked, and the service's sessions on it."""
    script = f"""
import json, os, sys
from pathlib import Path
from service import probe
from service.runtime import sessions
from service.probe import Layout
from service.settings import Settings
model_dir = Path(sys.argv[1])
bundle = probe._probe_bundle(model_dir)
figures = probe.measure(*bundle, Settings(model_dir=model_dir), ({ONE!r}, {TWO!r}), trial_s=0.005, budget_s=0.05)
before = len(os.listdir("/proc/self/task"))
sessions.share_thread_pool(3)  # 2 threads of its own beside the caller's
s = sessions.create_session(bundle[0] / bundle[1].graph(bundle[1].default_variant, "decoder").file,
                            ["CPUExecutionProvider"], 3)
print(json.dumps({{"before": before, "after": len(os.listdir("/proc/self/task")),
                  "shared": not s.get_session_options().use_per_session_threads}}))
"""
    from tests.conftest import TINY_BUNDLES

    out = subprocess.run(
        [sys.executable, "-c", script, str(TINY_BUNDLES / "models")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shared"]
    assert result["after"] - result["before"] == 2  # the global pool was made, at the size asked


# -- what the scheduler and the engines get ---------------------------------------------------


@pytest.mark.parametrize("faster, workers, threads", [(ONE, 1, 2), (TWO, 2, 1)])
def test_the_pick_is_what_the_scheduler_and_engines_get(monkeypatch, model_dir, faster, workers, threads):
    monkeypatch.setattr(probe, "cores", lambda: 2)
    monkeypatch.setattr("service.settings.cores", lambda: 2)
    figures = {ONE: [1000.0] * 3, TWO: [1000.0] * 3}
    figures[faster] = [2000.0] * 3
    monkeypatch.setattr(probe, "measure", lambda *a, **k: figures)
    settings = Settings(model_dir=model_dir, threads=0, decode_workers=0, thread_pool="per-session", layout_probe=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        state = client.app.state.service
        assert len(state.scheduler.workers) == workers
        for engine in state.registry.translators().values():  # per-session pools here: their size is the pick
            assert engine.decoder.get_session_options().intra_op_num_threads == threads
        ready = client.get("/ready").json()
        assert ready["decode_layout"]["workers"] == workers
        models = client.get("/models").json()
        layouts = [m["decode_layout"] for m in models if m["task"] == "translation"]
        assert layouts and all(
            x["workers"] == workers and x["intra_op_threads"] == threads and x["chosen_by"] == "probe" for x in layouts
        )
        assert layouts[0]["rows_per_s"] == {"1x2": figures[ONE][0], "2x1": figures[TWO][0]}
        assert all(m["decode_layout"] is None for m in models if m["task"] != "translation")


def test_explicit_threads_are_shown_as_the_settings(model_dir):
    with make_client(model_dir) as client:  # threads=1
        wait_ready(client)
        layout = client.get("/ready").json()["decode_layout"]
        assert layout["chosen_by"] == "settings" and layout["rows_per_s"] == {}
        assert len(client.app.state.service.scheduler.workers) == layout["workers"]


def test_the_probe_is_off_unless_asked_for(model_dir):
    choice = choose(Settings(model_dir=model_dir), False, 2)
    assert (choice.chosen_by, choice.reason) == ("settings", "TRANSERVE_LAYOUT_PROBE off")
    assert (choice.workers, choice.threads) == (2, 1)  # the auto layout: two workers on a core each
