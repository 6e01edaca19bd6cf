"""Batched text classification: one encoder graph with pooling and softmax inside.

Graph: ids (B, T) int64 -> probabilities (B, n_labels) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.runtime import graph_io
from service.runtime.bundle import Manifest
from service.runtime.preprocess import classifier_ids, classifier_windows
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

    def windows(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each text's inputs: one window, or several for a text longer than the model reads."""
        return [classifier_windows(ids, self.max_len, self.bos) for ids in self.sp.encode(list(texts))]

    def n_tokens(self, text: str) -> int:
        return len(self.sp.encode(text)) + 1

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities (N, n_labels) for one batch of texts, in their order. A text longer than
        the model's length is read in windows whose probabilities are averaged, weighted by
        their lengths (preprocess.classifier_windows)."""
        per_text = self.windows(texts)
        flat = [w for ws in per_text for w in ws]
        ids = np.full((len(flat), max(len(e) for e in flat)), self.pad, dtype=np.int64)
        for i, e in enumerate(flat):
            ids[i, : len(e)] = e
        (probs,) = self.graph.run([graph_io.PROBABILITIES], {graph_io.CLASSIFIER_IDS: ids})
        if len(flat) == len(texts):
            return probs
        out = np.empty((len(texts), probs.shape[1]), dtype=probs.dtype)
        start = 0
        for k, ws in enumerate(per_text):
            weights = np.array([len(w) for w in ws], dtype=np.float64)
            out[k] = (probs[start : start + len(ws)] * weights[:, None]).sum(0) / weights.sum()
            start += len(ws)
        return out
