"""What an engine offers the rest of the service: the registry, the scheduler and the app depend
on these protocols, not on the onnxruntime classes (runtime/translator.py, runtime/classifier.py)
that implement them. A second backend implements the same members.

* `TranslationEngine`: text level, one entry point with options (`translate_batch`, as
  CTranslate2's), and what the scheduler asks of a sentence before it is decoded.
* `StepEngine`: step level, what a running batch (runtime/continuous.DecodeBatch) drives: the
  state before the first step and one decoder step on feeds the batch builds itself.
* `ClassificationEngine`: probabilities per label for a batch of texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from service.runtime.beam import Steps
from service.runtime.bundle import Manifest
from service.runtime.codec import Codec
from service.runtime.loop_guard import LoopGuard
from service.runtime.shortlist import Shortlist
from service.runtime.vocab import TargetVocab


@dataclass(frozen=True)
class TranslateOptions:
    """How `translate_batch` decodes. `beam_size` 1 is greedy decoding; `return_scores` with it
    sums each output's log-probabilities (beam search always does); `loop_guard` False: without
    the engine's loop guard (runtime/loop_guard.py); `shortlist` False: without the bundle's
    lexical shortlist (runtime/shortlist.py), every piece of the target language."""

    beam_size: int = 1
    n_best: int = 1
    length_penalty: float = 1.0
    return_scores: bool = False
    loop_guard: bool = True
    shortlist: bool = True


class Translation(NamedTuple):
    """One hypothesis of a sentence (a tuple: callers that index it keep working)."""

    text: str
    score: float  # sum of its tokens' log-probabilities, </s> included (0.0 unscored)
    length: int  # tokens, </s> included (0 for an empty source)


class StepEngine(Protocol):
    """A decoder that a running batch steps itself (graph contract 2 or 3: per-row positions)."""

    manifest: Manifest
    static: bool  # contract 3: fixed-width caches written in place, no self mask
    bos: int
    eos: int
    encoder_outputs: list[str]
    cache_names: list[str]
    loop_guard: LoopGuard | None  # runtime/loop_guard.py (None: off)
    shortlist: Shortlist | None  # runtime/shortlist.py: the lists this engine decodes with (None: none)

    def batch_engine(self) -> StepEngine:
        """The engine a running batch of this one steps (itself, or its view with the bundle's
        shortlist where it decodes with one by default)."""
        ...

    def padded(self, sources: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]: ...

    def start(self, src: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]: ...

    def run_step(
        self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray], extra: Sequence[str] = ()
    ) -> Any: ...

    def tokens_of(self, columns: np.ndarray) -> np.ndarray: ...


class TranslationEngine(Protocol):
    """Text in, translations out; and what scheduling asks of a sentence before decoding it."""

    manifest: Manifest
    max_len: int
    text: Codec  # text <-> token ids, never half a UTF-8 character
    aligns: bool  # `align` gives links (the decoder has an alignment output)
    target_vocab: TargetVocab | None
    on_tokens: Callable[[int], None] | None  # told how many tokens each decoding made

    def translate_batch(self, texts: Sequence[str], options: TranslateOptions = ...) -> list[list[Translation]]: ...

    def translate_batch_steps(self, texts: Sequence[str], options: TranslateOptions = ...) -> Steps: ...

    def align(self, pairs: Sequence[tuple[str, str]]) -> list[list[tuple[int, int, int, int]]]: ...

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...

    def n_tokens(self, text: str) -> int: ...

    def output_limit(self, n_tokens: int) -> int: ...

    def target_of(self, source: Sequence[int]) -> str | None: ...

    def view(self, lang: str | None, shortlist: bool | None = None) -> DecodingEngine: ...


class DecodingEngine(TranslationEngine, StepEngine, Protocol):
    """A translation engine whose sentences can also join a running batch."""


class ClassificationEngine(Protocol):
    manifest: Manifest
    labels: list[str]

    def n_tokens(self, text: str) -> int: ...

    def predict(self, texts: Sequence[str]) -> np.ndarray: ...


if TYPE_CHECKING:  # mypy checks that the onnxruntime engines implement these protocols
    from service.runtime.classifier import Classifier
    from service.runtime.translator import Translator

    def _implemented(t: Translator, c: Classifier) -> tuple[DecodingEngine, ClassificationEngine]:
        return t, c
