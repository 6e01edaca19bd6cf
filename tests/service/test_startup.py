"""Start-up: bad bundles are refused and reported while the others serve; no model dir, no start."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from service.registry import ModelDirError
from tests.service.conftest import make_client, wait_ready


def test_missing_model_dir_stops_startup(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        with make_client(tmp_path / "nope"):
            pass
    with pytest.raises(ModelDirError, match="holds no bundle"):
        with make_client(tmp_path):
            pass


def test_cli_exits_nonzero_without_models(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(tmp_path / "none"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "does not exist" in r.stderr


def test_corrupt_and_truncated_bundles_are_refused_others_serve(model_dir, tmp_path):
    root = tmp_path / "models"
    for name in ("de-en", "en-de", "sentiment"):
        shutil.copytree(model_dir / name, root / name)
    (root / "en-de" / "decoder.onnx").write_bytes(b"")  # truncated
    with (root / "sentiment" / "spm.model").open("ab") as f:
        f.write(b"!")  # bad checksum
    (root / "orphan").mkdir()
    shutil.copyfile(model_dir / "de-en" / "encoder.onnx", root / "orphan" / "encoder.onnx")  # no manifest
    with make_client(root) as c:
        ready = wait_ready(c)
        # no classifier could load: not ready (a load balancer must not send /classify here)
        assert c.get("/ready").status_code == 503
        assert ready["status"] == "failed" and ready["error"] == "no model loaded for: classification"
        assert "decoder.onnx sha256" in ready["failed"]["en-de"]
        assert "spm.model sha256" in ready["failed"]["sentiment"]
        assert ready["failed"]["orphan"] == "no manifest.json in the bundle folder"
        assert str(root) not in c.get("/ready").text  # bundle names, not the machine's paths
        models = {m["name"]: m for m in c.get("/models").json()}
        assert models["en-de"]["status"] == "failed" and models["de-en"]["status"] == "ready"
        assert c.post("/translate", json={"q": "hallo", "source": "de", "target": "en"}).status_code == 200
        r = c.post("/translate", json={"q": "hello", "source": "en", "target": "de"})
        assert r.status_code == 503 and r.json()["error"].startswith("model en-de for en->de failed to load")
    shutil.rmtree(root / "sentiment")
    with make_client(root) as c:
        ready = wait_ready(c)
        assert ready["status"] == "degraded" and ready["models"] == ["de-en"]  # every task has a model
    with make_client(root, require_all_models=True) as c:
        wait_ready(c)
        assert c.get("/ready").status_code == 503


def test_service_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "import service.app, service.__main__, service.registry, service.runtime.translator\n"
        "from service.app import create_app\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_ready_is_503_while_models_load_then_200(model_dir, monkeypatch):
    import threading

    import service.app as app_module

    gate = threading.Event()
    real = app_module.load_registry

    def slow_load(settings):
        gate.wait(30)
        return real(settings)

    monkeypatch.setattr(app_module, "load_registry", slow_load)
    with make_client(model_dir) as c:
        assert c.get("/health").json() == {"status": "ok"}  # alive while loading
        loading = c.get("/ready")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"}
        r = c.post("/translate", json={"q": "hallo", "source": "de", "target": "en"})
        assert r.status_code == 503 and r.json() == {"error": "models are still loading"}
        gate.set()
        assert wait_ready(c)["status"] == "ready"
        assert c.post("/translate", json={"q": "hallo", "source": "de", "target": "en"}).status_code == 200


@pytest.mark.parametrize("arena", [True, False])
def test_memory_arena_setting_reaches_every_session(model_dir, arena):
    with make_client(model_dir, memory_arena=arena) as c:
        wait_ready(c)
        registry = c.app.state.service.registry
        sessions = [
            s for m in registry.models.values() for s in vars(m.engine).values() if hasattr(s, "get_session_options")
        ]
        assert len(sessions) >= 3
        assert {s.get_session_options().enable_cpu_mem_arena for s in sessions} == {arena}
        r = c.post("/translate", json={"q": "ein hund", "source": "de", "target": "en"})
        assert r.status_code == 200, r.text


def test_sharing_the_thread_pool_after_a_session_exists_is_refused(model_dir):
    # onnxruntime would silently ignore a late global pool and run the "shared" sessions on no
    # pool at all (one thread); refuse instead. (A process-wide choice: only checked here.)
    from service.runtime import sessions as runtime
    from service.runtime.bundle import load_manifest

    manifest = load_manifest(model_dir / "sentiment")
    graph = model_dir / "sentiment" / manifest.graph("fp32", "classifier").file
    runtime.create_session(graph, ["CPUExecutionProvider"], 1)
    with pytest.raises(RuntimeError, match="before this process creates its first onnxruntime session"):
        runtime.share_thread_pool(2)
    assert runtime._shared_pool_threads is None


def test_unknown_variant_setting_is_refused_and_an_absent_one_is_said(model_dir, caplog):
    from dataclasses import replace

    from pydantic import ValidationError

    from service.registry import _engine
    from service.runtime.bundle import load_manifest
    from service.runtime.sessions import resolve_providers
    from service.settings import Settings

    with pytest.raises(ValidationError, match="variant"):
        Settings(variant="int4")
    manifest = load_manifest(model_dir / "sentiment")
    only_fp32 = replace(manifest, variants={"fp32": manifest.variants["fp32"]}, default_variant="fp32")
    settings = Settings(variant="int8-static", threads=1, thread_pool="per-session")
    with caplog.at_level("WARNING"):
        engine = _engine(model_dir / "sentiment", only_fp32, resolve_providers("cpu"), settings)
    assert engine.variant == "fp32"
    assert any("has no variant 'int8-static'" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    assert _engine(model_dir / "sentiment", manifest, resolve_providers("cpu"), settings).variant == "int8-static"


def test_scheduler_setting_chooses_the_worker_and_both_translate_alike(model_dir):
    from service.scheduling import ContinuousScheduler

    body = {"q": ["hallo welt", "", "der hund spielt im park"], "source": "de", "target": "en"}
    answers = {}
    for scheduler in ("continuous", "batch"):
        with make_client(model_dir, scheduler=scheduler, decode_lanes=[8, 30]) as c:
            wait_ready(c)
            batcher = c.app.state.service.scheduler
            assert isinstance(batcher, ContinuousScheduler) == (scheduler == "continuous")
            if scheduler == "continuous":  # every translator of contract 2, in three length lanes each
                assert set(batcher.decoders) == {"de-en", "en-de"} and batcher.lanes == [8, 30]
                assert all(len(w.batches) == 6 for w in batcher.workers)
            r = c.post("/translate", json=body)
        assert r.status_code == 200
        answers[scheduler] = r.json()["translatedText"]
    assert answers["continuous"] == answers["batch"] and answers["batch"][1] == ""


def test_lanes_and_admission_settings_from_the_environment(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("TRANSERVE_DECODE_LANES", "16, 40")
    monkeypatch.setenv("TRANSERVE_ADMISSION", "fifo")
    s = Settings()
    assert s.decode_lanes == [16, 40] and s.admission == "fifo"
    monkeypatch.setenv("TRANSERVE_DECODE_LANES", "")
    assert Settings().decode_lanes == []


def test_decode_workers_divide_the_cores_and_auto_takes_two_on_a_cpu(monkeypatch):
    import service.settings as settings_module
    from service.settings import Settings

    monkeypatch.setattr(settings_module, "cores", lambda: 8)
    auto = Settings()
    assert auto.workers() == 2 and auto.intra_threads() == 4  # two workers, each on half the cores
    assert auto.workers(cuda=True) == 1 and auto.intra_threads(cuda=True) == 0  # one stream of GPU calls
    assert Settings(decode_workers=3).intra_threads() == 2
    assert Settings(threads=2).intra_threads() == 1  # the 2 cores it is given, one per worker
    assert Settings(decode_workers=4, threads=1).intra_threads() == 1
    assert Settings(scheduler="batch", threads=3).intra_threads() == 3
    assert Settings(scheduler="batch").workers() == 1 and Settings(scheduler="batch").intra_threads() == 0
    monkeypatch.setattr(settings_module, "cores", lambda: 1)
    assert Settings().workers() == 1 and Settings().intra_threads() == 0


def test_cores_stay_within_the_cgroup_cpu_limit(monkeypatch, tmp_path):
    import service.settings as settings_module

    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(settings_module, "Path", lambda _: limit)
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _: set(range(16)))
    limit.write_text("150000 100000\n")  # --cpus 1.5
    assert settings_module.cores() == 2
    limit.write_text("max 100000\n")  # no limit
    assert settings_module.cores() == 16
    limit.unlink()  # cgroup v1 or none
    assert settings_module.cores() == 16
