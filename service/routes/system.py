"""Health, readiness, model list, Prometheus metrics and the web page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.formats import EXTENSIONS
from service.languages import name as language_name
from service.registry import Registry
from service.schemas import ModelInfo
from service.security import operator_only
from service.state import ServiceState

router = APIRouter(tags=["system"])
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: 200 once the models are loaded, 503 before")
async def ready(request: Request) -> JSONResponse:
    state: ServiceState = request.app.state.service
    if state.loading:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
    reg = state.registry
    failed = {n: m.error for n, m in (reg.models.items() if reg else []) if not m.ready}
    missing = reg.tasks_missing() if reg else []
    none_ready = reg is None or not any(m.ready for m in reg.models.values())
    if none_ready or missing or (failed and state.settings.require_all_models):
        if none_ready:
            error = state.load_error or "no model could be loaded"
        elif missing:
            error = "no model loaded for: " + ", ".join(missing)
        else:
            error = "TRANSERVE_REQUIRE_ALL_MODELS is set and some bundles failed"
        return JSONResponse({"status": "failed", "error": error, "failed": failed}, status_code=503)
    assert reg is not None  # none_ready covers a missing registry
    body = {
        "status": "degraded" if failed else "ready",
        # what it serves: loaded, or (max_loaded_models) checked at start-up and loaded on demand
        "models": sorted(n for n, m in reg.models.items() if m.ready),
        "failed": failed,
        "ready_seconds": state.ready_seconds,
    }
    layout = decode_layout(reg)
    if layout is not None:
        body["decode_layout"] = layout.model_dump()
    if reg.lazy:
        body["loaded"] = sorted(n for n, m in reg.models.items() if m.loaded)
        body["max_loaded_models"] = reg.max_loaded
    return JSONResponse(body)


class DecodeLayout(BaseModel):
    """How the translation engines run: decode workers x intra-op threads per onnxruntime call,
    and who chose (service/probe.py): "probe" (timed at start-up, `rows_per_s` of each layout
    "WORKERSxTHREADS"), "settings" (TRANSERVE_THREADS / TRANSERVE_DECODE_WORKERS, or where the
    probe does not apply: `reason`), "default" (the probe could not run: `reason`)."""

    workers: int
    intra_op_threads: int  # 0: onnxruntime's default (one per core)
    chosen_by: str
    reason: str = ""
    rows_per_s: dict[str, float] = {}  # the probe's median decoder rows/s per layout
    probe_seconds: float | None = None  # what the probe added to start-up
    probe_bundle: str | None = None  # whose decoder it timed


def decode_layout(reg: Registry | None) -> DecodeLayout | None:
    c = reg.layout if reg else None
    if c is None:
        return None
    return DecodeLayout(
        workers=c.workers,
        intra_op_threads=c.threads,
        chosen_by=c.chosen_by,
        reason=c.reason,
        rows_per_s=c.rows_per_s,
        probe_seconds=c.probe_seconds,
        probe_bundle=c.bundle,
    )


class LoadedModelInfo(ModelInfo):
    """A bundle in /models, with its engine's load: `status` "ready" is serving (loaded, or
    loaded at its first request under max_loaded_models: `loaded` says which)."""

    loaded: bool = False
    on_demand: bool = False  # loaded at a request's demand and unloaded when least recently used
    load_seconds: float | None = None  # while loaded
    memory_bytes: int | None = None  # the process's resident memory change over its load (approximate)
    file_bytes: int | None = None  # the sizes of the ONNX files of the variant loaded
    # a translation bundle that serves: the decode workers and threads it runs on (the same for all)
    decode_layout: DecodeLayout | None = None


@router.get(
    "/models",
    response_model=list[LoadedModelInfo],
    summary="Bundles, their status, languages or labels, metrics",
    dependencies=[Depends(operator_only)],
)
async def models(request: Request) -> list[LoadedModelInfo]:
    state: ServiceState = request.app.state.service
    out = []
    layout = decode_layout(state.registry)
    for name, m in sorted((state.registry.models if state.registry else {}).items()):
        man, engine = m.manifest, m.engine  # the engine as it is now (an eviction may unload it meanwhile)
        out.append(
            LoadedModelInfo(
                name=name,
                task=man.task if man else "unknown",
                status="ready" if m.ready else "failed",
                error=m.error,
                version=man.version if man else None,
                source_lang=(man.source_lang or None) if man else None,
                target_lang=(man.target_lang or None) if man else None,
                labels=list(man.labels) if man else [],
                variant=engine.variant if engine else None,
                provider=engine.provider if engine else None,
                metrics=list(man.metrics) if man else [],
                loaded=engine is not None,
                on_demand=m.lazy,
                load_seconds=m.load_seconds,
                memory_bytes=m.memory_bytes,
                file_bytes=m.file_bytes,
                decode_layout=layout if m.ready and man is not None and man.task == "translation" else None,
            )
        )
    return out


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(operator_only)])
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/frontend/settings", summary="LibreTranslate's front-end settings (clients read the limits here)")
async def frontend_settings(request: Request) -> dict:
    state: ServiceState = request.app.state.service
    s = state.settings
    targets = sorted({t for _, t in state.registry.pairs}) if state.registry else []
    target = "en" if "en" in targets else (targets[0] if targets else "en")
    return {
        "charLimit": s.max_chars,
        "frontendTimeout": int(s.request_timeout_s * 1000),
        "apiKeys": bool(s.api_keys),
        "keyRequired": bool(s.api_keys),
        "suggestions": False,
        "filesTranslation": True,
        "supportedFilesFormat": EXTENSIONS,
        "language": {
            "source": {"code": "auto", "name": "Auto Detect"},
            "target": {"code": target, "name": language_name(target)},
        },
    }


@router.get("/spec", summary="The OpenAPI document (LibreTranslate's /spec)")
async def spec(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
