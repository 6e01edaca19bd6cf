"""One multilingual translation model: parallel sets used in every listed direction, a target
tag <2xx> before each source (one tokenizer piece), per-direction validation and release
metrics, and a bundle whose manifest lists its directions for the service."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from service.runtime.bundle import load_manifest, tag_source, target_tag
from tests.conftest import TINY_MODEL, WORDS_DE, WORDS_EN, write_lines

WORDS_FR = "bonjour monde maison chat chien un une le la les homme femme enfant joue court rouge bleu".split()


def make_multilingual(root: Path, n: int = 300) -> dict[str, Path]:
    """Toy de-en and fr-en corpora (word substitution), each in its own folder as the real ones."""
    rng = random.Random(5)
    out = {}
    for lang, words in (("de", WORDS_DE), ("fr", WORDS_FR)):
        lookup = dict(zip(words, WORDS_EN))
        for split, size in (("train", n), ("valid", 12)):
            src = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(size)]
            write_lines(root / f"{lang}-en" / f"{split}.{lang}.gz", src)
            write_lines(root / f"{lang}-en" / f"{split}.en.gz", [" ".join(lookup[w] for w in s.split()) for s in src])
        out[lang] = root / f"{lang}-en"
    return out


def multilingual_config(dirs: dict[str, Path], **train):
    from training.config import config_from_dict

    return config_from_dict(
        {
            "name": "multi",
            "task": "translation",
            "data": {
                "directions": ["de-en", "en-de", "fr-en"],
                "target_tags": True,
                "train_split": "train",
                "valid_split": "valid",
                "train_sets": [f"de-en {dirs['de']} train", f"fr-en {dirs['fr']} train repeat=2"],
                "valid_sets": [f"de-en {dirs['de']} valid", f"fr-en {dirs['fr']} valid limit=5"],
                "eval_sets": [f"toy de-en {dirs['de']} valid limit=6", f"toy fr-en {dirs['fr']} valid limit=6"],
                "test_splits": ["toy"],
            },
            "tokenizer": {"vocab_size": 90},
            "model": TINY_MODEL,
            "train": {
                "max_tokens": 512,
                "lr": 3e-3,
                "warmup_steps": 30,
                "epochs": 1,
                "checkpoint_every": 10,
                "snapshot_every": 10,
                "patience": 0,
                "seed": 3,
                "label_smoothing": 0.0,
                "amp": "off",
                **train,
            },
        }
    )


def test_sets_expand_to_every_direction_with_tags_and_repeats(tmp_path):
    from training.tasks import make_task

    cfg = multilingual_config(make_multilingual(tmp_path))
    task = make_task(cfg, tokenizer=None)  # type: ignore[arg-type]
    rows = task.raw("train")
    dirs = task.row_directions["train"]
    assert dirs.count("de-en") == dirs.count("en-de") == 300 and dirs.count("fr-en") == 600
    assert "fr-en" in dirs and "en-fr" not in dirs  # only the listed directions
    src, tgt = rows[dirs.index("en-de")]
    assert src.startswith(target_tag("de") + " ") and tgt.split()[0] in WORDS_DE
    assert rows[dirs.index("de-en")][0].startswith("<2en> ")
    assert task.row_directions["valid"] if task.raw("valid") else False
    assert len(task.raw("valid")) == 12 + 12 + 5  # de-en and en-de from one set, fr-en limited
    assert len(task.raw("toy")) == 6 + 6 + 6


def test_bad_sets_are_refused(tmp_path):
    from training.data import ParallelSet, load_directions

    with pytest.raises(ValueError, match="must look like"):
        ParallelSet.parse("de-en only-a-dir")
    with pytest.raises(ValueError, match="unknown option"):
        ParallelSet.parse("de-en d train weight=2")
    dirs = make_multilingual(tmp_path)
    with pytest.raises(ValueError, match="matches none of the directions"):
        load_directions([f"fr-en {dirs['fr']} train"], ["de-en"], tags=True)
    with pytest.raises(ValueError, match="target_tags"):
        multilingual_config(dirs).__class__(**{**multilingual_config(dirs).__dict__, "data": _untagged(dirs)})


def _untagged(dirs):
    from dataclasses import replace

    return replace(multilingual_config(dirs).data, target_tags=False)


def test_tags_are_single_pieces_and_release_reports_each_direction(tmp_path):
    from training.release import release
    from training.tokenizer import Tokenizer

    dirs = make_multilingual(tmp_path / "data")
    cfg = multilingual_config(dirs, epochs=2)
    report = release(cfg, tmp_path / "run", tmp_path / "bundle")
    tok = Tokenizer(tmp_path / "run" / "spm.model")
    for lang in ("en", "de"):  # the tag is one piece (after SentencePiece's word-start mark)
        ids = tok.sp.encode(tag_source("hund katze", lang))
        assert ids[:2] == [tok.sp.piece_to_id("▁"), tok.piece_to_id(target_tag(lang))]
        assert ids[2:] == tok.sp.encode("hund katze")
    assert list((tmp_path / "run").glob("step*.pt")), "snapshots for averaging"
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest.directions == ["de-en", "en-de", "fr-en"] and manifest.target_tags
    assert manifest.pairs() == [("de", "en"), ("en", "de"), ("fr", "en")]
    assert manifest.model_input("hund", "en") == "<2en> hund"
    per = {(m["split"], m.get("direction"), m["name"]) for m in manifest.metrics}
    assert {("toy", "de-en", "bleu"), ("toy", "en-de", "bleu"), ("toy", "fr-en", "chrf")} <= per
    assert {("valid", "fr-en", "bleu")} <= per
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "| toy |" in card and "de-en, en-de, fr-en" in card
    assert report["served_variant"] == manifest.default_variant


def test_release_of_a_given_checkpoint_does_not_train(tmp_path):
    from training.release import release
    from training.train import train

    dirs = make_multilingual(tmp_path / "data", n=80)
    cfg = multilingual_config(dirs, snapshot_every=3)
    train(cfg, tmp_path / "run", device="cpu")
    snaps = sorted((tmp_path / "run").glob("step*.pt"), key=lambda p: int(p.stem[4:]))
    assert len(snaps) >= 2
    (tmp_path / "run" / "last.pt").rename(tmp_path / "run" / "kept.pt")  # training would need it to resume
    release(cfg, tmp_path / "run", tmp_path / "bundle", checkpoint=snaps[-1])
    assert not (tmp_path / "run" / "last.pt").exists(), "release with a checkpoint must not train"
    assert load_manifest(tmp_path / "bundle").training["checkpoint"] == snaps[-1].name


def test_a_fine_tuned_release_cards_its_whole_training_history(tmp_path):
    from dataclasses import replace

    from training.release import release

    dirs = make_multilingual(tmp_path / "data", n=80)
    cfg = multilingual_config(dirs, epochs=1)
    bundle = tmp_path / "bundle"
    release(cfg, tmp_path / "run", bundle)
    first = load_manifest(bundle).training["stages"]
    assert len(first) == 1 and first[0]["init_from"] == "" and first[0]["steps"] > 0
    tuned = replace(
        cfg,
        data=replace(cfg.data, limits="Short toy sentences only."),
        train=replace(cfg.train, init_from=str(bundle / "weights.pt")),
    )
    for _ in range(2):  # the second release of the same run replaces its stage, never adds one
        release(tuned, tmp_path / "run-ft", bundle, force=True)
        stages = load_manifest(bundle).training["stages"]
        assert [s["init_from"] for s in stages] == ["", str(bundle / "weights.pt")]
    card = (bundle / "README.md").read_text()
    total = stages[0]["steps"] + stages[1]["steps"]
    assert f"In all: 2 stages, {total:,} steps" in card
    assert "## Limits" in card and "Short toy sentences only." in card
