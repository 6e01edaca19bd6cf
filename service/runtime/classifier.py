"""Batched text classification: one encoder graph with pooling and softmax inside.

Graph: ids (B, T) int64 -> probabilities (B, n_labels) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.runtime import graph_io
from service.runtime.bundle import Manifest
from service.runtime.preprocess import classifier_ids
from service.runtime.sessions import BundleEngine


class Classifier(BundleEngine):
    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        providers: list[str],
        threads: int = 0,
        variant: str | None = None,
        memory_arena: bool = False,
    ) -> None:
        super().__init__(bundle_dir, manifest, variant, memory_arena)
        self.graph = self.session("classifier", providers, threads)
        self.pad, self.bos = manifest.special_ids["pad"], manifest.special_ids["bos"]
        self.labels = list(manifest.labels)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """<s> (the classification position) + pieces, cut to the model's length."""
        return [classifier_ids(ids, self.max_len, self.bos) for ids in self.sp.encode(list(texts))]

    def n_tokens(self, text: str) -> int:
        return len(self.sp.encode(text)) + 1

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities (N, n_labels) for one batch of texts, in their order."""
        encoded = self.encode(texts)
        ids = np.full((len(encoded), max(len(e) for e in encoded)), self.pad, dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e
        (probs,) = self.graph.run([graph_io.PROBABILITIES], {graph_io.CLASSIFIER_IDS: ids})
        return probs
