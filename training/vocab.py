"""Each target language's vocabulary, for the decoder's output projection (service/runtime/vocab.py).

    python -m training vocab --config training/configs/general-multi.toml --bundle model/multi

A language's vocabulary is every piece its training targets contain, with </s> and <unk>: the
pieces the model was ever taught to produce in that language (the multilingual bundle: English
6,327 of 16,000 pieces, German 6,714, French 6,736, Czech 5,470, Chinese 2,006). The bundle
gets `target_vocab.npz`: those ids, and each variant's output-projection initializers in full
(the engine cuts them per language when it loads). A variant gets a projection only when its decoder's logits come from
initializers with a vocabulary-sized axis and a session with them cut gives exactly the full
graph's logits on those columns (checked here, on random inputs, for every language).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import sentencepiece as spm
from onnx import helper, numpy_helper

from service.runtime import graph_io
from service.runtime.bundle import Manifest, load_manifest, sha256_file, write_manifest
from service.runtime.sessions import create_session
from service.runtime.utf8 import ByteRepair
from service.runtime.vocab import TargetVocab
from training.config import RunConfig
from training.tasks import target_texts

log = logging.getLogger(__name__)

FILE = "target_vocab.npz"


def target_pieces(encode, rows: Iterable[tuple[str, str]]) -> dict[str, set[int]]:
    """{language: the piece ids of its texts}, from (text, language) rows; `encode` maps a list
    of texts to lists of ids (SentencePiece's `encode`)."""
    texts: dict[str, list[str]] = {}
    for text, lang in rows:
        texts.setdefault(lang, []).append(text)
    return {lang: {i for ids in encode(t) for i in ids} for lang, t in texts.items()}


def projection_initializers(proto: onnx.ModelProto, vocab_size: int) -> dict[str, tuple[np.ndarray, int]]:
    """The initializers with a vocabulary-sized axis that the decoder's logits are computed from
    (the output projection's weight, its scales and zero points, a bias), with that axis; never
    the embedding (read by a Gather). `_check` then proves that cutting them cuts the logits."""
    g = proto.graph
    producer = {out: n for n in g.node for out in n.output}
    inits = {t.name: t for t in g.initializer}
    gathered = {n.input[0] for n in g.node if n.op_type == "Gather"}
    found: dict[str, tuple[np.ndarray, int]] = {}
    seen: set[int] = set()
    todo = [producer.get(graph_io.LOGITS)]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for name in node.input:
            if name in inits and name not in gathered and name not in found:
                dims = list(inits[name].dims)
                if vocab_size in dims:
                    found[name] = (numpy_helper.to_array(inits[name]), len(dims) - 1 - dims[::-1].index(vocab_size))
        todo.extend(producer.get(i) for i in node.input if i and i not in inits)
    return found


def symbolic_vocab(proto: onnx.ModelProto) -> bool:
    """Let the decoder's logits be of any width (a cut projection gives fewer columns): shape
    inference gives the projection's output the width of its initializers, and onnxruntime
    checks a bound output buffer against it, so the logits become a Reshape of that output to
    (its rows, -1), which inference cannot fix. True if the graph was changed; nothing is
    computed differently (a Reshape is a view)."""
    g = proto.graph
    producer = {out: n for n in g.node for out in n.output}
    last = producer.get(graph_io.LOGITS)
    if last is None or last.name == "logits_any_width":
        return False
    last.output[list(last.output).index(graph_io.LOGITS)] = "logits_projected"
    g.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "logits_any_width.minus_one"))
    g.node.extend(
        [
            helper.make_node("Shape", ["logits_projected"], ["logits_any_width.rows"], end=1),
            helper.make_node(
                "Concat", ["logits_any_width.rows", "logits_any_width.minus_one"], ["logits_any_width.shape"], axis=0
            ),
            helper.make_node(
                "Reshape", ["logits_projected", "logits_any_width.shape"], [graph_io.LOGITS], name="logits_any_width"
            ),
        ]
    )
    for out in g.output:
        if out.name == graph_io.LOGITS:
            out.type.tensor_type.shape.dim[-1].dim_param = "vocab"
    return True


def random_feeds(session: Any, rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random inputs for every input of a decoder `session` (3 rows, 5 for every other symbolic
    dimension; ids 4-49, masks all true, floats normal times `scale`, the position 2): what the
    checks that a rewritten graph gives the full graph's outputs feed both graphs."""
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else {"batch": 3}.get(str(d), 5) for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = rng.integers(4, 50, shape, dtype=np.int64)
        elif i.type == "tensor(bool)":
            feeds[i.name] = np.ones(shape, dtype=bool)
        else:
            feeds[i.name] = rng.standard_normal(shape, dtype=np.float32) * scale
    if graph_io.POSITION in feeds:
        feeds[graph_io.POSITION] = np.full(feeds[graph_io.POSITION].shape, 2, dtype=np.int64)
    return feeds


def _check(path: Path, vocab: TargetVocab) -> str | None:
    """Why a session with `vocab`'s cut projection does not give the full graph's logits on
    the kept columns (random inputs, every language), or None."""
    full = create_session(path, ["CPUExecutionProvider"], 1)
    feeds = random_feeds(full, np.random.default_rng(0))
    want = full.run([graph_io.LOGITS], feeds)[0]
    for lang, ids in vocab.ids.items():
        try:
            cut = create_session(path, ["CPUExecutionProvider"], 1, initializers=vocab.initializers(lang))
            got = cut.run([graph_io.LOGITS], feeds)[0]
        except Exception as e:  # noqa: BLE001 - e.g. MatMulNBits, whose N is an attribute
            return f"{lang}: onnxruntime refuses the cut projection ({str(e).splitlines()[0][:200]})"
        if got.shape != (want.shape[0], len(ids)) or not np.allclose(got, want[:, ids], rtol=0, atol=1e-5):
            return f"{lang}: the cut logits differ from the full graph's"
    return None


def write_target_vocab(bundle_dir: Path, pieces: dict[str, set[int]]) -> Manifest:
    """Add `pieces` (per target language) and every variant's projection to the bundle (its
    manifest rewritten); the variants whose projection cannot be cut get none."""
    manifest = load_manifest(bundle_dir)
    special = manifest.special_ids
    ids = {lang: np.array(sorted(p | {special["eos"], special["unk"]}), dtype=np.int32) for lang, p in pieces.items()}
    arrays: dict[str, np.ndarray] = {f"ids/{lang}": a for lang, a in ids.items()}
    axes: dict[str, dict[str, int]] = {}
    files = dict(manifest.files)
    for variant, graphs in manifest.variants.items():
        path = bundle_dir / graphs["decoder"].file
        proto = onnx.load(str(path))
        projection = projection_initializers(proto, manifest.vocab_size)
        if not projection:
            log.warning("%s %s: no output projection to cut", bundle_dir, variant)
            continue
        if symbolic_vocab(proto):  # onnxruntime checks bound outputs against the graph's shapes
            onnx.save(proto, str(path))
            files[path.name] = sha256_file(path)
        vocab = TargetVocab({k: v.astype(np.int64) for k, v in ids.items()}, projection)
        why = _check(path, vocab)
        if why:
            log.warning("%s %s: %s; it keeps the full vocabulary", bundle_dir, variant, why)
            continue
        axes[variant] = {name: axis for name, (_, axis) in projection.items()}
        arrays.update({f"{variant}/{name}": a for name, (a, _) in projection.items()})
    np.savez(bundle_dir / FILE, **arrays)
    spec = {"file": FILE, "languages": sorted(ids), "projection": axes}
    files[FILE] = sha256_file(bundle_dir / FILE)
    out = replace(manifest, target_vocab=spec, files=files)
    write_manifest(bundle_dir, out)
    for lang, a in sorted(ids.items()):
        log.info("%s: %s %d of %d pieces", bundle_dir, lang, len(a), manifest.vocab_size)
    return out


def add_target_vocab(bundle_dir: Path, cfg: RunConfig, tokenizer: Path) -> Manifest:
    """`write_target_vocab` with the pieces of `cfg`'s training targets, as `tokenizer` (the
    bundle's SentencePiece model) splits them: what the release, `python -m training vocab` and
    the engine benchmark's export do."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    return write_target_vocab(bundle_dir, with_continuation_bytes(target_pieces(sp.encode, target_texts(cfg)), sp))


def with_continuation_bytes(pieces: dict[str, set[int]], sp: spm.SentencePieceProcessor) -> dict[str, set[int]]:
    """Each language's pieces plus every byte piece of multi-byte UTF-8 (continuation bytes
    0x80-0xBF, lead bytes 0xC2-0xF4) when it has any of them: a vocabulary with the lead byte of
    a rare character but not the continuation bytes that complete it makes the decoder spell half
    a character (U+FFFD in the output), and one with only some lead bytes cannot spell the rest of
    the characters it has no piece for. At most 115 more columns."""
    multibyte = {i for i, v in ByteRepair(sp).value.items() if 0x80 <= v <= 0xBF or 0xC2 <= v <= 0xF4}
    return {lang: ids | multibyte if ids & multibyte else set(ids) for lang, ids in pieces.items()}


def keep_variant_vocab(bundle_dir: Path, spec: dict, variant: str) -> dict:
    """The target vocabularies' file and spec with `variant`'s projection only (the release
    keeps one variant)."""
    path = bundle_dir / spec["file"]
    with np.load(path) as data:
        kept = {k: data[k] for k in data.files if k.startswith("ids/") or k.startswith(f"{variant}/")}
    np.savez(path, **kept)
    projection = {v: axes for v, axes in spec["projection"].items() if v == variant}
    return {**spec, "projection": projection}
