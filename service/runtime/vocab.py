"""Target vocabularies: the decoder's output projection cut to the pieces a target language uses.

A bundle's joint SentencePiece vocabulary covers every language it reads and writes; an English
translation only ever uses the ~6,300 of the multilingual bundle's 16,000 pieces that English
text is made of. The bundle's `target_vocab` file lists, for each target language, the pieces
its training targets contain (`training/vocab.py`), and holds each variant's output-projection
initializers in full. A translator then decodes into a language with a decoder session of the
same graph whose projection initializers are replaced (onnxruntime's `add_initializer`) by
their columns for that language: the same integer products for those columns, so the same
logits as the full graph's there; fewer columns to compute, to write out and to search (the
argmax, beam search's log-softmax and top-k). What changes: no piece outside the language's
training targets can be produced (the full graph's output rarely uses any: BENCHMARKS.md section
10), and a confidence is normalised over the language's pieces.

Every row of a decode batch uses its own target's session: a sentence's output does not depend
on its batch-mates (batch invariance), since the columns it sees are its language's whatever the
batch holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.runtime.bundle import Manifest, target_tag


@dataclass(frozen=True)
class TargetVocab:
    ids: dict[str, np.ndarray]  # target language -> its pieces' ids, ascending
    projection: dict[str, tuple[np.ndarray, int]]  # initializer name -> (full array, vocabulary axis)

    def initializers(self, lang: str) -> dict[str, np.ndarray]:
        """The projection initializers cut to `lang`'s pieces (C-contiguous, as the session wants)."""
        keep = self.ids[lang]
        return {name: np.ascontiguousarray(np.take(a, keep, axis=axis)) for name, (a, axis) in self.projection.items()}


def load_target_vocab(bundle_dir: Path, manifest: Manifest, variant: str) -> TargetVocab | None:
    """The bundle's target vocabularies for `variant`'s decoder; None where the bundle has none
    (older bundles) or none for this variant (its projection was not one to cut)."""
    spec = manifest.target_vocab
    axes = (spec.get("projection") or {}).get(variant) if spec else None
    if not axes:
        return None
    with np.load(bundle_dir / spec["file"]) as data:
        ids = {lang: data[f"ids/{lang}"].astype(np.int64) for lang in spec["languages"]}
        projection = {name: (data[f"{variant}/{name}"], int(axis)) for name, axis in axes.items()}
    return TargetVocab(ids, projection)


def tag_languages(manifest: Manifest, piece_to_id: Callable[[str], int]) -> dict[int, str]:
    """A multilingual bundle's target-tag piece ids -> their languages."""
    langs = manifest.target_vocab.get("languages", []) if manifest.target_vocab else []
    return {piece_to_id(target_tag(lang)): lang for lang in langs}


def target_of(
    manifest: Manifest, vocab: TargetVocab | None, tag_langs: dict[int, str], source: Sequence[int]
) -> str | None:
    """The target language whose vocabulary decodes `source` (its tag, the first piece after the
    leading space; a single-target bundle's target); None: the full vocabulary."""
    if vocab is None:
        return None
    if not manifest.target_tags:
        lang = manifest.target_lang or manifest.pairs()[0][1]
        return lang if lang in vocab.ids else None
    for piece in source[:2]:
        if piece in tag_langs:
            return tag_langs[piece]
    return None
