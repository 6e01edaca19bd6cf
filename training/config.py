"""Run configuration: one TOML file per model (see training/configs/), parsed into dataclasses.

A config has the top-level keys ``name`` and ``task`` and the sections ``[data]``,
``[tokenizer]``, ``[model]`` (TransformerConfig fields except vocab_size and n_classes, which
follow from the tokenizer and the labels) and ``[train]``. Any value can be overridden on the
command line with ``--set section.key=value`` (the value is parsed as TOML).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TASKS = ("translation", "classification", "pretrain")
AMP_MODES = ("auto", "bf16", "fp16", "off")
# What a resumed run may change: how long and how often, not what it learns from or how.
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.max_steps",
    "train.patience",
    "train.checkpoint_every",
    "train.snapshot_every",
    "train.threads",
    "train.valid_bleu_sentences",
    "data.test_splits",
    "data.limits",
    "data.license",
    "data.eval_sets",
    "source",
}


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (RunConfig.to_dict())."""
    keys = sorted(set(saved) | set(current))
    out = []
    for k in keys:
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out  # pretrain: masked LM on a classifier's texts


@dataclass(frozen=True)
class DataConfig:
    dir: str = ""
    corpus: str = ""  # a key of training.data.CORPORA: license text, download source
    license: str = ""  # overrides the corpus's license text (e.g. for mixed corpora)
    limits: str = ""  # what the model is weak at, in plain words: the model card's "Limits" section
    # translation
    source_lang: str = ""
    target_lang: str = ""
    train_split: str = "train"
    valid_split: str = "val"
    test_splits: tuple[str, ...] = ()  # evaluated at release (classification: e.g. valid_short)
    max_tokens_per_sentence: int = 128
    # Multilingual translation: parallel sets, one per line "<a>-<b> <dir> <split> [repeat=N]
    # [limit=N] [only=SRC,..] [drop=SRC,..] [into=LANG]" (files <dir>/<split>.<a|b>[.gz], sources in
    # <dir>/<split>.source[.gz]); each is used in every listed direction
    # between a and b. With target_tags, the source starts with the tag <2xx> of its target.
    directions: tuple[str, ...] = ()
    train_sets: tuple[str, ...] = ()
    valid_sets: tuple[str, ...] = ()
    target_tags: bool = False
    # Named evaluation sets for release (data.test_splits names them): "NAME a-b DIR SPLIT [limit=N]"
    eval_sets: tuple[str, ...] = ()
    max_length_ratio: float = 3.0
    # classification: TSV files `sentence<TAB>label` with a header
    train_file: str = "train.tsv.gz"
    valid_file: str = "dev.tsv.gz"
    labels: tuple[str, ...] = ()
    label_aliases: tuple[str, ...] = ()
    # More labelled TSVs: "PATH" lines added to train, "NAME PATH" lines as extra splits (test_splits)
    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    # A text longer than max_tokens_per_sentence becomes several training examples, one per window
    # of that length (the service reads long texts in such windows and averages them)
    window_long_texts: bool = False  # "file_label=label": names in the data for a label
    # language identification: each label's text comes from monolingual files
    # ("<dir>/<split>.<lang>.gz" of several corpora); see training.data.load_langid
    langid_sources: tuple[str, ...] = ()
    langid_valid_per_label: int = 1000
    short_span_fraction: float = 0.0  # add this share of training rows again as 1-3 word spans
    casual_fraction: float = 0.0  # and this share again as people type: lowercased, no final punctuation


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float = 1.0
    # characters outside the vocabulary become their UTF-8 bytes instead of <unk> (rare CJK
    # characters in a mostly Latin corpus: 7.7% of Chinese pieces were <unk> without it)
    byte_fallback: bool = False


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = 4096  # per batch, source + target tokens incl. padding
    lr: float = 1e-3  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    subword_alpha: float = 0.0  # > 0: subword regularisation, a sampled segmentation per epoch
    epochs: int = 20
    max_steps: int = 0  # 0 = no limit
    checkpoint_every: int = 500  # steps
    snapshot_every: int = 0  # steps; > 0: also keep step<N>.pt (no optimizer) for averaging
    patience: int = 5  # epochs without improvement of the validation metric; 0 = never stop
    average_last: int = 0  # average the last N epoch checkpoints at the end; 0 = off
    valid_bleu_sentences: int = 0  # 0 = the whole validation split
    seed: int = 1
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16), bf16, fp16, off
    # Classification: first pretrain the encoder as a masked language model on the training
    # texts (labels unused) for this many epochs, in <run_dir>/pretrain; 0 = off.
    # Start from these weights (a checkpoint or a bundle's weights.pt, with its spm.model beside
    # it) instead of random ones; the optimizer starts afresh (warmup again).
    init_from: str = ""
    pretrain_epochs: int = 0
    pretrain_lr: float = 0.0  # peak learning rate of that phase; 0 = train.lr
    pretrain_mask: float = 0.15  # share of tokens masked (80% masked, 10% random, 10% kept)
    pretrain_dropout: float = 0.1


@dataclass(frozen=True)
class RunConfig:
    name: str
    task: str
    data: DataConfig
    tokenizer: TokenizerConfig
    train: TrainConfig
    model: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it came from

    def __post_init__(self) -> None:
        problems = []
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} must be one of {TASKS}")
        multilingual = bool(self.data.directions)
        if self.task == "translation" and not multilingual and not (self.data.source_lang and self.data.target_lang):
            problems.append("translation needs data.source_lang and data.target_lang (or data.directions)")
        if multilingual and not (self.data.train_sets and self.data.valid_sets):
            problems.append("data.directions needs data.train_sets and data.valid_sets")
        if len(set(d.split("-")[1] for d in self.data.directions if "-" in d)) > 1 and not self.data.target_tags:
            problems.append("several target languages need data.target_tags = true")
        if self.task in ("classification", "pretrain") and len(self.data.labels) < 2:
            problems.append(f"classification needs >= 2 data.labels, got {list(self.data.labels)}")
        if self.train.amp not in AMP_MODES:
            problems.append(f"train.amp={self.train.amp!r} must be one of {AMP_MODES}")
        for bad in ("vocab_size", "n_classes"):
            if bad in self.model:
                problems.append(f"model.{bad} is derived, do not set it")
        if problems:
            raise ValueError(f"invalid config {self.source or self.name}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, values: dict[str, Any], section: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown keys in [{section}]: {unknown}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values in TOML syntax, bare words as strings)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        *path, last = key.strip().split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = parsed
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "") -> RunConfig:
    raw = dict(raw)
    sections = {"data", "tokenizer", "train", "model"}
    unknown = sorted(set(raw) - sections - {"name", "task", "source"})
    if unknown:
        raise ValueError(f"unknown top-level keys in {source}: {unknown}")
    return RunConfig(
        name=raw.get("name", ""),
        task=raw.get("task", ""),
        data=_build(DataConfig, raw.get("data", {}), "data"),
        tokenizer=_build(TokenizerConfig, raw.get("tokenizer", {}), "tokenizer"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
        model=dict(raw.get("model", {})),
        source=source or raw.get("source", ""),
    )


def load_config(path: Path | str, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    with path.open("rb") as f:
        raw = tomllib.load(f)
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))
