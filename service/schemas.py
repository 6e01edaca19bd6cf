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

    _check_q = field_validator("q", mode="before")(check_texts)


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
