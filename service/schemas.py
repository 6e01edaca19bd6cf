"""Request and response bodies. Field limits live here so pydantic produces the 422s."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Text = Annotated[str, StringConstraints(min_length=1)]
Texts = Annotated[list[str], Field(min_length=1)]  # items may be "" (answered "", as LibreTranslate)
LangCode = Annotated[str, StringConstraints(min_length=2, max_length=16, pattern=r"^[A-Za-z-]+$")]


def check_texts(value: object) -> object:
    """One clear message per way a text field can be wrong (rather than one per union branch)."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must not be empty")
    elif isinstance(value, list):
        if not value:
            raise ValueError("must not be an empty list")
        if not all(isinstance(v, str) for v in value):
            raise ValueError("must be a string or a list of strings")
    else:
        raise ValueError("must be a string or a list of strings")
    return value


MAX_TERM_CHARS, MAX_TERM_TARGET_CHARS = 100, 200  # a glossary term, and its translation


class GlossaryTerm(BaseModel):
    source: str = Field(description="a term of the source text (whole words, case-insensitive)")
    target: str = Field(description="its translation, put in exactly as given")


def check_glossary(value: object) -> object:
    """One stable message per way a glossary can be wrong (its size is bounded by the route:
    `TRANSERVE_MAX_GLOSSARY_TERMS`)."""
    if value is None:
        return value
    if not isinstance(value, list):
        raise ValueError("must be a list of {source, target} terms")
    for k, term in enumerate(value):
        if not isinstance(term, dict) or set(term) - {"source", "target"}:
            raise ValueError(f"term {k}: must be an object with the strings source and target")
        for side, most in (("source", MAX_TERM_CHARS), ("target", MAX_TERM_TARGET_CHARS)):
            text = term.get(side)
            if not isinstance(text, str):
                raise ValueError(f"term {k}: {side} must be a string")
            if not text.strip():
                raise ValueError(f"term {k}: {side} must not be empty")
            if len(text) > most:
                raise ValueError(f"term {k}: {side} longer than {most} characters")
        if not any(ch.isalnum() for ch in term["source"]):
            raise ValueError(f"term {k}: source must hold a letter or digit")
    return value


class TranslateRequest(BaseModel):
    """LibreTranslate's /translate body."""

    model_config = ConfigDict(extra="ignore")

    q: Text | Texts = Field(description="text, or a list of texts, to translate")
    source: LangCode = Field("auto", description="source language code, or 'auto' to detect it")
    target: LangCode = Field(description="target language code")
    format: Literal["text", "html"] = Field(
        "text", description="text, or html: markup kept, its text translated (script, style, code, translate=no left)"
    )
    api_key: str | None = Field(None, description="API key, if the server requires one")
    alternatives: int = Field(0, description="also return up to this many other distinct translations")
    beam_size: int | None = Field(None, description="beam search width (1 = greedy); default: the server's")
    confidence: bool = Field(
        False,
        description="also return a confidence per text: 100 x the geometric mean of its tokens' probabilities",
    )
    shortlist: bool = Field(
        True,
        description="decode with the model's lexical shortlist where it has one and the server uses it (each "
        "sentence's output pieces cut to those its source suggests); false = every piece of the target language",
    )

    glossary: list[GlossaryTerm] | None = Field(
        None,
        description="terms whose translation is fixed: each term found in a text comes out as its target "
        "(over the server's glossary of the pair)",
    )

    _check_q = field_validator("q", mode="before")(check_texts)
    _check_glossary = field_validator("glossary", mode="before")(check_glossary)


class DetectedLanguage(BaseModel):
    language: str
    confidence: float = Field(description="0-100, as LibreTranslate")


class TranslateResponse(BaseModel):
    translatedText: str | list[str]
    detectedLanguage: DetectedLanguage | list[DetectedLanguage] | None = None
    alternatives: list[str] | list[list[str]] | None = None
    confidence: float | list[float] | None = None


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    q: Text = Field(description="text whose language to identify")
    api_key: str | None = None

    _check_q = field_validator("q", mode="before")(check_texts)


class Language(BaseModel):
    code: str
    name: str
    targets: list[str]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: Text | Texts = Field(description="text, or a list of texts, to classify")
    model: str = Field(min_length=1, max_length=64, description="classification bundle name, e.g. sentiment-en")
    api_key: str | None = None

    _check_text = field_validator("text", mode="before")(check_texts)


class Prediction(BaseModel):
    label: str
    probability: float
    probabilities: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    task: str
    status: Literal["ready", "failed"]
    error: str | None = None
    version: str | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    labels: list[str] = []
    variant: str | None = None
    provider: str | None = None
    metrics: list[dict] = []


class ErrorResponse(BaseModel):
    error: str
