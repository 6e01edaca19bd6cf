"""benchmarks/engines.py --model-size: one model's weights in both engines, every sentence decoded
to the same number of tokens by each (a tiny model; no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.base_model import DATA

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("ctranslate2", reason="CTranslate2 is a dev extra (pip install -e .[bench]); not installed")
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"no Tatoeba de-en data at {DATA}")


def test_model_size_builds_both_engines_from_the_same_weights(tmp_path):
    out = tmp_path / "engines.json"
    cmd = [sys.executable, "-m", "benchmarks.engines", "--model-size", "tiny", "--cache-dir", str(tmp_path / "cache"),
           "--limit", "12", "--beam", "1", "4", "--batch", "4", "--engines", "ort-fp32", "ct2-fp32", "--threads", "1",
           "--repeats", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    rows = json.loads(out.read_text())
    assert {(r["engine"], r["beam"]) for r in rows} == {(e, b) for e in ("ort-fp32", "ct2-fp32") for b in (1, 4)}
    length = rows[0]["output_length"]
    assert length > 1
    for r in rows:  # every sentence `length` tokens and its </s>, in every engine, greedy and beam
        assert r["tokens"] == 12 * (length + 1), r["engine"]
        assert r["tokens_equal_across_engines"]
    agreement = rows[0]["fp32_agreement"]
    assert agreement["lengths_ours"] == agreement["lengths_ct2"] == [length]
    assert agreement["identical_tokens"] >= 0.9  # same weights: the fp32 engines agree but for rounding near-ties
    built = json.loads(next((tmp_path / "cache").glob("tiny-*/built.json")).read_text())
    assert built["config"]["output_bias"] and built["eos_bias"] < -1000
