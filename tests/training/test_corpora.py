"""The real corpora in ../shared/data (marked `corpus`: skipped outside CI when absent)."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_DATA
from training.data import CORPORA, load_langid, load_parallel, load_tsv, sha256_file, short_spans

pytestmark = pytest.mark.corpus


def test_multi30k_files_match_the_registered_checksums():
    spec = CORPORA["multi30k"]
    present = [n for n in spec.files if (SHARED_DATA / "multi30k" / n).exists()]
    assert len(present) >= 12
    for name in present:
        assert sha256_file(SHARED_DATA / "multi30k" / name) == spec.files[name], name


def test_multi30k_splits_are_aligned():
    assert len(load_parallel(SHARED_DATA / "multi30k", "train", "de", "en")) == 29000
    test = load_parallel(SHARED_DATA / "multi30k", "test_2016_flickr", "de", "en")
    assert len(test) == 1000 and all(s and t for s, t in test)
    assert len(load_parallel(SHARED_DATA / "zh-en", "valid", "zh", "en")) == 1000


def test_sst2_and_chnsenticorp_load_with_labels():
    dev = load_tsv(SHARED_DATA / "sst2" / "dev.tsv.gz", ["negative", "positive"])
    assert len(dev) == 872 and {y for _, y in dev} == {0, 1}
    zh = load_tsv(SHARED_DATA / "chnsenticorp" / "dev.tsv.gz", ["negative", "positive"])
    assert len(zh) == 1200


def test_langid_reads_monolingual_sides():
    rows = load_langid([f"de={SHARED_DATA / 'multi30k'}", f"zh={SHARED_DATA / 'zh-en'}"], ["de", "zh"], "valid")
    assert sum(1 for _, y in rows if y == 0) == 1014 and sum(1 for _, y in rows if y == 1) == 1000
    spans = short_spans(rows, seed=0)
    assert all(len(t.split()) <= 3 for t, y in spans if y == 0)
    assert all(len(t) <= 4 for t, y in spans if y == 1)
