"""Long classifier inputs are read to their end in windows, not cut at the model's length."""

from __future__ import annotations

import numpy as np

from service.runtime.bundle import load_manifest
from service.runtime.classifier import Classifier
from service.runtime.preprocess import BOS_ID, classifier_windows
from service.runtime.sessions import resolve_providers


def test_windows_cover_every_piece_once():
    pieces = list(range(10, 10 + 130))
    windows = classifier_windows(pieces, max_len=64)
    assert [len(w) for w in windows] == [64, 64, 5]  # 63 + 63 + 4 pieces, each after <s>
    assert all(w[0] == BOS_ID for w in windows)
    assert [p for w in windows for p in w[1:]] == pieces
    assert classifier_windows(pieces[:63], max_len=64) == [[BOS_ID, *pieces[:63]]]


def test_long_text_probability_is_the_length_weighted_mean_of_its_windows(model_dir):
    bundle = model_dir / "sentiment"
    engine = Classifier(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1)
    words = ("the movie was really good and the acting fine " * 20).split()
    long_text = " ".join(words)
    windows = engine.windows([long_text])[0]
    assert len(windows) >= 2 and engine.max_len == 64
    pieces = engine.sp.encode(long_text)
    parts = [engine.sp.decode(w[1:]) for w in windows]
    assert [p for w in windows for p in w[1:]] == pieces
    each = np.stack([engine.predict([p])[0] for p in parts])
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    expected = (each * weights[:, None]).sum(0) / weights.sum()
    got = engine.predict([long_text, "good"])  # batched with a short text: same answer
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    np.testing.assert_allclose(got[1], engine.predict(["good"])[0], atol=1e-6)
