"""benchmarks/engines.py's one-command form on a released bundle (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.engines import bundle_defaults, default_split, engine_names, result_rows

ROOT = Path(__file__).resolve().parents[2]


def test_engine_aliases_expand_once_in_order():
    assert engine_names(["served", "ct2"]) == ["served", "ct2-fp32", "ct2-int8"]
    assert engine_names(["ct2-int8", "ct2", "served"]) == ["ct2-int8", "ct2-fp32", "served"]
    with pytest.raises(SystemExit, match="unknown engine 'ct3'"):
        engine_names(["ct3"])


def test_default_split_is_a_validation_set_never_a_test_set():
    data = SimpleNamespace(eval_sets=["tatoeba-test de-en x test", "tatoeba-valid de-en x valid"], test_splits=[])
    assert default_split(SimpleNamespace(data=data)) == "tatoeba-valid"
    data = SimpleNamespace(eval_sets=[], test_splits=["test_2016_flickr"])
    assert default_split(SimpleNamespace(data=data)) == "test_2016_flickr"  # multi30k configs: their only split


def test_bundle_gives_config_weights_and_tokenizer(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps({"tokenizer": "spm.model", "training": {"config": {"source": "training/configs/x.toml"}}})
    )
    (tmp_path / "weights.pt").write_bytes(b"")
    args = SimpleNamespace(bundle=str(tmp_path), config=None, checkpoint=None, tokenizer=None)
    bundle_defaults(args)
    assert args.config == "training/configs/x.toml"
    assert args.checkpoint == tmp_path / "weights.pt" and args.tokenizer == tmp_path / "spm.model"
    given = SimpleNamespace(bundle=str(tmp_path), config="c.toml", checkpoint=Path("w.pt"), tokenizer=Path("t"))
    bundle_defaults(given)
    assert (given.config, given.checkpoint, given.tokenizer) == ("c.toml", Path("w.pt"), Path("t"))
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(SystemExit, match="no weights.pt"):
        bundle_defaults(SimpleNamespace(bundle=str(tmp_path), config=None, checkpoint=None, tokenizer=None))


def test_result_rows_reads_both_file_shapes():
    rows = [{"engine": "served", "beam": 4, "batch": 32, "tokens_per_s": 1.0, "bleu": 2.0}]
    assert result_rows(rows) == rows
    assert result_rows({"results": rows}) == rows  # the older files' shape


@pytest.mark.parametrize("beam", [1, 4])
def test_served_worker_decodes_the_bundle_as_shipped(model_dir, tmp_path, beam):
    sources = ["der hund spielt", "eine katze", "das haus ist rot"]
    (tmp_path / "sources.json").write_text(json.dumps(sources))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engines.py"), "--worker", "served", "--bundle",
         str(model_dir / "de-en"), "--sources", str(tmp_path / "sources.json"), "--beam", str(beam),
         "--batch", "2", "--threads", "1", "--repeats", "1"],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert (row["engine"], row["beam"], row["batch"]) == ("served", beam, 2)
    assert len(row["hypotheses"]) == len(sources) and row["tokens"] >= len(sources)  # each at least its </s>
    assert len(row["seconds"]) == 1 and row["seconds"][0] > 0
