"""Evaluation: greedy translation of a corpus with BLEU/chrF, and classification metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sacrebleu
import torch
from sacremoses import MosesTokenizer

from service.runtime.preprocess import classifier_ids, source_ids
from training.data import token_batches
from training.tokenizer import Tokenizer
from training.transformer import Seq2SeqTransformer, TransformerClassifier


def encode_source(tokenizer: Tokenizer, text: str, max_len: int) -> list[int]:
    """Source ids as the models see them (the runtime's rule)."""
    return source_ids(tokenizer.encode(text), max_len)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    max_tokens: int = 6000,
    device: str | torch.device = "cpu",
) -> list[str]:
    """Greedy translations of `sentences`, in their order; batches are length-sorted."""
    model.eval()
    max_src = model.cfg.max_len
    encoded = [encode_source(tokenizer, s, max_src) for s in sentences]
    out: list[str] = [""] * len(sentences)
    # A decoded target may be ~1.5x its source: budget for that in the batch size.
    for batch in token_batches([len(e) * 3 for e in encoded], max_tokens, 0, 0, shuffle=False):
        src = pad_batch([encoded[i] for i in batch], model.cfg.pad_id).to(device)
        for i, ids in zip(batch, model.greedy_decode(src)):
            out[i] = tokenizer.decode(ids)
    return out


_moses: dict[str, MosesTokenizer] = {}


def _moses_tokenize(text: str, lang: str) -> str:
    tok = _moses.setdefault(lang, MosesTokenizer(lang=lang))
    return " ".join(tok.tokenize(text, escape=False))


def translation_metrics(hyps: Sequence[str], refs: Sequence[str], target_lang: str) -> dict:
    """sacreBLEU (cased, detokenized, with its signature), chrF, and BLEU on lowercased
    Moses-tokenized text (how published Multi30k results are computed)."""
    tokenize = "zh" if target_lang == "zh" else "13a"
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize)
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hyps), [list(refs)])
    c = chrf.corpus_score(list(hyps), [list(refs)])
    result = {
        "bleu": round(b.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": round(c.score, 2),
        "chrf_signature": str(chrf.get_signature()),
    }
    if target_lang != "zh":
        tok_bleu = sacrebleu.metrics.BLEU(tokenize="none", lowercase=True, force=True)
        lt = tok_bleu.corpus_score(
            [_moses_tokenize(h, target_lang) for h in hyps],
            [[_moses_tokenize(r, target_lang) for r in refs]],
        )
        result["bleu_lc_tok"] = round(lt.score, 2)
        result["bleu_lc_tok_method"] = f"sacremoses tokenizer ({target_lang}), lowercased, " + str(
            tok_bleu.get_signature()
        )
    return result


@torch.no_grad()
def classify(
    model: TransformerClassifier,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_tokens: int = 16000,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities (N, n_classes) for `texts`, in their order."""
    model.eval()
    encoded = [encode_classifier_input(tokenizer, t, model.cfg.max_len) for t in texts]
    probs = np.zeros((len(texts), model.cfg.n_classes), dtype=np.float32)
    for batch in token_batches([len(e) for e in encoded], max_tokens, 0, 0, shuffle=False):
        ids = pad_batch([encoded[i] for i in batch], model.cfg.pad_id).to(device)
        probs[batch] = torch.softmax(model(ids).float(), dim=-1).cpu().numpy()
    return probs


def encode_classifier_input(tokenizer: Tokenizer, text: str, max_len: int, sample_alpha: float = 0.0) -> list[int]:
    """<s> (the classification position for `cls` pooling) + pieces (the runtime's rule)."""
    return classifier_ids(tokenizer.encode(text, sample_alpha), max_len)


def classification_metrics(preds: Sequence[int], golds: Sequence[int], labels: Sequence[str]) -> dict:
    n = len(labels)
    cm = np.zeros((n, n), dtype=np.int64)  # rows: gold, columns: predicted
    for g, p in zip(golds, preds):
        cm[g, p] += 1
    f1s = []
    for k in range(n):
        tp = cm[k, k]
        prec = tp / cm[:, k].sum() if cm[:, k].sum() else 0.0
        rec = tp / cm[k, :].sum() if cm[k, :].sum() else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    per_label = {
        labels[k]: round(100.0 * float(cm[k, k]) / float(cm[k].sum()), 2) if cm[k].sum() else None for k in range(n)
    }
    return {
        "accuracy": round(100.0 * float(np.trace(cm)) / max(float(cm.sum()), 1.0), 2),
        "macro_f1": round(100.0 * float(np.mean(f1s)), 2),
        "per_label_accuracy": per_label,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def format_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    width = max(8, *(len(x) + 2 for x in labels))
    lines = ["gold \\ pred".ljust(width) + "".join(lab.rjust(width) for lab in labels)]
    for lab, row in zip(labels, cm):
        lines.append(lab.ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
