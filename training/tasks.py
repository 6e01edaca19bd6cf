"""Tasks: what the training loop trains. Each knows how to load, encode, batch and score its
data (translation, classification, masked-LM pretraining), and the tokenizer it learns from."""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.runtime.bundle import target_tag
from service.runtime.preprocess import classifier_windows
from training.config import RunConfig
from training.data import load_directions, load_langid, load_parallel, load_tsv, short_spans, token_batches
from training.evaluate import (
    classification_metrics,
    classify,
    encode_classifier_input,
    pad_batch,
    translate,
    translation_metrics,
)
from training.tokenizer import CODEC_FILE, CodecTokenizer, Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILE = "spm.model"


# ----------------------------------------------------------------------------- tasks


class TranslationTask:
    """Parallel text -> (source ids + </s>, <s> + target ids, target ids + </s>)."""

    metric = "bleu"
    unit, rate_label = "tokens", "tok_s"  # what the loss counts: target tokens

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        self.cfg, self.tok = cfg, tokenizer
        self.data_dir = Path(cfg.data.dir)
        self.row_directions: dict[str, list[str]] = {}  # multilingual: each raw row's direction

    def raw(self, split: str) -> list[tuple[str, str]]:
        d = self.cfg.data
        if d.directions:  # multilingual: the sets of the config, every direction, tagged
            rows = load_directions(self.sets(split), d.directions, d.target_tags)
            self.row_directions[split] = [r[2] for r in rows]
            return [(r[0], r[1]) for r in rows]
        return load_parallel(self.data_dir, split, d.source_lang, d.target_lang)

    def encode(
        self, pairs: list[tuple[str, str]], filter_long: bool, sample_alpha: float = 0.0
    ) -> list[tuple[list, list]]:
        d = self.cfg.data
        srcs = self.tok.encode_batch([p[0] for p in pairs], sample_alpha)
        tgts = self.tok.encode_batch([p[1] for p in pairs], sample_alpha)
        eos, limit = self.tok.sp.eos_id(), d.max_tokens_per_sentence
        out = []
        for s, t in zip(srcs, tgts):
            if filter_long and (
                not s
                or not t
                or len(s) >= limit
                or len(t) >= limit
                or max(len(s), len(t)) > d.max_length_ratio * min(len(s), len(t)) + 5
            ):
                continue
            out.append((s[: limit - 1] + [eos], t[: limit - 1]))
        return out

    def sets(self, split: str) -> tuple[str, ...]:
        """A multilingual config's parallel sets for `split`: train, valid, or a named eval set."""
        d = self.cfg.data
        if split == d.train_split:
            return d.train_sets
        if split == d.valid_split:
            return d.valid_sets
        named = tuple(line.split(None, 1)[1] for line in d.eval_sets if line.split(None, 1)[0] == split)
        if not named:
            known = sorted({line.split(None, 1)[0] for line in d.eval_sets})
            raise ValueError(f"no set named {split!r}: splits are {d.train_split}, {d.valid_split}, {known}")
        return named

    def metrics(self, split: str, hyps: list[str], refs: list[str]) -> dict[str, Any]:
        """sacreBLEU, chrF (and lowercased tokenized BLEU) of `hyps` for the first rows of
        `raw(split)`. A multilingual split: each direction's metrics (`per_direction`), their
        sentence counts, and the mean of their BLEU as `bleu` (what selects models)."""
        if not self.cfg.data.directions:
            return translation_metrics(hyps, refs, self.cfg.data.target_lang)
        groups: dict[str, tuple[list[str], list[str]]] = {}
        for hyp, ref, direction in zip(hyps, refs, self.row_directions[split]):
            groups.setdefault(direction, ([], []))[0].append(hyp)
            groups[direction][1].append(ref)
        per = {k: translation_metrics(h, r, k.split("-")[1]) for k, (h, r) in sorted(groups.items())}
        return {
            "bleu": round(sum(m["bleu"] for m in per.values()) / len(per), 2),
            "per_direction": per,
            "direction_sentences": {k: len(h) for k, (h, _) in sorted(groups.items())},
        }

    @staticmethod
    def length(example: tuple[list, list]) -> int:
        return len(example[0]) + len(example[1]) + 1

    def collate(self, examples: list, device: torch.device) -> dict[str, Tensor]:
        pad, bos, eos = self.tok.sp.pad_id(), self.tok.sp.bos_id(), self.tok.sp.eos_id()
        src = pad_batch([e[0] for e in examples], pad)
        tgt_in = pad_batch([[bos] + e[1] for e in examples], pad)
        tgt_out = pad_batch([e[1] + [eos] for e in examples], pad)
        return {"src": src.to(device), "tgt_in": tgt_in.to(device), "tgt_out": tgt_out.to(device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits = model(batch["src"], batch["tgt_in"])
        n_tokens = int((batch["tgt_out"] != self.tok.sp.pad_id()).sum())
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            batch["tgt_out"].flatten(),
            ignore_index=self.tok.sp.pad_id(),
            label_smoothing=smoothing,
            reduction="sum",
        )
        return loss, n_tokens

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        limit = self.cfg.train.valid_bleu_sentences or len(raw)
        hyps = translate(model, self.tok, [p[0] for p in raw[:limit]], device=device)
        result = self.metrics(self.cfg.data.valid_split, hyps, [p[1] for p in raw[:limit]])
        if "per_direction" in result:
            log.info("valid BLEU per direction: %s", {k: m["bleu"] for k, m in result["per_direction"].items()})
        return result


class ImportedTranslationTask(TranslationTask):
    """Translation fine-tuning of an imported bundle (train.init_from = its weights.pt): pairs
    encoded with the bundle's codec (`CodecTokenizer`: a source is exactly what the service
    feeds the model, a target the target side's ids), the decoder started from the model's own
    start token, validated by decoding through the codec as the service does. Tokens the model
    never generates (a logit bias of BANNED_LOGIT: Marian's <pad>, an appended start row) take no
    part in the loss: label smoothing spreads no mass on them and their rows get no gradient."""

    def __init__(self, cfg: RunConfig, tokenizer: CodecTokenizer) -> None:
        super().__init__(cfg, tokenizer)
        problems = []
        if cfg.train.subword_alpha > 0:
            problems.append("train.subword_alpha (sampled segmentations)")
        if cfg.data.target_tags:
            problems.append("data.target_tags (the imported model has no target tags)")
        if problems:
            raise ValueError(f"fine-tuning an imported model does not support {'; '.join(problems)}")
        self.codec_tok = tokenizer
        banned = sorted(set(tokenizer.banned) | {tokenizer.pad_id})
        column = torch.full((tokenizer.vocab_size,), -100, dtype=torch.long)  # target id -> loss column
        allowed = [i for i in range(tokenizer.vocab_size) if i not in set(tokenizer.banned)]
        column[allowed] = torch.arange(len(allowed))
        column[banned] = -100  # padding, and never a target
        self.allowed = torch.tensor(allowed) if tokenizer.banned else None
        self.column = column

    def encode(
        self, pairs: list[tuple[str, str]], filter_long: bool, sample_alpha: float = 0.0
    ) -> list[tuple[list, list]]:
        d, tok = self.cfg.data, self.codec_tok
        srcs = tok.source_pieces([p[0] for p in pairs])
        tgts = tok.target_ids([p[1] for p in pairs])
        limit, extra = d.max_tokens_per_sentence, tok.specials
        out = []
        for s, t in zip(srcs, tgts):
            if filter_long and (
                not s
                or not t
                or len(s) + extra > limit
                or len(t) >= limit
                or max(len(s), len(t)) > d.max_length_ratio * min(len(s), len(t)) + 5
            ):
                continue
            out.append((tok.source_ids(s[: max(limit - extra, 0)]), t[: limit - 1]))
        return out

    def collate(self, examples: list, device: torch.device) -> dict[str, Tensor]:
        tok = self.codec_tok
        src = pad_batch([e[0] for e in examples], tok.pad_id)
        tgt_in = pad_batch([[tok.bos_id] + e[1] for e in examples], tok.pad_id)
        tgt_out = pad_batch([e[1] + [tok.eos_id] for e in examples], tok.pad_id)
        return {"src": src.to(device), "tgt_in": tgt_in.to(device), "tgt_out": tgt_out.to(device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits = model(batch["src"], batch["tgt_in"])
        target = self.column.to(batch["tgt_out"].device)[batch["tgt_out"]]
        if self.allowed is not None:
            logits = logits.index_select(-1, self.allowed.to(logits.device))
        n_tokens = int((target != -100).sum())
        loss = F.cross_entropy(
            logits.float().flatten(0, 1),
            target.flatten(),
            ignore_index=-100,
            label_smoothing=smoothing,
            reduction="sum",
        )
        return loss, n_tokens

    @torch.no_grad()
    def translate(
        self, model: nn.Module, sentences: list[str], device: torch.device | str = "cpu", max_tokens: int = 6000
    ) -> list[str]:
        """Greedy translations, encoded and decoded by the codec as the service does."""
        model.eval()
        tok = self.codec_tok
        encoded = tok.encode_sources(sentences)
        out = [""] * len(sentences)
        for batch in token_batches([len(e) * 3 for e in encoded], max_tokens, 0, 0, shuffle=False):
            src = pad_batch([encoded[i] for i in batch], tok.pad_id).to(device)
            for i, text in zip(batch, tok.decode(model.greedy_decode(src))):
                out[i] = text
        return out

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        limit = self.cfg.train.valid_bleu_sentences or len(raw)
        hyps = self.translate(model, [p[0] for p in raw[:limit]], device=device)
        return self.metrics(self.cfg.data.valid_split, hyps, [p[1] for p in raw[:limit]])


class ClassificationTask:
    """Labelled text -> (<s> + ids, label). Data from TSV files, or per-language text (langid)."""

    metric = "accuracy"
    unit, rate_label = "examples", "ex_s"

    def __init__(self, cfg: RunConfig, tokenizer: Tokenizer) -> None:
        self.cfg, self.tok = cfg, tokenizer

    def raw(self, split: str) -> list[tuple[str, int]]:
        """Rows of a split. ``valid_short`` is the validation split cut to 1-3 word spans."""
        d, seed = self.cfg.data, self.cfg.train.seed
        if split == "valid_short":
            return short_spans(self.raw("valid"), seed)
        if d.langid_sources:
            rows = load_langid(d.langid_sources, d.labels, split)
            if split != "train" and d.langid_valid_per_label:
                rows = _balanced_sample(rows, d.langid_valid_per_label, seed=seed)
        else:
            named = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in d.eval_files}
            if split in named:
                rows = load_tsv(Path(named[split]), d.labels, d.label_aliases)
            else:
                name = {"train": d.train_file, "valid": d.valid_file}.get(split, split)
                rows = load_tsv(Path(d.dir) / name, d.labels, d.label_aliases)
            if split == "train":
                for extra in d.train_files:
                    rows = rows + load_tsv(Path(extra), d.labels, d.label_aliases)
        if split == "train" and d.short_span_fraction:
            rng = random.Random(seed)
            rows = rows + short_spans(rng.sample(rows, int(len(rows) * d.short_span_fraction)), seed)
        if split == "train" and d.casual_fraction:
            rng = random.Random(seed + 1)
            rows = rows + [(casual(t), y) for t, y in rng.sample(rows, int(len(rows) * d.casual_fraction))]
        return rows

    def encode(
        self, rows: list[tuple[str, int]], filter_long: bool, sample_alpha: float = 0.0
    ) -> list[tuple[list, int]]:
        limit = self.cfg.data.max_tokens_per_sentence
        if self.cfg.data.window_long_texts and filter_long:  # training: every window of a long text
            out = []
            for t, y in rows:
                if t:
                    pieces = self.tok.encode(t, sample_alpha)
                    out += [(w, y) for w in classifier_windows(pieces, limit)]
            return out
        return [(encode_classifier_input(self.tok, t, limit, sample_alpha), y) for t, y in rows if t]

    @staticmethod
    def length(example: tuple[list, int]) -> int:
        return len(example[0])

    def collate(self, examples: list, device: torch.device) -> dict[str, Tensor]:
        ids = pad_batch([e[0] for e in examples], self.tok.sp.pad_id())
        labels = torch.tensor([e[1] for e in examples], dtype=torch.long)
        return {"ids": ids.to(device), "labels": labels.to(device)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits = model(batch["ids"])
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing, reduction="sum")
        return loss, batch["labels"].numel()

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        probs = classify(model, self.tok, [r[0] for r in raw], device=device)
        return classification_metrics(probs.argmax(1).tolist(), [r[1] for r in raw], self.cfg.data.labels)


class MaskedLMTask(ClassificationTask):
    """Masked-language-model pretraining of a classifier's encoder on its training texts, labels
    unused (BERT's recipe; pretraining on the task's own data already helps a from-scratch
    model: Krishna et al. 2022, "Downstream datasets make surprisingly good pretraining
    corpora"). `pretrain_mask` of the tokens are chosen; of those 80% become the mask token,
    10% a random token, 10% stay; the encoder predicts them through the tied embedding.
    </s> serves as the mask token: a classifier input never contains it."""

    metric = "mlm_accuracy"
    unit, rate_label = "tokens", "tok_s"

    def collate(self, examples: list, device: torch.device, generator: torch.Generator | None = None) -> dict:
        sp = self.tok.sp
        ids = pad_batch([e[0] for e in examples], sp.pad_id())
        chance = torch.full(ids.shape, self.cfg.train.pretrain_mask)
        chance[(ids == sp.pad_id()) | (ids == sp.bos_id())] = 0.0
        chosen = torch.bernoulli(chance, generator=generator).bool()
        roll = torch.rand(ids.shape, generator=generator)
        inputs = ids.masked_fill(chosen & (roll < 0.8), sp.eos_id())
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(4, self.tok.vocab_size, (int(swap.sum()),), generator=generator)
        return {"ids": inputs.to(device), "targets": ids.masked_fill(~chosen, -100).to(device)}

    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        where = batch["targets"] != -100
        return model(batch["ids"], lm_positions=where), batch["targets"][where]

    def loss(self, model: nn.Module, batch: dict[str, Tensor], smoothing: float) -> tuple[Tensor, int]:
        logits, targets = self._logits(model, batch)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing, reduction="sum")
        return loss, targets.numel()

    def validate(self, model: nn.Module, raw: list, device: torch.device) -> dict[str, Any]:
        """Accuracy on masked tokens of the validation texts, the same masks every epoch."""
        data = self.encode(raw, filter_long=False)
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for b in token_batches([len(e[0]) for e in data], 16000, 0, 0, shuffle=False):
                logits, targets = self._logits(model, self.collate([data[i] for i in b], device, generator))
                correct += int((logits.argmax(-1) == targets).sum())
                total += targets.numel()
        return {self.metric: round(100.0 * correct / max(total, 1), 2)}


def casual(text: str) -> str:
    """Text as typed in a hurry ("Hello!" -> "hello"): lowercased, final punctuation dropped."""
    return text.lower().rstrip(" .!?。！？…") or text.lower()


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """The masked-LM phase of a classification config: same data, tokenizer and model shape."""
    tc = cfg.train
    train_cfg = replace(
        tc,
        epochs=tc.pretrain_epochs,
        lr=tc.pretrain_lr or tc.lr,
        pretrain_epochs=0,
        patience=0,
        average_last=0,
        label_smoothing=0.0,
    )
    return replace(cfg, task="pretrain", model={**cfg.model, "dropout": tc.pretrain_dropout}, train=train_cfg)


def _balanced_sample(rows: list, per_label: int, seed: int) -> list:
    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for r in rows:
        by_label.setdefault(r[1], []).append(r)
    out = []
    for label in sorted(by_label):
        group = by_label[label]
        out += rng.sample(group, min(per_label, len(group)))
    return out


def make_task(cfg: RunConfig, tokenizer: Tokenizer | CodecTokenizer | None):
    if isinstance(tokenizer, CodecTokenizer):
        if cfg.task != "translation":
            raise ValueError(f"an imported bundle's codec is for translation, not task={cfg.task!r}")
        return ImportedTranslationTask(cfg, tokenizer)
    tasks = {"translation": TranslationTask, "classification": ClassificationTask, "pretrain": MaskedLMTask}
    return tasks[cfg.task](cfg, tokenizer)


def split_names(cfg: RunConfig) -> tuple[str, str]:
    """(train, validation) split names: from the config for translation, fixed for TSVs."""
    if cfg.task == "translation":
        return cfg.data.train_split, cfg.data.valid_split
    return "train", "valid"


def target_texts(cfg: RunConfig) -> list[tuple[str, str]]:
    """A translation config's training targets, each text once, with its language (the
    target vocabularies, training/vocab.py)."""
    d = cfg.data
    if d.directions:
        once = [" ".join(f for f in spec.split() if not f.startswith("repeat=")) for spec in d.train_sets]
        rows = load_directions(once, d.directions, tags=False)
        return list(dict.fromkeys((r[1], r[2].split("-")[1]) for r in rows))
    pairs = load_parallel(Path(d.dir), d.train_split, d.source_lang, d.target_lang)
    return list(dict.fromkeys((t, d.target_lang) for _, t in pairs))


def tokenizer_texts(cfg: RunConfig) -> list[str]:
    """The training texts the tokenizer is learned from (train split only, both sides)."""
    if cfg.task == "translation" and cfg.data.directions:
        d = cfg.data
        once = [" ".join(f for f in spec.split() if not f.startswith("repeat=")) for spec in d.train_sets]
        rows = load_directions(once, d.directions, tags=False)
        return list(dict.fromkeys(t for r in rows for t in r[:2]))  # each text once
    if cfg.task == "translation":
        d = cfg.data
        pairs = load_parallel(Path(d.dir), d.train_split, d.source_lang, d.target_lang)
        return [s for p in pairs for s in p]
    dummy = make_task(cfg, tokenizer=None)  # type: ignore[arg-type]
    return [t for t, _ in dummy.raw("train")]


def imported_bundle(init_from: str | Path) -> Path | None:
    """The imported bundle `train.init_from` names (its weights.pt, or the bundle folder): a
    bundle whose manifest has a `codec` (training/importers). None for our own weights."""
    init = Path(init_from)
    folder = init if init.is_dir() else init.parent
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    return folder if json.loads(path.read_text(encoding="utf-8")).get("codec") else None


def prepare_imported(bundle: Path, run_dir: Path) -> CodecTokenizer:
    """Copy an imported bundle's codec into `run_dir` (its SentencePiece models and vocabulary
    files under their bundle names, and CODEC_FILE: the codec, special ids, the model's config
    and the target ids it never generates), so the run, its resumption and its release need
    nothing more from the bundle. A run folder that has them already is left as it is."""
    from service.runtime.bundle import load_manifest
    from service.runtime.codec import CodecSpec
    from training.checkpoint import WEIGHTS_FILE, load_checkpoint
    from training.importers.common import BANNED_LOGIT

    if (run_dir / CODEC_FILE).exists():
        return CodecTokenizer(run_dir)
    manifest = load_manifest(bundle)
    if manifest.task != "translation":
        raise ValueError(f"{bundle}: an imported {manifest.task} bundle; only translation is fine-tuned")
    weights = bundle / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{bundle}: no {WEIGHTS_FILE}: import the model again (python -m training import ... --force) "
            "to write its PyTorch weights"
        )
    spec = CodecSpec.of(manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in spec.files():
        shutil.copyfile(bundle / name, run_dir / name)
    state = load_checkpoint(weights)
    bias = state["model"].get("output_bias", state["model"].get("output.bias"))
    banned = [] if bias is None else [i for i, b in enumerate(bias.float().tolist()) if b <= BANNED_LOGIT / 2]
    info = {
        "bundle": str(bundle),
        "codec": spec.to_dict(),
        "special_ids": manifest.special_ids,
        "max_len": manifest.max_len,
        "model": state["model_config"],
        "banned": banned,
        "source_lang": manifest.source_lang,
        "target_lang": manifest.target_lang,
        "license": manifest.data.get("license", ""),
    }
    tmp = run_dir / (CODEC_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(run_dir / CODEC_FILE)
    log.info("fine-tuning the imported bundle %s: its codec copied into %s", bundle, run_dir)
    return CodecTokenizer(run_dir)


def run_tokenizer(run_dir: Path) -> Tokenizer | CodecTokenizer:
    """A run's tokenizer: an imported bundle's codec where the run has one, else our spm.model."""
    if (run_dir / CODEC_FILE).exists():
        return CodecTokenizer(run_dir)
    return Tokenizer(run_dir / TOKENIZER_FILE)


def prepare_tokenizer(cfg: RunConfig, run_dir: Path, force: bool = False) -> Tokenizer | CodecTokenizer:
    if (run_dir / CODEC_FILE).exists():  # fine-tuning an imported model: its own codec, never retrained
        return CodecTokenizer(run_dir)
    path = run_dir / TOKENIZER_FILE
    if force or not path.exists():
        t = cfg.tokenizer
        tags = [target_tag(d.split("-")[1]) for d in cfg.data.directions] if cfg.data.target_tags else []
        train_tokenizer(
            tokenizer_texts(cfg),
            path,
            t.vocab_size,
            t.model_type,
            t.character_coverage,
            user_defined_symbols=list(dict.fromkeys(tags)),
            byte_fallback=t.byte_fallback,
        )
        log.info("trained tokenizer %s (%d pieces)", path, Tokenizer(path).vocab_size)
    return Tokenizer(path)
