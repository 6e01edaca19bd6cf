"""`python -m training data backtranslate`: synthetic pairs from English text, resumable."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

import training.backtranslate as bt
from training.data import ParallelSet

BUNDLE = Path(__file__).resolve().parents[2] / "model" / "multi"  # the shipped one: the tiny bundles output nothing


def _lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_backtranslation_writes_aligned_pairs_and_resumes(tmp_path, monkeypatch):
    english = [f"a man and a woman walk in the park number {i}" for i in range(10)] + ["too short", ""]
    (tmp_path / "mono.en").write_text("\n".join(english) + "\n", encoding="utf-8")
    out = tmp_path / "bt"
    monkeypatch.setattr(bt, "CHUNK", 4)
    first = bt.backtranslate(BUNDLE, "de", [tmp_path / "mono.en"], out, limit=6)
    assert first["pairs"] == 6 and (out / "train.de-en.done").read_text() == "6"
    again = bt.backtranslate(BUNDLE, "de", [tmp_path / "mono.en"], out, limit=10)  # continues after line 6
    en = _lines(out / "train.de-en.en.gz")
    de = _lines(out / "train.de-en.de.gz")
    assert len(en) == len(de) == again["pairs"] == len(_lines(out / "train.de-en.source.gz"))
    assert en == english[:10]  # in order, none twice, the short and empty lines skipped
    assert set(_lines(out / "train.de-en.source.gz")) == {"bt"}
    assert len(ParallelSet.parse(f"de-en {out} train.de-en only=bt").load()) == len(en)
    with pytest.raises(ValueError, match="does not translate en->ja"):
        bt.backtranslate(BUNDLE, "ja", [tmp_path / "mono.en"], out, limit=2)
