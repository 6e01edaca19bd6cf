"""Lexical shortlists: each sentence's output projection cut to the pieces its source suggests.

A bundle's shortlist file (`training/shortlist.py` builds it from parallel text, as Marian's
`lex.s2t`) holds, per target language, each source piece's most likely target pieces and the
language's most frequent target pieces. A sentence may produce only the union of its source
pieces' lists, the frequent pieces, its own source pieces that the language's targets contain
(names, numbers, markup copied through) and </s> and <unk>, cut to its target language's
vocabulary where the bundle has one (runtime/vocab.py).

How a batch computes it: the decoder runs as a variant of the served graph without the output
projection (its last output is `hidden`, the projection's uint8 input); the projection runs on
the union of the batch's rows' lists only (`Columns`: the same operator, MatMulIntegerToFloat,
in a small generic graph, graphs/projection_int8.onnx, given the union's weight columns), and
each row's logits outside its own list are -inf. Batch invariance, the project's promise:

* each logit is an integer product of one row and one column, scaled elementwise: onnxruntime's
  int8 kernels give each output element the same bits whatever the number of rows or columns
  (the served decoder's too: the logits are the full graph's on those columns, bit for bit;
  tests/runtime/test_shortlist.py checks both on the machine it runs on);
* a row's argmax ties go to the lowest column, and the union's columns are in ascending piece
  order, so to the lowest piece whatever the batch-mates;
* a row's normalisation (`logsumexp`) is a sequential sum (numpy's cumsum) over its columns in
  piece order, where the batch-mates' columns are -inf (adding 0.0 changes no sum): the same as
  the row alone (a pairwise sum would group a row's values by their positions); beam search's
  selection (`topk`) is in numpy on the same values, ties to the lowest piece as ONNX TopK.

Only int8 projections of that form are cut (a float projection's sums are ordered by the BLAS
kernel, which the matrix shape chooses); other variants keep the target-language projection.
What changes is deliberate: a piece outside a sentence's list cannot be produced, and a score is
normalised over the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime import graph_io
from service.runtime.bundle import BundleError, GraphSpec, Manifest, TensorSpec

PROJECTION = Path(__file__).parent / "graphs" / "projection_int8.onnx"


@dataclass
class Projection:
    """An int8 output projection (MatMulIntegerToFloat: uint8 activations with a zero point,
    int8 weights with one zero point and scale per column), computed by `session`
    (graphs/projection_int8.onnx: the same operator on the weights it is given)."""

    weight: np.ndarray  # (D, V) int8
    weight_scale: np.ndarray  # (V,) float32
    weight_zero_point: np.ndarray  # (V,) int8
    input_scale: np.ndarray  # () float32
    input_zero_point: np.ndarray  # () uint8
    session: Any = None  # graphs/projection_int8.onnx (opened by the engine)

    def columns(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The session's constant feeds for the columns of pieces `ids`."""
        return {
            "b": np.take(self.weight, ids, axis=1),  # (faster than fancy indexing there)
            "b_scale": self.weight_scale[ids],
            "b_zero_point": self.weight_zero_point[ids],
            "a_scale": self.input_scale,
            "a_zero_point": self.input_zero_point,
        }

    def logits(self, hidden: np.ndarray, columns: dict[str, np.ndarray]) -> np.ndarray:
        """(R, C) float32 logits from the decoder's `hidden` (R, D) uint8."""
        return self.session.run(None, {"a": hidden, **columns})[0]


@dataclass
class Shortlist:
    """A bundle's shortlist tables (per target language) and the projection they cut."""

    offsets: dict[str, np.ndarray]  # lang -> (V + 1,) each source piece's list in `targets`
    targets: dict[str, np.ndarray]  # lang -> its lists, one after the other
    frequent: dict[str, np.ndarray]  # lang -> its most frequent target pieces
    seen: dict[str, np.ndarray]  # lang -> every piece its targets contain (a source piece copied must be one)
    allowed: dict[str, np.ndarray]  # lang -> its target vocabulary (runtime/vocab.py), where the bundle has one
    always: np.ndarray  # </s>, <unk>
    projection: Projection
    tag_langs: dict[int, str]  # target-tag piece -> language (multilingual bundles)
    default_lang: str | None  # a single-target bundle's language

    def lang_of(self, source: Sequence[int]) -> str | None:
        """The language whose tables serve `source` (its target tag, or the bundle's target)."""
        for piece in source[:2]:
            if piece in self.tag_langs:
                return self.tag_langs[piece]
        return self.default_lang

    def __post_init__(self) -> None:
        v = self.projection.weight.shape[1]
        # per language, as (V,) masks: the pieces it may produce, those a source piece may be
        # copied as, and the list every sentence has (frequent pieces, </s>, <unk>)
        self._may: dict[str, np.ndarray] = {}
        self._copy: dict[str, np.ndarray] = {}
        self._base: dict[str, np.ndarray] = {}  # (the tables are not changed after this)
        for lang in self.offsets:
            may = np.ones(v, dtype=bool)
            if lang in self.allowed:
                may[:] = False
                may[self.allowed[lang]] = True
            self._may[lang] = may
            seen = np.zeros(v, dtype=bool)
            seen[self.seen[lang]] = True
            self._copy[lang] = seen & may
            base = np.zeros(v, dtype=bool)
            base[self.frequent[lang]] = True
            base[self.always] = True
            self._base[lang] = base & may

    def pieces(self, source: Sequence[int]) -> np.ndarray:
        """The pieces a translation of `source` (ids) may produce, ascending (a source naming no
        language with a table: every piece of the language's vocabulary, or every piece)."""
        lang = self.lang_of(source)
        if lang is None or lang not in self.offsets:  # no table: every piece the language may produce
            return self.allowed.get(lang or "", np.arange(self.projection.weight.shape[1]))
        off, tgt = self.offsets[lang], self.targets[lang]
        src = np.asarray(source, dtype=np.int64)
        src = src[(src >= 0) & (src < len(off) - 1)]
        mark = self._base[lang].copy()
        for s in set(src.tolist()):
            mark[tgt[off[s] : off[s + 1]]] = True
        mark[src] |= self._copy[lang][src]
        mark &= self._may[lang]
        return np.flatnonzero(mark)

    def columns(self, sources: Sequence[Sequence[int]]) -> Columns:
        """The batch's columns for rows `sources` (`pieces` of each)."""
        return Columns.of(self.projection, self.lists(sources))

    def lists(self, sources: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """`pieces` of each source, the rows of one language at once (a batch's are)."""
        out: list[np.ndarray | None] = [None] * len(sources)
        by_lang: dict[str | None, list[int]] = {}
        for r, source in enumerate(sources):
            by_lang.setdefault(self.lang_of(source), []).append(r)
        v = self.projection.weight.shape[1]
        for lang, rows in by_lang.items():
            if lang is None or lang not in self.offsets or len(rows) == 1:
                for r in rows:
                    out[r] = self.pieces(sources[r])
                continue
            off, tgt = self.offsets[lang], self.targets[lang]
            # every row's source pieces (row, piece), each once
            lengths = np.array([len(sources[r]) for r in rows])
            flat = np.concatenate([np.asarray(sources[r], dtype=np.int64) for r in rows])
            owner = np.repeat(np.arange(len(rows)), lengths)
            inside = (flat >= 0) & (flat < v)
            pairs = np.unique(owner[inside] * v + flat[inside])
            row, piece = pairs // v, pairs % v
            # their lists, gathered at once (CSR ranges), and the pieces copied through
            starts, counts = off[piece], off[piece + 1] - off[piece]
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            targets = tgt[np.repeat(starts, counts) + within]
            copied = self._copy[lang][piece]
            mark = np.repeat(self._base[lang][None, :], len(rows), axis=0)
            mark[np.repeat(row, counts), targets] = True
            mark[row[copied], piece[copied]] = True
            mark &= self._may[lang]
            for k, r in enumerate(rows):
                out[r] = np.flatnonzero(mark[k])
        return out  # type: ignore[return-value]


class Columns:
    """One batch's projection: the union of its rows' lists (`ids`, ascending), each row's own
    columns (`mask`), and the weights of the union."""

    def __init__(self, projection: Projection, ids: np.ndarray, mask: np.ndarray) -> None:
        self.projection, self.ids, self.mask = projection, ids, mask
        self.bias = np.where(mask, np.float32(0), np.float32(-np.inf))  # added: x + 0 is x, x - inf is -inf
        self.feeds = projection.columns(ids)

    @classmethod
    def of(cls, projection: Projection, lists: Sequence[np.ndarray], ids: np.ndarray | None = None) -> Columns:
        """The columns of rows with piece lists `lists` (over `ids` where given: a superset of
        their union)."""
        if ids is None:
            mark = np.zeros(projection.weight.shape[1], dtype=bool)
            for x in lists:
                mark[x] = True
            ids = np.flatnonzero(mark)
        return cls(projection, ids, masks(ids, lists))

    def with_rows(self, lists: Sequence[np.ndarray | None]) -> Columns:
        """The same columns (weights kept) for other rows (None: a free row, no column); the
        union grows where a list has a piece it lacks."""
        have = [x for x in lists if x is not None]
        missing = [x[~np.isin(x, self.ids, assume_unique=True)] for x in have]
        if any(len(m) for m in missing):
            return Columns.of(self.projection, have, np.union1d(self.ids, np.concatenate(missing)))._rows(lists)
        found = object.__new__(Columns)
        found.projection, found.ids, found.feeds = self.projection, self.ids, self.feeds
        return found._rows(lists)

    def _rows(self, lists: Sequence[np.ndarray | None]) -> Columns:
        self.mask = masks(self.ids, lists)
        self.bias = np.where(self.mask, np.float32(0), np.float32(-np.inf))
        return self

    @property
    def width(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Columns:
        """The same columns for the rows `rows` (indices or a mask) of this batch."""
        found = object.__new__(Columns)
        found.projection, found.ids, found.feeds = self.projection, self.ids, self.feeds
        found.mask, found.bias = self.mask[rows], self.bias[rows]
        return found

    def logits(self, hidden: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Each row's logits (R, C) from the decoder's `hidden` (R, D): -inf outside its list.
        `rows`: each hidden row's row of `mask` (None: the same)."""
        out = self.projection.logits(hidden, self.feeds)
        out += self.bias if rows is None else self.bias[rows]
        return out

    def tokens_of(self, columns: np.ndarray) -> np.ndarray:
        """The piece ids of columns."""
        return self.ids[columns]

    @staticmethod
    def logsumexp(logits: np.ndarray) -> np.ndarray:
        """Each row's log(sum(exp)) over its own columns, float64, the same bits whatever other
        columns the batch has (at -inf): a sequential sum (np.cumsum) in column order, where a
        pairwise sum would group the row's values by their positions."""
        top = logits.max(axis=-1)
        shifted = logits - top[..., None]
        np.exp(shifted, out=shifted)
        total = np.cumsum(shifted, axis=-1, dtype=np.float64)[..., -1]
        return top.astype(np.float64) + np.log(total)

    def topk(self, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `k` best log-probabilities (R, k) float32, best first, and their piece ids;
        equal values in ascending piece order (beam.topk_numpy's contract). A row has at least
        `k` pieces of its own when its list does (the frequent pieces see to it)."""
        r, c = logits.shape
        k = min(k, c)
        values = (logits - self.logsumexp(logits)[:, None]).astype(np.float32)
        kth = -np.partition(-values, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best value
        above = values > kth
        tied = values == kth
        need = k - above.sum(axis=1, keepdims=True)
        chosen = above | tied
        over = np.nonzero(tied.sum(axis=1) > need[:, 0])[0]  # rows with more ties than places: the lowest columns
        if len(over):
            chosen[over] = above[over] | (tied[over] & (np.cumsum(tied[over], axis=1) <= need[over]))
        cols = np.nonzero(chosen)[1].reshape(r, k)  # each row's, ascending
        picked = np.take_along_axis(values, cols, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")
        return np.take_along_axis(picked, order, axis=1), self.ids[np.take_along_axis(cols, order, axis=1)]


def masks(ids: np.ndarray, lists: Sequence[np.ndarray | None]) -> np.ndarray:
    """(rows, len(ids)) each row's columns (a list's pieces must all be in `ids`; None: none)."""
    mask = np.zeros((len(lists), len(ids)), dtype=bool)
    rows = [r for r, x in enumerate(lists) if x is not None and len(x)]
    if rows:
        lengths = [len(lists[r]) for r in rows]  # type: ignore[arg-type]
        flat = np.concatenate([lists[r] for r in rows])  # type: ignore[misc]
        mask[np.repeat(rows, lengths), np.searchsorted(ids, flat)] = True
    return mask


def hidden_spec(decoder: GraphSpec, file: str, d_model: int) -> GraphSpec:
    """The spec of a decoder variant without the output projection: the decoder's inputs, its
    outputs with `hidden` (the projection's uint8 input) in place of the logits."""
    outputs = [
        TensorSpec(graph_io.HIDDEN, "uint8", ["batch", "d_model"]) if t.name == graph_io.LOGITS else t
        for t in decoder.outputs
    ]
    return GraphSpec(file=file, inputs=decoder.inputs, outputs=outputs)


def check_hidden(session: Any, spec: GraphSpec, where: str) -> None:
    """Refuse a projection-less decoder whose session differs from `spec` (names, order)."""
    have = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if have != want:
        raise BundleError(f"{where}: the shortlist's decoder has inputs/outputs {have}, expected {want}")
    out = session.get_outputs()[[o.name for o in session.get_outputs()].index(graph_io.HIDDEN)]
    if out.type != "tensor(uint8)":
        raise BundleError(f"{where}: the shortlist's decoder output {graph_io.HIDDEN!r} is {out.type}, not uint8")


def load_shortlist(
    bundle_dir: Path,
    manifest: Manifest,
    variant: str,
    piece_to_id: Callable[[str], int],
    allowed: dict[str, np.ndarray] | None = None,
) -> tuple[Shortlist, GraphSpec] | None:
    """The bundle's shortlist for `variant`'s decoder and the spec of its projection-less graph;
    None where the bundle has none, or none for this variant (a projection that is not int8)."""
    spec = manifest.shortlist
    graphs = (spec.get("graphs") or {}) if spec else {}
    if variant not in graphs:
        return None
    langs = list(spec["languages"])
    with np.load(bundle_dir / spec["file"]) as data:
        offsets = {lang: data[f"offsets/{lang}"].astype(np.int64) for lang in langs}
        targets = {lang: data[f"targets/{lang}"].astype(np.int64) for lang in langs}
        frequent = {lang: data[f"frequent/{lang}"].astype(np.int64) for lang in langs}
        seen = {lang: data[f"seen/{lang}"].astype(np.int64) for lang in langs}
        p = f"{variant}/"
        projection = Projection(
            data[p + "weight"],
            data[p + "weight_scale"],
            data[p + "weight_zero_point"],
            data[p + "input_scale"].reshape(()),
            data[p + "input_zero_point"].reshape(()),
        )
    from service.runtime.bundle import target_tag

    tag_langs = {piece_to_id(target_tag(lang)): lang for lang in langs} if manifest.target_tags else {}
    default = None if manifest.target_tags else (manifest.target_lang or manifest.pairs()[0][1])
    ids = manifest.special_ids
    shortlist = Shortlist(
        offsets,
        targets,
        frequent,
        seen,
        {lang: a.astype(np.int64) for lang, a in (allowed or {}).items()},
        np.array(sorted({ids["eos"], ids["unk"]}), dtype=np.int64),
        projection,
        tag_langs,
        default,
    )
    decoder = manifest.graph(variant, "decoder")
    return shortlist, hidden_spec(decoder, graphs[variant], manifest.model["d_model"])
