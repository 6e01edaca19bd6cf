"""LibreTranslate-compatible translation: POST /translate, POST /detect, GET /languages."""

from __future__ import annotations

import ipaddress
import mimetypes
import os
import re
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service import translation
from service.deps import Call, admitted, charge, guard, ready_state
from service.errors import bad_request
from service.file_store import store
from service.formats import EXTENSIONS, Limits, translate_file
from service.http import PEER
from service.languages import name, normalize
from service.routes.common import ERRORS, body_doc
from service.schemas import DetectedLanguage, DetectRequest, Language, TranslateRequest, TranslateResponse
from service.settings import Settings
from service.state import ServiceState

router = APIRouter(tags=["translation"])


@router.post(
    "/translate",
    response_model=TranslateResponse,
    response_model_exclude_none=True,  # no "detectedLanguage": null, as LibreTranslate
    responses=ERRORS,
    openapi_extra=body_doc(TranslateRequest),
    summary="Translate text (LibreTranslate-compatible)",
)
async def translate(call: Call[TranslateRequest] = Depends(admitted(TranslateRequest, "q"))) -> TranslateResponse:
    body = call.body
    texts = [body.q] if isinstance(body.q, str) else list(body.q)
    how = translation.decoding(call.state, body.beam_size, body.alternatives, body.confidence, body.shortlist)
    glossary = [(t.source, t.target) for t in body.glossary or ()]
    most = call.state.settings.max_glossary_terms
    if len(glossary) > most:
        raise bad_request(f"glossary: too many terms: {len(glossary)} > {most}")
    run = translation.translate_markup if body.format == "html" else translation.translate
    out = await run(
        call.state,
        texts,
        normalize(body.source),
        normalize(body.target),
        how,
        call.charge_sentences,
        glossary=glossary,
    )
    if isinstance(body.q, str):
        return TranslateResponse(
            translatedText=out.texts[0],
            detectedLanguage=out.detected[0] if out.detected else None,
            alternatives=out.alternatives[0] if out.alternatives is not None else None,
            confidence=out.confidence[0] if out.confidence is not None else None,
        )
    return TranslateResponse(
        translatedText=out.texts,
        detectedLanguage=out.detected,
        alternatives=out.alternatives,
        confidence=out.confidence,
    )


@router.post(
    "/detect",
    response_model=list[DetectedLanguage],
    responses=ERRORS | {501: {"model": ERRORS[400]["model"]}},
    openapi_extra=body_doc(DetectRequest),
    summary="Identify the language of a text",
)
async def detect(call: Call[DetectRequest] = Depends(admitted(DetectRequest, "q"))) -> list[DetectedLanguage]:
    return (await translation.detect(call.state, [call.body.q]))[0][:3]


@router.get("/languages", response_model=list[Language], summary="Languages and their targets")
async def languages(state: ServiceState = Depends(ready_state)) -> list[Language]:
    """Every source language with every target it reaches, directly or through English."""
    assert state.registry is not None
    targets = state.registry.targets()
    # as LibreTranslate: a language's targets include itself (the text comes back as it is)
    return [Language(code=c, name=name(c), targets=sorted(t | {c})) for c, t in sorted(targets.items())]


@router.post(
    "/translate_file",
    responses=ERRORS,
    summary=f"Translate a file: {', '.join(EXTENSIONS)} (LibreTranslate-compatible)",
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "source", "target"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "source": {"type": "string"},
                            "target": {"type": "string"},
                            "api_key": {"type": "string"},
                        },
                    }
                }
            }
        }
    },
)
async def translate_file_route(request: Request, state: ServiceState = Depends(ready_state)) -> dict[str, str]:
    """Answers `{"translatedFileUrl": ...}`: the translated file, downloadable from there for
    `file_ttl_s` seconds (formats and bounds: service/formats/, the store: service/file_store.py)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("send the file as multipart/form-data (fields file, source, target)")
    async with request.form() as form:  # closes the upload's spooled temporary file
        return await _translate_upload(request, state, form)


async def _translate_upload(request: Request, state: ServiceState, form) -> dict[str, str]:
    api_key = form.get("api_key") or request.query_params.get("api_key")
    identity = guard(request, state, api_key if isinstance(api_key, str) else None)
    upload, source, target = form.get("file"), form.get("source"), form.get("target")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise bad_request("file: a file is required")
    if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
        raise bad_request("source and target are required")
    src, tgt = normalize(source), normalize(target)
    s = state.settings

    def charge_file(sentences: int) -> None:  # every sentence of the file (admission took one)
        if s.rate_limit_by == "sentences":
            charge(state, identity, sentences)

    files = store(state)
    files.room()  # 503 + Retry-After when the store is full, before any work
    with files.jobs.slot():  # 503 + Retry-After when max_file_jobs files are in progress

        async def run(texts: list[str], html: bool) -> list[str]:
            # in chunks within one request's item and character limits; the sentence cap of a
            # /translate request does not apply (the file's own limits bound its work)
            out: list[str] = []
            chunk: list[str] = []
            for text in [*texts, None]:
                if text is None or len(chunk) >= s.max_items or sum(map(len, chunk)) + len(text) > s.max_chars:
                    if chunk:
                        if html:
                            done = await translation.translate_markup(
                                state, chunk, src, tgt, charge=charge_file, capped=False, offload=files.jobs.run
                            )
                        else:
                            done = await translation.translate(state, chunk, src, tgt, charge=charge_file, capped=False)
                        out += done.texts
                    chunk = []
                if text is not None:
                    chunk.append(text)
            return out

        data = await upload.read()
        limits = Limits(s.max_file_chars, s.max_file_paragraphs, s.max_file_elements)
        translated = await translate_file(data, upload.filename, run, limits, files.jobs.run, target=tgt)
        token, name = await files.jobs.run(files.put, upload.filename, translated)
    return {"translatedFileUrl": f"{public_base(request, s)}/download_file/{token}/{quote(name)}"}


_HOST = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


def public_base(request: Request, settings: Settings) -> str:
    """The base URL a client reaches this service at, for links it is given: `public_url` when
    set; else from a trusted proxy (TRANSERVE_TRUSTED_PROXIES, the socket's peer: service/http.py)
    its X-Forwarded-Host and X-Forwarded-Proto; else the address and port the request reached.
    Never the request's Host header: a client chooses it, and a link built from it could point
    anywhere."""
    if settings.public_url:
        return settings.public_url
    scope = request.scope
    root = scope.get("root_path", "").rstrip("/")
    peer = scope.get(PEER)
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    if peer and forwarded and _HOST.fullmatch(forwarded) and _trusted(peer[0], settings.trusted_proxies):
        return f"{scope['scheme']}://{forwarded}{root}"  # the scheme: X-Forwarded-Proto, applied by uvicorn
    host, port = scope.get("server") or ("localhost", None)
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scope["scheme"])
    return f"{scope['scheme']}://{host}{'' if port in (None, default) else f':{port}'}{root}"


def _trusted(address: str, proxies: list[str]) -> bool:
    """Whether `address` is one of the trusted proxies (addresses, networks or `*`, as uvicorn's
    forwarded_allow_ips takes them)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for proxy in proxies:
        if proxy == "*":
            return True
        try:
            if ip in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:
            continue
    return False


@router.get("/download_file/{token}/{name}", include_in_schema=False)
async def download_file(token: str, name: str, request: Request) -> StreamingResponse:
    """The stored file, read from a file opened before the answer starts: expiry removing it
    meanwhile is a 404 before that, and cannot cut the answer after it."""
    state: ServiceState = request.app.state.service
    file = await run_in_threadpool(store(state).open, token, name)
    size = os.fstat(file.fileno()).st_size
    quoted = quote(name)
    disposition = f'attachment; filename="{name}"' if quoted == name else f"attachment; filename*=utf-8''{quoted}"
    return StreamingResponse(
        _chunks(file),
        media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        headers={"content-length": str(size), "content-disposition": disposition},
    )


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    """The file's bytes in chunks (read in Starlette's thread pool), the file closed at the end."""
    with file:
        while chunk := file.read(64 * 1024):
            yield chunk
