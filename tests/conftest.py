"""Shared fixtures: tiny corpora written to tmp dirs, tiny models, and exported tiny bundles.

Nothing here needs ../shared: the data is made in the test. Tests that need the real corpora
carry the `corpus` marker and skip outside CI when ../shared/data is absent.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

WORDS_DE = "hallo welt haus katze hund ein eine der die das mann frau kind spielt läuft rot blau".split()
WORDS_EN = "hello world house cat dog a an the the the man woman child plays runs red blue".split()


# Tiny bundles committed for the runtime and service tests (no torch needed to load them);
# rebuilt by `python -m tests.build_tiny_bundles`.
TINY_BUNDLES = Path(__file__).resolve().parent / "data" / "tiny-bundles"


def pytest_configure(config):
    # Tiny models run fastest on one thread, and tests must not fight a background job for cores.
    try:
        import torch
    except ImportError:  # the service's own install: runtime and service tests only
        return
    torch.set_num_threads(1)


CHROMIUM = Path(os.environ.get("TRANSERVE_CHROMIUM", "/usr/bin/chromium"))


def pytest_collection_modifyitems(config, items):
    _skip_outside_ci(items, "corpus", SHARED_DATA.is_dir(), f"needs the real corpora in {SHARED_DATA}")
    _skip_outside_ci(
        items, "browser", CHROMIUM.exists(), f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    )


def _skip_outside_ci(items, marker: str, available: bool, reason: str) -> None:
    """Tests with `marker` skip when what they need is missing, except in CI, which must run them."""
    if available or not any(marker in item.keywords for item in items):
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"CI must run the {marker} tests, but: {reason}")
    skip = pytest.mark.skip(reason=f"{reason} (run in CI)")
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def make_parallel_corpus(root: Path, n_train: int = 400, n_valid: int = 20, seed: int = 0) -> Path:
    """A toy de-en corpus: word-by-word substitution, so a tiny model can learn it."""
    rng = random.Random(seed)
    lookup = dict(zip(WORDS_DE, WORDS_EN))

    def pairs(n: int) -> tuple[list[str], list[str]]:
        de, en = [], []
        for _ in range(n):
            words = [rng.choice(WORDS_DE) for _ in range(rng.randint(2, 7))]
            de.append(" ".join(words))
            en.append(" ".join(lookup[w] for w in words))
        return de, en

    for split, n in (("train", n_train), ("val", n_valid), ("test", n_valid)):
        de, en = pairs(n)
        write_lines(root / f"{split}.de.gz", de)
        write_lines(root / f"{split}.en.gz", en)
    return root


def make_tsv(root: Path, n_train: int = 300, n_valid: int = 40, seed: int = 0) -> Path:
    """A separable sentiment task: positive texts contain 'good'-words, negative 'bad'-words."""
    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    filler = ["the", "movie", "was", "really", "quite", "plot", "acting", "and"]

    def rows(n: int) -> list[str]:
        out = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.randint(0, 1)
            words = [rng.choice(filler) for _ in range(rng.randint(2, 6))]
            words.insert(rng.randint(0, len(words)), rng.choice(pos if y else neg))
            out.append(" ".join(words) + f"\t{y}")
        return out

    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv.gz", n_train), ("dev.tsv.gz", n_valid)):
        with gzip.open(root / name, "wt", encoding="utf-8") as f:
            f.write("\n".join(rows(n)) + "\n")
    return root


def write_tiny_toml(path: Path, data_dir: Path, name: str, train: str) -> Path:
    """A tiny translation config as a TOML file, for tests that run the CLI."""
    path.write_text(
        f'name = "{name}"\ntask = "translation"\n[data]\ndir = "{data_dir}"\nsource_lang = "de"\n'
        'target_lang = "en"\n[tokenizer]\nvocab_size = 60\n[model]\nd_model = 32\nn_heads = 2\nd_ff = 64\n'
        "n_encoder_layers = 1\nn_decoder_layers = 1\nmax_len = 64\n"
        f'[train]\namp = "off"\nthreads = 1\n{train}'
    )
    return path


TINY_MODEL = {
    "d_model": 32,
    "n_heads": 2,
    "d_ff": 64,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "max_len": 64,
}


def translation_config(data_dir: Path, name: str = "de-en", src: str = "de", tgt: str = "en", **train):
    from training.config import config_from_dict

    return config_from_dict(
        {
            "name": name,
            "task": "translation",
            "data": {
                "dir": str(data_dir),
                "source_lang": src,
                "target_lang": tgt,
                "train_split": "train",
                "valid_split": "val",
                "test_splits": ["test"],
            },
            "tokenizer": {"vocab_size": 60},
            "model": TINY_MODEL,
            "train": {
                "max_tokens": 512,
                "lr": 3e-3,
                "warmup_steps": 30,
                "epochs": 1,
                "checkpoint_every": 10,
                "patience": 0,
                "seed": 3,
                "label_smoothing": 0.0,
                "amp": "off",
                **train,
            },
        }
    )


def classification_config(data_dir: Path, name: str = "sentiment", **train):
    from training.config import config_from_dict

    return config_from_dict(
        {
            "name": name,
            "task": "classification",
            "data": {"dir": str(data_dir), "labels": ["negative", "positive"]},
            "tokenizer": {"vocab_size": 40},
            "model": {**TINY_MODEL, "n_decoder_layers": 0},
            "train": {
                "max_tokens": 512,
                "lr": 3e-3,
                "warmup_steps": 20,
                "epochs": 1,
                "checkpoint_every": 1000,
                "patience": 0,
                "seed": 3,
                "amp": "off",
                **train,
            },
        }
    )


@pytest.fixture(scope="session")
def parallel_dir(tmp_path_factory) -> Path:
    return make_parallel_corpus(tmp_path_factory.mktemp("parallel"))


@pytest.fixture(scope="session")
def tsv_dir(tmp_path_factory) -> Path:
    return make_tsv(tmp_path_factory.mktemp("tsv"))


def _export_random(
    cfg,
    run_dir: Path,
    out: Path,
    seed: int,
    train_first: bool = False,
    static_cache: bool = True,
    alignment_in_graph: bool = False,
) -> Path:
    """Tokenizer + a tiny model -> bundle. Random weights unless `train_first` (a few seconds)."""
    import torch

    from training.checkpoint import model_config, model_from_checkpoint
    from training.export import export_bundle
    from training.tasks import TOKENIZER_FILE, make_task, prepare_tokenizer
    from training.train import train
    from training.transformer import build_model

    tok = prepare_tokenizer(cfg, run_dir)  # the run folder's own when it has one
    if train_first:
        train(cfg, run_dir, device="cpu")
        model = model_from_checkpoint(run_dir / "best.pt")
    else:
        torch.manual_seed(seed)
        model = build_model(model_config(cfg, tok)).eval()
    split = "val" if cfg.task == "translation" else "valid"
    texts = [r[0] for r in make_task(cfg, tok).raw(split)[:5]]
    export_bundle(
        model,
        cfg,
        run_dir / TOKENIZER_FILE,
        out,
        texts,
        static_cache=static_cache,
        alignment_in_graph=alignment_in_graph,
    )
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A model directory with tiny bundles: de-en, en-de, sentiment and a langid (de/en), copied
    from the committed ones so that a test may change its copy."""
    root = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(TINY_BUNDLES / "models", root)
    return root


@pytest.fixture(scope="session")
def multilingual_dir(tmp_path_factory) -> Path:
    """A model directory with one tiny multilingual bundle (de-en, en-de, fr-en, random weights)."""
    root = tmp_path_factory.mktemp("multilingual") / "models"
    shutil.copytree(TINY_BUNDLES / "multilingual", root)
    return root
