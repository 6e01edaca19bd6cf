"""The FastAPI application factory. Models load in the lifespan, never at import time."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import glossary
from service.errors import ServiceError
from service.metrics import Metrics
from service.middleware import BodyLimitAndMetrics, InFlight
from service.registry import ModelDirError, Registry, load_registry
from service.runtime.alignment import AlignRequest
from service.runtime.beam import Steps
from service.runtime.bundle import find_bundles
from service.runtime.classifier import Classifier
from service.runtime.engine import TranslateOptions, TranslationEngine
from service.runtime.translator import Translator
from service.scheduling import BatchScheduler, ContinuousScheduler, Scheduler
from service.scheduling.batches import RunFn, StepFn
from service.security import RateLimiter, operator_only
from service.settings import Settings, get_settings
from service.state import ServiceState

log = logging.getLogger("service")


def _translation_runner(engine: TranslationEngine) -> RunFn:
    """Plain greedy text, or with options (beam_size, n_best) the n-best with scores, or with
    `align` the word alignment of each item (runtime/alignment.AlignRequest)."""

    def run(items: Sequence[Any], **options: Any) -> Sequence[Any]:
        if options.pop("align", False):
            return engine.align(items)
        if not options:
            return [hyps[0].text for hyps in engine.translate_batch(items)]
        return engine.translate_batch(items, TranslateOptions(**options, return_scores=True))

    return run


def _translation_stepper(engine: TranslationEngine) -> StepFn:
    """The runner's beam search with options as a generator that yields between decoder steps."""

    def steps(texts: Sequence[str], **options: Any) -> Steps:
        return engine.translate_batch_steps(texts, TranslateOptions(**options, return_scores=True))

    return steps


def _runners(state: ServiceState, registry: Registry) -> dict[str, RunFn]:
    """Each model's runner for the scheduler; the translators report the tokens they make."""
    runners: dict[str, Any] = {}  # a classifier's answer is an array, one row per text
    for name, engine in registry.translators().items():
        engine.on_tokens = lambda n, name=name: state.metrics.tokens.labels(name).inc(n)
        runners[name] = _translation_runner(engine)
    for name, classifier in registry.classifiers().items():
        runners[name] = classifier.predict
    return runners


def _attach(state: ServiceState, scheduler: Scheduler, name: str, engine: Translator | Classifier) -> None:
    """A bundle loaded after start-up (TRANSERVE_MAX_LOADED_MODELS, service/registry.py) joins
    the scheduler as `_runners` and `_scheduler` add those loaded at start-up."""
    if isinstance(engine, Translator):
        engine.on_tokens = lambda n: state.metrics.tokens.labels(name).inc(n)
        stepper = _translation_stepper(engine) if state.settings.beam_stepped else None
        scheduler.add_model(name, _translation_runner(engine), engine, stepper)
    else:
        scheduler.add_model(name, engine.predict)


def _scheduler(state: ServiceState, registry: Registry) -> Scheduler:
    """The scheduler the settings choose, its worker threads started: continuous (greedy
    sentences join running decode batches) or whole batches."""
    s = state.settings
    runners = _runners(state, registry)

    def on_batch(model: str, size: int, seconds: float) -> None:
        state.metrics.batch_size.labels(model).observe(size)
        state.metrics.batch_seconds.labels(model).observe(seconds)

    def restarted() -> None:
        if state.worker_restarts is not None:
            state.worker_restarts.inc()

    if not (s.scheduler == "continuous" and s.batching):
        return BatchScheduler(
            runners,
            s.max_batch_size,
            s.max_wait_ms,
            s.max_queue,
            on_batch=on_batch,
            merge=s.batching,
            in_flight=state.inflight,
            on_restart=restarted,
        )
    # decode workers x intra-op threads: the start-up probe's pick or the settings' (service/probe.py)
    workers, threads = (
        (registry.workers, registry.threads)
        if registry.layout
        else (s.workers(registry.cuda), s.intra_threads(registry.cuda))
    )
    decoders = registry.translators()  # every served decoder has per-row inputs (contract 1 is refused at load)

    def cost(model: str, item: str | AlignRequest) -> int:
        """An item's tokens in the queue's bound: a text's source tokens, an alignment's source
        and translation tokens (forced decoding reads both); a classifier's text, estimated."""
        engine = decoders.get(model)
        if engine is None:
            return len(item) // 4 + 1
        if isinstance(item, AlignRequest):
            return engine.n_tokens(item.source) + engine.n_tokens(item.translation)
        return engine.n_tokens(item)

    continuous = ContinuousScheduler(
        runners,
        decoders,
        s.max_batch_size,
        s.max_wait_ms,
        s.max_queue,
        max_batch_tokens=s.max_batch_tokens,
        max_queue_tokens=s.max_queue_tokens,
        lanes=s.decode_lanes,
        order=s.admission,
        cost=cost,
        on_batch=on_batch,
        on_dropped=lambda model, n, where: state.metrics.dropped.labels(model, where).inc(n),
        on_done=state.metrics.scheduled,
        in_flight=state.inflight,
        # beam search (alternatives, beam_size > 1) one decoder step per worker turn
        steppers={n: _translation_stepper(e) for n, e in decoders.items()} if s.beam_stepped else None,
        workers=workers,
        on_restart=restarted,
    )
    log.info(
        "continuous scheduler: %d decode workers, %s intra-op threads per call",
        len(continuous.workers),
        threads or "onnxruntime's default of",
    )
    return continuous


def _load(state: ServiceState) -> None:
    """Create the onnxruntime sessions and the scheduler (in a thread: /health answers meanwhile)."""
    try:
        registry = load_registry(state.settings)
        scheduler = state.scheduler = _scheduler(state, registry)
        # bundles loaded on demand join the scheduler, and leave it when unloaded
        registry.connect(
            lambda name, engine: _attach(state, scheduler, name, engine), scheduler.remove_model, state.metrics
        )
        state.registry = registry
        if (reader := glossary.files(state.settings.glossary_dir)) is not None:
            reader.refresh()  # read (and logged) before the first request, which need not wait for it
        state.ready_seconds = round(time.monotonic() - state.started, 3)
        log.info(
            "ready in %.2fs: %s",
            state.ready_seconds,
            {n: ("ready" if m.ready else "failed") for n, m in registry.models.items()},
        )
    except Exception as e:
        state.load_error = str(e)
        log.exception("loading models failed")
    finally:
        state.loading = False


def _lifespan(settings: Settings, metrics: Metrics, inflight: InFlight, worker_restarts: Counter):
    """The app's lifespan: the service state on `app.state.service`, the models loading in a
    thread; at the end the scheduler stopped and the file store closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings=settings, metrics=metrics, inflight=inflight, worker_restarts=worker_restarts)
        if settings.rate_limit_per_minute:
            state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
        app.state.service = state
        # A missing or empty model directory is a configuration error: refuse to start.
        if not settings.model_dir.is_dir() or not find_bundles(settings.model_dir):
            raise ModelDirError(
                f"model directory {settings.model_dir.resolve()} "
                + ("does not exist" if not settings.model_dir.is_dir() else "holds no bundle (*/manifest.json)")
            )
        loader = threading.Thread(target=_load, args=(state,), name="model-loader", daemon=True)
        loader.start()
        yield
        loader.join()
        if state.scheduler:
            state.scheduler.stop()
        if state.files is not None:
            state.files.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    # a scheduler worker whose loop failed and started again (scheduling/supervision.py): beside Metrics'
    # own, on its registry
    worker_restarts = Counter(
        "transerve_worker_restarts_total",
        "batcher (decode) worker loops that failed, failing the requests they held, and started again",
        registry=metrics.registry,
    )
    inflight = InFlight()  # shared by the middleware (counts) and the scheduler (reads)
    app = FastAPI(
        title="transerve",
        version="0.1.0",
        description="Transformer translation and text classification on onnxruntime. "
        "LibreTranslate-compatible /translate, /detect and /languages.",
        lifespan=_lifespan(settings, metrics, inflight, worker_restarts),
        # /docs is served below from local files (FastAPI's loads Swagger UI from a CDN, which an
        # offline deployment cannot reach); /openapi.json too, behind the key when keys are set
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    _docs(app)
    app.state.metrics = metrics
    app.dependency_overrides[get_settings] = lambda: settings

    from service.routes import classify, system, translate

    app.include_router(translate.router)
    app.include_router(classify.router)
    app.include_router(system.router)
    _document_request_bodies(app)
    _error_handlers(app)
    app.add_middleware(
        BodyLimitAndMetrics,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        log_requests=settings.access_log,
        max_inflight=settings.max_inflight_requests,
        body_timeout_s=settings.body_timeout_s,
        inflight=inflight,
    )
    if settings.cors_origins:  # outermost (added last): the body limit's own 413/503/408 carry CORS headers too
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error answer is {"error": ...}: the service's own, unknown routes and methods,
    invalid requests (400 on LibreTranslate's paths, 422 elsewhere), and unexpected failures (500
    with a request id, the traceback logged)."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message, **exc.extra}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes (404), wrong methods (405): {"error": ...} like every other answer
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        # LibreTranslate's endpoints answer 400 to a bad request, so its clients expect that there
        status = 400 if request.url.path in LIBRETRANSLATE_PATHS else 422
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.error("request %s %s failed (request_id=%s)", request.method, request.url.path, request_id, exc_info=exc)
        return JSONResponse({"error": "internal error", "request_id": request_id}, status_code=500)


LIBRETRANSLATE_PATHS = {"/translate", "/detect", "/translate_file"}


def _docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package's files, and the OpenAPI document."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(operator_only)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(operator_only)])
    async def docs(request: Request) -> HTMLResponse:
        key = request.query_params.get("api_key")  # the page's own fetch of the document needs it too
        return get_swagger_ui_html(
            openapi_url="/openapi.json" + (f"?{urlencode({'api_key': key})}" if key else ""),
            title="transerve API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def _document_request_bodies(app: FastAPI) -> None:
    """The routes parse JSON or form bodies themselves (LibreTranslate accepts both), so their
    request models are added to the OpenAPI components by hand."""
    from service.schemas import ClassifyRequest, DetectRequest, TranslateRequest

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (TranslateRequest, DetectRequest, ClassifyRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        # the key schemes (optional unless TRANSERVE_API_KEYS is set) and the limits in force
        schema["components"]["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
            "ApiKeyField": {"type": "apiKey", "in": "query", "name": "api_key", "description": "or a body field"},
        }
        settings: Settings = app.state.settings
        if settings.api_keys:
            schema["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}, {"ApiKeyField": []}]
        schema["info"]["x-limits"] = {
            "max_chars": settings.max_chars,
            "max_items": settings.max_items,
            "max_pieces": settings.max_pieces,
            "max_body_bytes": settings.max_body_bytes,
            "max_header_bytes": settings.max_header_bytes,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
            "rate_limit_by": settings.rate_limit_by,
            "request_timeout_s": settings.request_timeout_s,
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
