"""Lexical shortlists from parallel text, into a bundle (service/runtime/shortlist.py serves them).

    python -m training shortlist --bundle model/multi --config training/configs/general-multi-l10n-2.toml
    python -m training shortlist --bundle DIR --source train.de --target train.en [--target-lang en]

For each target language, each source piece's `k` best target pieces by the Dice coefficient of
their co-occurrence in sentence pairs (2 c(s, t) / (c(s) + c(t)), c counting sentences), pieces
seen together fewer than `min_count` times left out, and the language's `frequent` most
frequent target pieces; the pieces as the bundle's own tokenizer splits the texts (a bundle with
a codec of its own: its source and target models). Dice rather than p(t | s): p(t | s) ranks
the pieces that follow every source piece (punctuation, articles: the frequent pieces cover
those) above a piece's translation.

The bundle gets `shortlist.npz` (the tables, and each int8 variant's output projection) and,
per variant, the decoder graph without its output projection (`decoder.{variant}.shortlist.onnx`,
whose last output is the projection's uint8 input): the engine computes the projection on a
batch's shortlisted columns itself. A variant whose projection is not MatMulIntegerToFloat with
constant weights (fp32, MatMulNBits) gets no graph and is served without the shortlist.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.runtime import graph_io
from service.runtime.bundle import Manifest, load_manifest, sha256_file, target_tag, write_manifest
from service.runtime.sessions import create_session
from service.runtime.shortlist import PROJECTION, Projection, check_hidden, hidden_spec

log = logging.getLogger(__name__)

FILE = "shortlist.npz"
K = 50
FREQUENT = 1000
MIN_COUNT = 2
MAX_PAIRS = 300_000  # sentence pairs per direction (a seeded sample)
CHUNK = 5_000  # sentence pairs counted at once


def graph_file(variant: str) -> str:
    return f"decoder.{variant}.shortlist.onnx"


def _unique_rows(rows: Sequence[Sequence[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's distinct pieces, concatenated (ascending within a row), and each row's count."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    codes = np.unique(owner * vocab_size + flat)
    return codes % vocab_size, np.bincount(codes // vocab_size, minlength=len(rows))


def cooccurrence(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], vocab_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sentence counts of the pairs' pieces: (source, target, count) of every pair of pieces
    seen together (sorted by source, then target), and each source piece's and target piece's
    sentence count (V,)."""
    src_count = np.zeros(vocab_size, dtype=np.int64)
    tgt_count = np.zeros(vocab_size, dtype=np.int64)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    for at in range(0, len(pairs), CHUNK):
        part = pairs[at : at + CHUNK]
        s, ns = _unique_rows([p[0] for p in part], vocab_size)
        t, nt = _unique_rows([p[1] for p in part], vocab_size)
        src_count += np.bincount(s, minlength=vocab_size)
        tgt_count += np.bincount(t, minlength=vocab_size)
        # every (source piece, target piece) of each pair: each source piece repeated once per
        # target piece of its pair, beside its pair's target pieces in turn
        reps = np.repeat(nt, ns)
        s_all = np.repeat(s, reps)
        t_start = np.repeat(np.cumsum(nt) - nt, ns)
        within = np.arange(len(s_all)) - np.repeat(np.cumsum(reps) - reps, reps)
        t_all = t[np.repeat(t_start, reps) + within]
        chunks.append(np.unique(s_all * vocab_size + t_all, return_counts=True))
    if not chunks:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, src_count, tgt_count
    keys = np.concatenate([c[0] for c in chunks])
    counts = np.concatenate([c[1] for c in chunks])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.concatenate([[0], np.nonzero(np.diff(keys))[0] + 1]).astype(np.int64)
    keys, counts = keys[starts], np.add.reduceat(counts, starts)
    return keys // vocab_size, keys % vocab_size, counts, src_count, tgt_count


def table(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    vocab_size: int,
    k: int = K,
    frequent: int = FREQUENT,
    min_count: int = MIN_COUNT,
    exclude: Iterable[int] = (),
) -> dict[str, np.ndarray]:
    """One target language's tables from (source ids, target ids) pairs: `offsets` (V + 1,) and
    `targets` (each source piece's best `k` target pieces by Dice, best first), `frequent` (the
    `frequent` most frequent target pieces by tokens) and `seen` (every target piece)."""
    s, t, c, src_count, tgt_count = cooccurrence(pairs, vocab_size)
    every = [np.asarray(tgt, dtype=np.int64) for _, tgt in pairs]
    tokens = np.bincount(np.concatenate(every), minlength=vocab_size) if every else np.zeros(vocab_size, np.int64)
    banned = np.zeros(vocab_size, dtype=bool)
    banned[list(exclude)] = True
    keep = (c >= min_count) & ~banned[t]
    s, t, c = s[keep], t[keep], c[keep]
    dice = 2.0 * c / (src_count[s] + tgt_count[t])
    order = np.lexsort((t, -dice, s))  # by source, best first (ties: the lower piece)
    s, t = s[order], t[order]
    starts = np.searchsorted(s, np.arange(vocab_size))
    rank = np.arange(len(s)) - starts[s]
    top = rank < k
    s, t = s[top], t[top]
    offsets = np.searchsorted(s, np.arange(vocab_size + 1)).astype(np.int64)
    by_tokens = np.lexsort((np.arange(vocab_size), -tokens))
    by_tokens = by_tokens[(tokens[by_tokens] > 0) & ~banned[by_tokens]][:frequent]
    return {
        "offsets": offsets,
        "targets": t.astype(np.int32),
        "frequent": np.sort(by_tokens).astype(np.int32),
        "seen": np.nonzero((tokens > 0) & ~banned)[0].astype(np.int32),
    }


# -- the projection-less decoder ------------------------------------------------------------


def projection_node(proto: onnx.ModelProto) -> onnx.NodeProto | None:
    """The node computing the logits' values: MatMulIntegerToFloat with constant weights, scales
    and zero points and no bias (the int8 variants' output projection); None for any other."""
    g = proto.graph
    producer = {out: n for n in g.node for out in n.output}
    inits = {t.name for t in g.initializer}
    node = producer.get(graph_io.LOGITS)
    while node is not None and node.op_type in ("Reshape", "Identity"):
        node = producer.get(node.input[0])
    if node is None or node.op_type != "MatMulIntegerToFloat" or len(node.input) > 6 and node.input[6]:
        return None
    if not all(name in inits for name in node.input[1:6]):
        return None
    return node


def hidden_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Projection] | None:
    """`proto` without its output projection: the logits output replaced, in place, by the
    projection's uint8 input `hidden`; and the projection. None where it is not int8."""
    node = projection_node(proto)
    if node is None:
        return None
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    weight, a_scale, w_scale, a_zp, w_zp = (inits[name] for name in node.input[1:6])
    if a_scale.size != 1 or a_zp.size != 1 or a_zp.dtype != np.uint8:
        return None
    if weight.dtype != np.int8 or w_scale.dtype != np.float32 or a_scale.dtype != np.float32:
        return None
    n = weight.shape[1]
    projection = Projection(
        weight,
        np.broadcast_to(w_scale.reshape(-1), (n,)).copy(),
        np.broadcast_to(w_zp.reshape(-1), (n,)).copy(),
        a_scale.reshape(()),
        a_zp.reshape(()),
    )
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    d_model = weight.shape[0]
    hidden_name = node.input[0]
    g.node.append(helper.make_node("Identity", [hidden_name], [graph_io.HIDDEN], name="shortlist_hidden"))
    for k, o in enumerate(g.output):
        if o.name == graph_io.LOGITS:
            new = helper.make_tensor_value_info(graph_io.HIDDEN, onnx.TensorProto.UINT8, ["batch", d_model])
            g.output.remove(o)
            g.output.insert(k, new)
            break
    _prune(g)
    return out, projection


def _prune(g: onnx.GraphProto) -> None:
    """Remove the nodes and initializers no graph output needs."""
    producer = {out: n for n in g.node for out in n.output}
    needed: set[str] = set()
    todo = [o.name for o in g.output]
    keep: set[int] = set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            todo.extend(i for i in node.input if i)
    nodes = [n for n in g.node if id(n) in keep]
    del g.node[:]
    g.node.extend(nodes)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    infos = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(infos)


def build_projection_int8() -> onnx.ModelProto:
    """A shortlist's output projection, model-independent: MatMulIntegerToFloat of `a` (R, D)
    uint8 and the weight columns `b` (D, C) int8 given as inputs, with their zero points and
    scales -> (R, C) float32. Shipped, built once, as service/runtime/graphs/projection_int8.onnx
    (the service has no onnx package); tests/training/test_shortlist.py checks the file is what
    this builds."""
    node = helper.make_node(
        "MatMulIntegerToFloat",
        ["a", "b", "a_scale", "b_scale", "a_zero_point", "b_zero_point"],
        ["logits"],
        domain="com.microsoft",
    )
    graph = helper.make_graph(
        [node],
        "projection_int8",
        [
            helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, ["rows", "d_model"]),
            helper.make_tensor_value_info("b", onnx.TensorProto.INT8, ["d_model", "columns"]),
            helper.make_tensor_value_info("a_scale", onnx.TensorProto.FLOAT, []),
            helper.make_tensor_value_info("b_scale", onnx.TensorProto.FLOAT, ["columns"]),
            helper.make_tensor_value_info("a_zero_point", onnx.TensorProto.UINT8, []),
            helper.make_tensor_value_info("b_zero_point", onnx.TensorProto.INT8, ["columns"]),
        ],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["rows", "columns"])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="transerve")
    model.ir_version = 8
    return model


def _check(full_path: Path, hidden_path: Path, projection: Projection) -> str | None:
    """Why the projection-less graph with `projection` does not reproduce the full graph (its
    other outputs and, on random columns and rows, its logits: the same bits), or None."""
    from training.vocab import random_feeds

    full = create_session(full_path, ["CPUExecutionProvider"], 1)
    hidden = create_session(hidden_path, ["CPUExecutionProvider"], 1)
    feeds = random_feeds(full, np.random.default_rng(0), scale=0.1)
    want = dict(zip([o.name for o in full.get_outputs()], full.run(None, feeds)))
    got = dict(zip([o.name for o in hidden.get_outputs()], hidden.run(None, feeds)))
    for name, value in got.items():
        if name != graph_io.HIDDEN and not np.array_equal(value, want[name]):
            return f"output {name} differs from the full graph's"
    projection.session = create_session(PROJECTION, ["CPUExecutionProvider"], 1)
    ref = want[graph_io.LOGITS]
    rng = np.random.default_rng(1)
    v = projection.weight.shape[1]
    for n in (v, max(1, v // 7), 3):
        ids = np.sort(rng.choice(v, n, replace=False))
        for rows in (slice(None), slice(0, 1)):
            logits = projection.logits(got[graph_io.HIDDEN][rows], projection.columns(ids))
            if not np.array_equal(logits, ref[rows][:, ids]):
                return f"the projection on {n} columns differs from the full graph's logits"
    return None


# -- the bundle -----------------------------------------------------------------------------


def write_shortlist(bundle_dir: Path, tables: dict[str, dict[str, np.ndarray]], about: dict | None = None) -> Manifest:
    """Add `tables` (per target language: `table`'s arrays) and each int8 variant's
    projection-less decoder to the bundle (its manifest rewritten)."""
    manifest = load_manifest(bundle_dir)
    arrays: dict[str, np.ndarray] = {}
    for lang, t in tables.items():
        arrays.update({f"{name}/{lang}": a for name, a in t.items()})
    graphs: dict[str, str] = {}
    files = dict(manifest.files)
    for variant, roles in manifest.variants.items():
        path = bundle_dir / roles["decoder"].file
        found = hidden_graph(onnx.load(str(path)))
        if found is None:
            log.warning(
                "%s %s: the output projection is not int8 (MatMulIntegerToFloat): no shortlist", bundle_dir, variant
            )
            continue
        proto, projection = found
        out = bundle_dir / graph_file(variant)
        onnx.save(proto, str(out))
        why = _check(path, out, projection)
        if why:
            out.unlink()
            log.warning("%s %s: %s; no shortlist", bundle_dir, variant, why)
            continue
        spec = hidden_spec(manifest.graph(variant, "decoder"), out.name, manifest.model["d_model"])
        check_hidden(create_session(out, ["CPUExecutionProvider"], 1), spec, str(out))
        graphs[variant] = out.name
        files[out.name] = sha256_file(out)
        p = f"{variant}/"
        arrays[p + "weight"] = projection.weight
        arrays[p + "weight_scale"] = projection.weight_scale
        arrays[p + "weight_zero_point"] = projection.weight_zero_point
        arrays[p + "input_scale"] = np.array(projection.input_scale, dtype=np.float32)
        arrays[p + "input_zero_point"] = np.array(projection.input_zero_point, dtype=np.uint8)
    np.savez(bundle_dir / FILE, **arrays)
    files[FILE] = sha256_file(bundle_dir / FILE)
    spec_out = {"file": FILE, "languages": sorted(tables), "graphs": graphs, **(about or {})}
    manifest = replace(manifest, shortlist=spec_out, files=files)
    write_manifest(bundle_dir, manifest)
    return manifest


def build_tables(
    rows: Iterable[Sequence[str]],
    encode_source: Callable[[list[str]], list[list[int]]],
    encode_target: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
    k: int = K,
    frequent: int = FREQUENT,
    exclude: Iterable[int] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """`table` per target language of (source, target, target language, ...) text rows."""
    by_lang: dict[str, list[tuple[str, str]]] = {}
    for src, tgt, lang, *_ in rows:
        by_lang.setdefault(lang, []).append((src, tgt))
    out = {}
    exclude = list(exclude)
    for lang, pairs in sorted(by_lang.items()):
        srcs = encode_source([s for s, _ in pairs])
        tgts = encode_target([t for _, t in pairs])
        out[lang] = table(list(zip(srcs, tgts)), vocab_size, k, frequent, exclude=exclude)
        log.info("%s: %d pairs, %d lists", lang, len(pairs), int((np.diff(out[lang]["offsets"]) > 0).sum()))
    return out


def sample(rows: list, limit: int, seed: int = 1) -> list:
    """At most `limit` of `rows` per direction (their last field; a seeded sample), in their
    order: a target language's table learns from each of its source languages alike, however
    unequal their corpora (a small one sampled with a large one would leave its pieces rare)."""
    by_lang: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_lang.setdefault(r[-1], []).append(i)
    keep: list[int] = []
    rng = random.Random(seed)
    for idx in by_lang.values():
        keep += idx if len(idx) <= limit else rng.sample(idx, limit)
    return [rows[i] for i in sorted(keep)]


def config_rows(cfg) -> list[tuple[str, str, str, str]]:
    """A translation config's training pairs, each once (repeats dropped), as (source, target,
    target language, direction)."""
    from training.data import load_directions

    d = cfg.data
    if d.directions:
        once = [" ".join(f for f in spec.split() if not f.startswith("repeat=")) for spec in d.train_sets]
        rows = load_directions(once, d.directions, tags=False)
        return list(dict.fromkeys((s, t, direction.split("-")[1], direction) for s, t, direction in rows))
    from training.data import load_parallel

    pairs = load_parallel(Path(d.dir), d.train_split, d.source_lang, d.target_lang)
    return list(dict.fromkeys((s, t, d.target_lang, f"{d.source_lang}-{d.target_lang}") for s, t in pairs))


def file_rows(bundle_dir: Path, source: Path, target: Path, lang: str | None = None) -> list[tuple[str, str, str, str]]:
    """Parallel text files (one sentence a line, plain or .gz) as (source, target, target
    language, "file") rows (sources without a target tag, as `config_rows` reads them: a tag's list
    would be the frequent pieces)."""
    from training.data import read_lines

    manifest = load_manifest(bundle_dir)
    lang = lang or manifest.target_lang or manifest.pairs()[0][1]
    src, tgt = read_lines(source), read_lines(target)
    if len(src) != len(tgt):
        raise ValueError(f"{source} has {len(src)} lines, {target} {len(tgt)}")
    return [(s, t, lang, "file") for s, t in zip(src, tgt) if s.strip() and t.strip()]


def add_shortlist(
    bundle_dir: Path,
    rows: Sequence[Sequence[str]],
    k: int = K,
    frequent: int = FREQUENT,
    max_pairs: int = MAX_PAIRS,
    source: str = "",
) -> Manifest:
    """Build the tables from (source, target, target language, direction) rows (at most
    `max_pairs` per direction) with the bundle's tokenizer, and add them to the bundle."""
    import sentencepiece as spm

    from service.runtime.codec import Codec

    manifest = load_manifest(bundle_dir)
    codec = Codec(bundle_dir, manifest, spm.SentencePieceProcessor(model_file=str(bundle_dir / manifest.tokenizer)))
    rows = sample(list(rows), max_pairs)
    ids = manifest.special_ids
    exclude = [ids["pad"], ids["bos"]]
    if manifest.target_tags:
        exclude += [codec.source.piece_to_id(target_tag(lang)) for lang in {r[2] for r in rows}]

    def src_ids(texts: list[str]) -> list[list[int]]:
        return codec.source.ids(texts, None)

    def tgt_ids(texts: list[str]) -> list[list[int]]:
        return codec.target.ids(texts, None)

    tables = build_tables(rows, src_ids, tgt_ids, manifest.vocab_size, k, frequent, exclude)
    about = {"k": k, "frequent": frequent, "score": "dice", "pairs": len(rows), "built_from": source}
    return write_shortlist(bundle_dir, tables, about)
