"""Greedy autoregressive translation in numpy around an encoder and a KV-cache decoder graph.

Encoder graph:  src_ids (B, S) int64 -> cross_k.{i}, cross_v.{i} (B, H, S, Dh) for each layer i
Decoder graph:  input_ids (B, 1) int64, position (B,) int64, src_mask (B, S) bool, self_mask
                (B, T+1) bool, past_k.{i}, past_v.{i} (B, H, T, Dh), cross_k.{i}, cross_v.{i}
                -> logits (B, V), present_k.{i}, present_v.{i} (B, H, T+1, Dh)
                (graph_io: contract 1 bundles have no position and no self_mask)

Every decoder input is batch-first, so the decoding state is one dict of arrays. Each row stops
at </s> or at a limit derived from its source length; finished rows leave the batch (their
slices are dropped), so late steps only pay for sentences still running.

A decoder of graph contract 3 (graph_io) has caches of a fixed width, allocated once per batch
(as wide as its longest output may be) and written in place: the engine binds each cache's
numpy buffer as both the step's past and its present (IO binding), and the state carries each
row's `position`. Nothing is copied from one step to the next.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.runtime import graph_io
from service.runtime.beam import Hypothesis, Steps, beam_steps, drain, log_softmax, logsumexp, take_rows
from service.runtime.bundle import Manifest
from service.runtime.preprocess import DECODING, output_limits, source_ids
from service.runtime.sessions import BundleEngine, create_session
from service.runtime.utf8 import ByteRepair
from service.runtime.vocab import load_target_vocab, tag_languages

ALIGN_SEP = "\x1f"  # joins a source and its translation into one batcher item (runner option `align`)
BEAM_TOPK = Path(__file__).parent / "graphs" / "beam_topk.onnx"
ROWS_GATHER = Path(__file__).parent / "graphs" / "rows_gather.onnx"


# run_step's bindings kept per thread: one per running batch (its `state` dict), a few batches at most
# (each binding holds its arrays: a batch's binding is replaced, not kept beside, when its arrays change)
BINDINGS_KEPT = 4


class Translator(BundleEngine):
    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        providers: list[str],
        threads: int = 0,
        variant: str | None = None,
        max_output_ratio: float | None = None,
        max_output_extra: int | None = None,
        io_binding: bool | None = None,
        memory_arena: bool = False,
        target_vocab: bool = True,
    ) -> None:
        super().__init__(bundle_dir, manifest, variant, memory_arena)
        self.text = ByteRepair(self.sp)  # ids -> text, never half a UTF-8 character
        self.encoder = self.session("encoder", providers, threads)
        self.decoder = self.session("decoder", providers, threads)
        # Beam search's per-step selection (runtime/beam.py) and, where the caches stay on the
        # device, its cache reordering: generic graphs shipped with the service.
        self._topk = create_session(BEAM_TOPK, ["CPUExecutionProvider"], threads, memory_arena)
        self._topk_dev = self._gather = None
        # Per-row positions and self-attention masks (contract 2): rows may join a running
        # batch (runtime/continuous.py). Contract 1 bundles decode whole batches only.
        self.per_row = graph_io.per_row(manifest.graph(self.variant, "decoder"))
        # Contract 3: fixed-width caches written in place (bound as past and present at once);
        # `bind_static=False` runs the same graph without binding (a copy of every cache per step).
        self.static = graph_io.static_cache(manifest.graph(self.variant, "decoder"))
        self.bind_static = True
        self._bound_local = threading.local()  # run_step's last bindings, per calling thread
        # Decoders exported since session 9 also say where each step looked in the source:
        # since session 11 by the query of one layer's cross-attention (`align_layer`), from which
        # `attention` computes the weights; before, by the weights themselves (every step paid).
        self.aligns = graph_io.has_alignment(manifest.graph(self.variant, "decoder"))
        self.align_layer = graph_io.alignment_layer(manifest.graph(self.variant, "decoder"))
        # On CUDA the caches stay on the device between steps (IO binding); on the CPU the
        # plain loop is faster because it can drop finished rows from the work.
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        if self.io_binding:  # beam search with device-resident caches: select and reorder there too
            self._topk_dev = create_session(BEAM_TOPK, providers, threads, memory_arena)
            self._gather = create_session(ROWS_GATHER, providers, threads, memory_arena)
        ids = manifest.special_ids
        self.pad, self.bos, self.eos = ids["pad"], ids["bos"], ids["eos"]
        m = manifest.model
        self.n_heads = m["n_heads"]
        self.d_head = m["d_model"] // m["n_heads"]
        # The output-length rule: the manifest's parameters (older bundles: the defaults).
        rule = {**DECODING, **manifest.decoding}
        self.ratio = rule["max_output_ratio"] if max_output_ratio is None else max_output_ratio
        self.extra = rule["max_output_extra"] if max_output_extra is None else max_output_extra
        # Names from the graph contract (the sessions were checked against it at load).
        layers = range(m["n_decoder_layers"])
        self.encoder_outputs = [graph_io.cross(t, i) for i in layers for t in "kv"]
        self.present_outputs = [graph_io.present(t, i) for i in layers for t in "kv"]
        # present_k.{i} becomes the next step's past_k.{i}: the cache entries of the state
        self.cache_names = [graph_io.past(t, i) for i in layers for t in "kv"]
        self.on_tokens: Callable[[int], None] | None = None  # told how many tokens each call made
        # Target vocabularies (runtime/vocab.py): a sentence is decoded by its target language's
        # view of this translator, whose decoder computes only that language's logits; column j
        # of the logits is piece `logit_ids[j]` (None: every piece, in order).
        self.logit_ids: np.ndarray | None = None
        self.n_logits = manifest.vocab_size
        self.target_vocab = load_target_vocab(bundle_dir, manifest, self.variant) if target_vocab else None
        self._tag_langs = tag_languages(manifest, self.sp.piece_to_id) if manifest.target_tags else {}
        self._views: dict[str, Translator] = {}
        self._views_lock = threading.Lock()
        # Every language's decoder session is opened (and checked) here, at load: one opened at
        # the language's first sentence would read the graph from disk then, and a file replaced
        # or truncated since, or a process out of file descriptors, would fail that sentence in
        # a decode worker instead of refusing the bundle at load.
        vocab = self.target_vocab
        self._view_decoders = (
            {lang: self.session("decoder", providers, threads, vocab.initializers(lang)) for lang in vocab.ids}
            if vocab
            else {}
        )

    # -- text level -------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids: pieces + </s>, cut to the model's length."""
        # sentencepiece encodes a list on a thread pool: worth it for a batch, not for a few
        threads = 1 if len(texts) < 8 else None
        return [source_ids(ids, self.max_len, self.eos) for ids in self.sp.encode(list(texts), num_threads=threads)]

    def n_tokens(self, text: str) -> int:
        return len(self.sp.encode(text)) + 1

    def translate(self, texts: Sequence[str]) -> list[str]:
        """Translate one batch of sentences (empty strings give empty strings)."""
        out = [""] * len(texts)
        idx, sources = self._by_length(texts)
        if idx:
            for i, text in zip(idx, self.text.decode(self.generate(sources))):
                out[i] = text
        return out

    def translate_nbest(
        self, texts: Sequence[str], beam_size: int = 4, n_best: int = 1, length_penalty: float = 1.0
    ) -> list[list[tuple[str, float, int]]]:
        """The `n_best` best translations of each sentence (beam search; beam_size 1 is greedy),
        best first, each as (text, sum of its tokens' log-probabilities with </s>, tokens with
        </s>); an empty text gives [("", 0.0, 0)]."""
        return drain(self.translate_nbest_steps(texts, beam_size, n_best, length_penalty))

    def translate_nbest_steps(
        self, texts: Sequence[str], beam_size: int = 4, n_best: int = 1, length_penalty: float = 1.0
    ) -> Steps:
        """`translate_nbest` as a generator that yields between two decoder steps and returns
        its result: the scheduler advances a beam batch one step per turn, beside the running
        greedy batches, instead of holding them for the whole search (service/scheduler.py)."""
        out: list[list[tuple[str, float, int]]] = [[("", 0.0, 0)] for _ in texts]
        idx, sources = self._by_length(texts)
        if idx:
            results = yield from self.generate_nbest_steps(sources, beam_size, n_best, length_penalty)
            decoded = iter(self.text.decode([h.tokens for hyps in results for h in hyps]))  # one call
            for i, hyps in zip(idx, results):
                out[i] = [(next(decoded), h.score, h.length) for h in hyps]
        return out

    def align(self, pairs: Sequence[tuple[str, str]]) -> list[list[tuple[int, int, int, int]]]:
        """Word alignment by forced decoding: for each (source as the model reads it, its
        translation), the translation's pieces fed to the decoder one by one, and for each piece
        the source piece that the step producing it attended to most (the `alignment` output),
        as (translation start, end, source start, end) in characters. Steps that looked most at
        </s> or at a target tag give no link. Empty for a decoder without the output."""
        if not self.aligns or not pairs:
            return [[] for _ in pairs]
        src_pieces = [_pieces(self.sp, s) for s, _ in pairs]
        tgt_pieces = [_pieces(self.sp, t)[: self.max_len - 1] for _, t in pairs]
        sources = [source_ids([p[0] for p in ps], self.max_len, self.eos) for ps in src_pieces]
        weights = self.attention(sources, [[p[0] for p in ps] for ps in tgt_pieces])
        best = weights.argmax(-1)  # (B, T): the source position each target piece looked at most
        out: list[list[tuple[int, int, int, int]]] = [[] for _ in pairs]
        for i, (sp_, tp) in enumerate(zip(src_pieces, tgt_pieces)):
            for k, (_, t0, t1) in enumerate(tp):
                if not pairs[i][1][t0:t1].strip():  # a piece of space alone ("▁") says nothing
                    continue
                j = int(best[i, k])
                if j < len(sp_) and sp_[j][2] > sp_[j][1] and not self.sp.id_to_piece(sp_[j][0]).startswith("<2"):
                    out[i].append((t0, t1, sp_[j][1], sp_[j][2]))  # not </s>, an empty piece or a target tag
        return out

    def attention(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> np.ndarray:
        """Forced decoding of `targets` (id lists, no </s>) from `sources` (ending in </s>): where
        the step that produces each target token looked in the source (the cross-attention
        weights of the alignment layer, averaged over heads), (B, T, S) for the longest target T
        and source S (zeros past a row's own target)."""
        src, _ = self.padded(sources)
        b, steps = len(sources), max((len(t) for t in targets), default=0)
        out = np.zeros((b, steps, src.shape[1]), dtype=np.float32)
        forced = np.full((b, steps), self.pad, dtype=np.int64)
        for i, t in enumerate(targets):
            forced[i, : len(t)] = t
        state = self.start(src, width=steps)
        layer = self.align_layer
        wanted = graph_io.ALIGNMENT if layer is None else graph_io.align_query(layer)
        tokens = np.full((b, 1), self.bos, dtype=np.int64)
        for step in range(steps):
            _, found = self.step(state, tokens, extra=[wanted])
            if layer is not None:
                found = cross_attention_weights(found, state[graph_io.cross("k", layer)], state[graph_io.SRC_MASK])
            out[:, step] = found
            tokens = forced[:, step : step + 1]
        for i, t in enumerate(targets):
            out[i, len(t) :] = 0
        return out

    def _by_length(self, texts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """The indices of the non-empty texts, shortest source first, and their source ids."""
        todo = [i for i, t in enumerate(texts) if t.strip()]
        encoded = self.encode([texts[i] for i in todo]) if todo else []
        order = sorted(range(len(todo)), key=lambda k: len(encoded[k]))
        return [todo[k] for k in order], [encoded[k] for k in order]

    # -- id level ---------------------------------------------------------------------------

    def generate_nbest(
        self, sources: Sequence[Sequence[int]], beam_size: int, n_best: int = 1, length_penalty: float = 1.0
    ) -> list[list[Hypothesis]]:
        """Beam search over a batch of source id lists (runtime/beam.py), n-best per source.
        Beam 1 is the greedy loop itself (the same output as `generate`), with scores."""
        return drain(self.generate_nbest_steps(sources, beam_size, n_best, length_penalty))

    def generate_nbest_steps(
        self, sources: Sequence[Sequence[int]], beam_size: int, n_best: int = 1, length_penalty: float = 1.0
    ) -> Steps:
        """`generate_nbest` stepped (`translate_nbest_steps`): each target language's part in turn."""
        out: list = [None] * len(sources)
        for lang, idx in self._target_groups(sources).items():
            part = [sources[i] for i in idx]
            found = yield from self.view(lang)._generate_nbest(part, beam_size, n_best, length_penalty)
            for i, result in zip(idx, found):
                out[i] = result
        return out

    def _generate_nbest(
        self, sources: Sequence[Sequence[int]], beam_size: int, n_best: int, length_penalty: float
    ) -> Steps:
        if beam_size == 1:
            return self._greedy_scored(sources)
        src, limits = self.padded(sources)
        if self.io_binding:  # on CUDA: caches, logits and their reordering stay on the device
            start, step, topk, gather, gather_cache = self._beam_bound()
        elif self.static and self.bind_static:
            start, step, topk, gather, gather_cache = self._beam_in_place()
        else:
            start, step, topk, gather, gather_cache = self._beam_plain()
        hyps = yield from beam_steps(
            start,
            step,
            src,
            limits,
            beam_size,
            n_best,
            self.bos,
            self.eos,
            length_penalty,
            per_beam=set(self.cache_names),
            topk=topk,
            gather=gather,
            vocab=self.n_logits,
            gather_cache=gather_cache,
        )
        if self.on_tokens:
            self.on_tokens(sum(h[0].length for h in hyps if h))
        return hyps

    # Beam search's parts (runtime/beam.py): start, step, topk, gather, gather_cache

    def _beam_bound(self) -> tuple:
        """On the device: the state is device-resident OrtValues, reordered there."""
        return self._start_bound, self._step_bound, self._topk_bound, self._gather_bound, None

    def _beam_plain(self) -> tuple:
        """Contract 2 (caches grown by the graph: a gather of each), or contract 3 unbound
        (`bind_static` off): each cache reordered into a second buffer of its own."""
        filled = [0]  # contract 3: cache slots written so far (every row of a beam search is at the same step)

        def step(state: dict[str, Any], tokens: np.ndarray) -> Any:
            filled[0] += 1
            return self.step(state, tokens)

        spare: dict[str, np.ndarray] = {}  # contract 3: each cache's second buffer

        def take_filled(name: str, value: np.ndarray, rows: np.ndarray) -> np.ndarray:
            """A fixed-width cache's rows in the order `rows`, written into the cache's other
            buffer (two per cache, used in turn: no allocation per step; rows only ever leave,
            so the first buffer's rows are enough)."""
            # the buffer `value` is the head of (not the memory of an array onnxruntime returned)
            base = value.base
            owner = base if isinstance(base, np.ndarray) and base.shape[1:] == value.shape[1:] else value
            other = spare[name] if name in spare else np.empty_like(owner)
            spare[name] = owner
            return _filled_rows(value, rows, filled[0], other[: len(rows)])

        return self.start, step, self.topk, take_rows, take_filled if self.static else None

    def _beam_in_place(self) -> tuple:
        """Contract 3 on the CPU, bound: every state entry kept in one array for the whole
        search: the caches are reordered in place (only the rows whose beam changed, only the
        slots written so far), the rows of stopped sentences leave by moving the kept ones to
        the front (a prefix of the same arrays), and the decoder's binding (`_bound_step`) is
        made again only then, not at every step. Before (session 14's profile of beam 4 at batch
        32), every step copied every cache into a second buffer and bound 20 arrays anew: 35%
        of the time beside the decoder's 52%; after, 21% beside 57%."""
        filled = [0]  # cache slots written so far (every row of a beam search is at the same step)
        bound: list[Callable[[np.ndarray], Any] | None] = [None]  # None: bind the state's arrays anew
        moved: list = [None, None]  # the last `rows` seen and its rows that change (one per step)

        def step(state: dict[str, Any], tokens: np.ndarray) -> Any:
            run = bound[0]
            if run is None:
                run = bound[0] = self._bound_step(state, advance=True)
            filled[0] += 1
            return run(tokens)

        def move(value: np.ndarray, rows: np.ndarray, slots: int | None) -> np.ndarray:
            if moved[0] is not rows:
                moved[:] = rows, np.nonzero(rows != np.arange(len(rows)))[0]
            if len(rows) < len(value):  # fewer rows: a prefix, bound anew
                bound[0] = None
            return _moved_rows(value, rows, slots, moved[1])

        def gather(value: np.ndarray, rows: np.ndarray) -> np.ndarray:
            if len(rows) > len(value):  # the start: each sentence's row repeated for its beams
                bound[0] = None
                return value[rows]
            return move(value, rows, None)

        return self.start, step, self.topk, gather, lambda _name, value, rows: move(value, rows, filled[0])

    def topk(self, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `k` best log-probabilities and token ids (beam.topk_numpy's contract)."""
        values, ids = self._topk.run(None, {"logits": logits, "k": np.array([k], dtype=np.int64)})
        return values, self.tokens_of(ids)

    # -- beam search with IO binding: the device-resident state is a dict of OrtValues (the
    # encoder's keys/values, the caches) and numpy arrays (the source mask, bound from the CPU)

    def _start_bound(self, src: np.ndarray) -> dict[str, Any]:
        dev = self.device
        enc = self.encoder.io_binding()
        enc.bind_cpu_input(graph_io.SRC_IDS, src)
        for name in self.encoder_outputs:
            enc.bind_output(name, dev)
        self.encoder.run_with_iobinding(enc)
        state: dict[str, Any] = dict(zip(self.encoder_outputs, enc.get_outputs()))
        state[graph_io.SRC_MASK] = src != self.pad
        b = src.shape[0]
        width = self.output_limit(src.shape[1]) if self.static else 0
        empty = np.zeros((b, self.n_heads, width, self.d_head), dtype=np.float32)
        for name in self.cache_names:
            state[name] = ort.OrtValue.ortvalue_from_numpy(empty, dev, 0)
        if self.static:
            state[graph_io.POSITION] = np.zeros(b, dtype=np.int64)
        return state

    def _step_bound(self, state: dict[str, Any], tokens: np.ndarray) -> Any:
        """One decoder step; the logits stay on the device (the selection reads them there).
        Contract 3: the caches are not shared between past and present here: onnxruntime's
        CUDA GroupQueryAttention takes fp16/bf16 only, so an fp32 graph's attention runs on
        the CPU provider beside it and its present comes back as a new tensor (as wide as the
        longest row needs), which the next step reads as its past."""
        bind = self.decoder.io_binding()
        bind.bind_cpu_input(graph_io.INPUT_IDS, tokens)
        if self.per_row and not self.static:
            b, past_len = tokens.shape[0], state[self.cache_names[0]].shape()[2]
            bind.bind_cpu_input(graph_io.POSITION, np.full(b, past_len, dtype=np.int64))
            bind.bind_cpu_input(graph_io.SELF_MASK, np.ones((b, past_len + 1), dtype=bool))
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                bind.bind_cpu_input(name, value)
            else:
                bind.bind_ortvalue_input(name, value)
        bind.bind_output(graph_io.LOGITS, self.device)
        for name in self.present_outputs:
            bind.bind_output(name, self.device)
        self.decoder.run_with_iobinding(bind)
        logits, *present = bind.get_outputs()
        state.update(zip(self.cache_names, present))
        if self.static:
            state[graph_io.POSITION] = state[graph_io.POSITION] + 1
        return logits

    def _topk_bound(self, logits: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._topk_dev is not None
        bind = self._topk_dev.io_binding()
        bind.bind_ortvalue_input("logits", logits)
        bind.bind_cpu_input("k", np.array([k], dtype=np.int64))
        bind.bind_output("values", "cpu")  # (rows, 2k): all that comes back to the host
        bind.bind_output("indices", "cpu")
        self._topk_dev.run_with_iobinding(bind)
        values, ids = bind.copy_outputs_to_cpu()
        return values, self.tokens_of(ids)

    def _gather_bound(self, value: Any, rows: np.ndarray) -> Any:
        if isinstance(value, np.ndarray):
            return value[rows]
        assert self._gather is not None
        bind = self._gather.io_binding()
        bind.bind_ortvalue_input("data", value)
        bind.bind_cpu_input("rows", rows.astype(np.int64))
        bind.bind_output("out", self.device)
        self._gather.run_with_iobinding(bind)
        return bind.get_outputs()[0]

    def target_of(self, source: Sequence[int]) -> str | None:
        """The target language whose vocabulary decodes `source` (its tag, the first piece
        after the leading space; a single-target bundle's target); None: the full vocabulary."""
        if self.target_vocab is None:
            return None
        if not self.manifest.target_tags:
            lang = self.manifest.target_lang or self.manifest.pairs()[0][1]
            return lang if lang in self.target_vocab.ids else None
        for piece in source[:2]:
            if piece in self._tag_langs:
                return self._tag_langs[piece]
        return None

    def view(self, lang: str | None) -> Translator:
        """This translator decoding into `lang`'s vocabulary only: its decoder session of the same
        graph with the projection cut to the language's pieces (opened at load); None: itself. A
        view shares the encoder, the tokenizer and the settings (as they are at its first use)."""
        if lang is None or self.target_vocab is None:
            return self
        with self._views_lock:
            found = self._views.get(lang)
            if found is None:
                found = copy.copy(self)
                found.decoder = self._view_decoders[lang]
                found.logit_ids = self.target_vocab.ids[lang]
                found.n_logits = len(found.logit_ids)
                found.target_vocab, found._views, found._view_decoders = None, {}, {}
                found._bound_local = threading.local()
                self._views[lang] = found
            return found

    def tokens_of(self, columns: np.ndarray) -> np.ndarray:
        """The piece ids of logit columns."""
        return columns if self.logit_ids is None else self.logit_ids[columns]

    def _target_groups(self, sources: Sequence[Sequence[int]]) -> dict[str | None, list[int]]:
        """The indices of `sources` by the target language whose vocabulary decodes them."""
        groups: dict[str | None, list[int]] = {}
        for i, s in enumerate(sources):
            groups.setdefault(self.target_of(s), []).append(i)
        return groups

    def _by_target(self, sources: Sequence[Sequence[int]], decode: Callable[[Translator, list], list]) -> list:
        """`decode(view, part)` for each target language's part of `sources`, in their order."""
        groups = self._target_groups(sources)
        if len(groups) <= 1:
            return decode(self.view(next(iter(groups), None)), list(sources))
        out: list = [None] * len(sources)
        for lang, idx in groups.items():
            for i, result in zip(idx, decode(self.view(lang), [sources[i] for i in idx])):
                out[i] = result
        return out

    def generate(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        """Greedy decoding of a batch of source id lists (each ending in </s>)."""
        return self._by_target(sources, lambda engine, part: engine._generate(part))

    def _generate(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        b = len(sources)
        src, limits = self.padded(sources)
        steps = int(limits.max())
        decode = self._decode_bound if self.io_binding else self._decode
        out, out_len = decode(src, limits, steps)
        if self.on_tokens:
            self.on_tokens(int(out_len.sum()))
        return [out[i, : out_len[i]].tolist() for i in range(b)]

    def _greedy_scored(self, sources: Sequence[Sequence[int]]) -> list[list[Hypothesis]]:
        b = len(sources)
        src, limits = self.padded(sources)
        scores = np.zeros(b, dtype=np.float64)
        out, out_len = self._decode(src, limits, int(limits.max()), scores)
        if self.on_tokens:
            self.on_tokens(int(out_len.sum()))
        # a row that ended with </s> scored it too; one cut at its limit did not
        n = out_len + (out_len < limits)
        return [[Hypothesis(out[i, : out_len[i]].tolist(), float(scores[i]), int(n[i]))] for i in range(b)]

    def padded(self, sources: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The sources as one padded (B, S) array, and each one's output-length limit."""
        lengths = np.array([len(s) for s in sources])
        src = np.full((len(sources), lengths.max()), self.pad, dtype=np.int64)
        for i, s in enumerate(sources):
            src[i, : len(s)] = s
        return src, output_limits(lengths, self.max_len, self.ratio, self.extra)

    def output_limit(self, n_tokens: int) -> int:
        """The output-length limit of a source of `n_tokens` tokens (</s> included; cut to the
        model's length as `encode` cuts it)."""
        return int(output_limits(np.array([min(n_tokens, self.max_len)]), self.max_len, self.ratio, self.extra)[0])

    def start(self, src: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]:
        """The decoder's inputs before the first step: the encoder's keys/values, the source
        mask and empty caches; `step` keeps it up to date. Contract 3: caches `width` slots wide
        (default: the output limit of the longest source, which no row's output exceeds) and
        every row's position (0)."""
        cross = self.encoder.run(self.encoder_outputs, {graph_io.SRC_IDS: src})
        state = dict(zip(self.encoder_outputs, cross))
        state[graph_io.SRC_MASK] = src != self.pad
        b = src.shape[0]
        if self.static:
            width = self.output_limit(src.shape[1]) if width is None else width
            for name in self.cache_names:
                state[name] = np.zeros((b, self.n_heads, width, self.d_head), dtype=np.float32)
            state[graph_io.POSITION] = np.zeros(b, dtype=np.int64)
            return state
        empty = np.zeros((b, self.n_heads, 0, self.d_head), dtype=np.float32)
        state.update(dict.fromkeys(self.cache_names, empty))
        return state

    def step(self, state: dict[str, np.ndarray], tokens: np.ndarray, extra: Sequence[str] = ()) -> Any:
        """One decoding step for `tokens` (B, 1): returns the logits (B, V) and moves the
        caches in `state` on by one position. Every row is at the cache's length and owns every
        slot (a batch that started together); runtime/continuous.py feeds its own. `extra`: as
        `run_step`."""
        result = self.run_step(state, self._step_feeds(state, tokens), extra)
        if self.static:
            state[graph_io.POSITION] = state[graph_io.POSITION] + 1
        return result

    def _step_feeds(self, state: dict[str, np.ndarray], tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for `tokens` (B, 1), every row at the cache's length (contract
        3: at the state's positions)."""
        feeds = {graph_io.INPUT_IDS: tokens, **state}
        if self.per_row and not self.static:
            b, past_len = tokens.shape[0], state[self.cache_names[0]].shape[2]
            feeds[graph_io.POSITION] = np.full(b, past_len, dtype=np.int64)
            feeds[graph_io.SELF_MASK] = np.ones((b, past_len + 1), dtype=bool)
        return feeds

    def run_step(self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> Any:
        """The decoder on `feeds`; the new caches go into `state`; returns the logits (and the
        `extra` outputs after them, when asked: a list). Contract 3, bound: every cache of
        `feeds` is written in place, so `state` must hold the same arrays; and when the feeds
        are the same arrays as the last call's with this `state` (a running batch between joins
        and leaves; one binding per running batch, a few batches kept per thread), that call's
        binding is used again (no array bound anew: `_bound_step`), its logits buffer too: read
        the logits before the next call."""
        if self.static and self.bind_static:
            arrays = {k: v for k, v in feeds.items() if k != graph_io.INPUT_IDS}
            if extra or not all(v.flags.c_contiguous for v in arrays.values()):
                return self._bound_step(arrays, advance=False, extra=extra)(feeds[graph_io.INPUT_IDS])
            # One binding per running batch (its `state` dict), replaced when the batch's arrays are
            # (it grew, widened, compacted): kept beside, the old bindings held the old arrays, up
            # to 4 sets of caches (session 14: RSS 474 MB after 40 s of the poisson mix, 295 with
            # one binding kept). The binding holds the arrays it reads: no id in its key is reused
            # while it is kept.
            key = tuple((k, id(v)) for k, v in arrays.items())
            cache = self._bound_local.__dict__.setdefault("bindings", OrderedDict())
            held = cache.get(id(state))
            if held is None or held[0] != key:
                held = cache[id(state)] = (key, self._bound_step(arrays, advance=False))
                while len(cache) > BINDINGS_KEPT:
                    cache.popitem(last=False)
            cache.move_to_end(id(state))
            return held[1](feeds[graph_io.INPUT_IDS])
        logits, *rest = self.decoder.run([graph_io.LOGITS, *extra, *self.present_outputs], feeds)
        state.update(zip(self.cache_names, rest[len(extra) :]))
        return [logits, *rest[: len(extra)]] if extra else logits

    def _decode(self, src: np.ndarray, limits: np.ndarray, steps: int, scores: np.ndarray | None = None):
        """Greedy loop; with `scores` (B,), adds each row's chosen tokens' log-probabilities to
        it (</s> included)."""
        b = src.shape[0]
        state = self.start(src, width=steps)
        out = np.full((b, steps), self.pad, dtype=np.int64)
        out_len = np.zeros(b, dtype=np.int64)
        alive = np.arange(b)  # each batch row's original row; -1: finished, still in the batch
        row_limits = limits.copy()
        tokens = np.full((b, 1), self.bos, dtype=np.int64)
        bound = self.static and self.bind_static
        run = self._bound_step(state) if bound else None
        for step in range(steps):
            logits = run(tokens) if run else self.step(state, tokens)
            best = logits.argmax(-1)
            next_ids = self.tokens_of(best)
            live = alive >= 0
            if scores is not None:
                rows = np.nonzero(live)[0]
                chosen = logits[rows, best[rows]].astype(np.float64)
                scores[alive[rows]] += chosen - logsumexp(logits[rows].astype(np.float64))
            ended = next_ids == self.eos
            write = live & ~ended
            out[alive[write], step] = next_ids[write]
            out_len[alive[write]] = step + 1
            alive = np.where(live & (ended | (step + 1 >= row_limits)), -1, alive)
            dead = alive < 0
            if dead.all():
                break
            # Finished rows leave when they come to a quarter of the batch: until then they
            # compute (a row costs a few percent of a step) instead of a copy of the state at
            # every row's end. Rows are independent: what a finished row decodes changes no other.
            if 4 * int(dead.sum()) >= len(alive):
                keep = ~dead
                alive, next_ids, row_limits = alive[keep], next_ids[keep], row_limits[keep]
                state = {name: self._keep_rows(name, value, keep, step + 1) for name, value in state.items()}
                run = self._bound_step(state) if bound else None
            tokens = next_ids[:, None]
        return out, out_len

    def _bound_step(
        self, state: dict[str, np.ndarray], advance: bool = True, extra: Sequence[str] = ()
    ) -> Callable[[np.ndarray], Any]:
        """Contract 3: `step` for `state` (its caches, cross keys/values, source mask and
        positions) with every array bound to the decoder once, not at every step: the token ids
        are copied into a bound buffer, the logits come back in one (the same buffer each call;
        with `extra`, a list of the logits and those outputs), the caches are written in place
        and, with `advance`, the positions advanced in place. Valid while `state` holds the same
        arrays, written in place only (the greedy loop makes a new state when rows leave;
        `run_step` keeps one per running batch). Inputs that are not C-contiguous are bound as
        contiguous copies (caches must be: they are written in place). At batch 1, binding 20
        arrays a step was a fifth of the step (BENCHMARKS.md section 9)."""
        b = state[graph_io.POSITION].shape[0]
        bind = self.decoder.io_binding()
        ids = np.empty((b, 1), dtype=np.int64)
        logits = np.empty((b, self.n_logits), dtype=np.float32)
        position = state[graph_io.POSITION]
        held = [ort.OrtValue.ortvalue_from_numpy(logits)]  # the OrtValues share the arrays' memory
        bind.bind_ortvalue_output(graph_io.LOGITS, held[0])
        for name in extra:
            bind.bind_output(name, "cpu")
        caches = dict(zip(self.cache_names, self.present_outputs))
        for name, value in {graph_io.INPUT_IDS: ids, **state}.items():
            held.append(ort.OrtValue.ortvalue_from_numpy(value if name in caches else np.ascontiguousarray(value)))
            bind.bind_ortvalue_input(name, held[-1])
            if name in caches:
                bind.bind_ortvalue_output(caches[name], held[-1])

        def run(tokens: np.ndarray, _held: list = held) -> Any:  # the OrtValues live with it
            ids[:] = tokens
            self.decoder.run_with_iobinding(bind)
            if advance:
                np.add(position, 1, out=position)
            if not extra:
                return logits
            return [logits, *(v.numpy() for v in bind.get_outputs()[1 : 1 + len(extra)])]

        return run

    def _keep_rows(self, name: str, value: np.ndarray, keep: np.ndarray, filled: int) -> np.ndarray:
        """State entry `name` for the rows `keep` only. A fixed-width cache (contract 3): only
        its `filled` slots are copied (no row reads past its own position)."""
        if not (self.static and name in self.cache_names):
            return value[keep]
        return _filled_rows(value, keep, filled, np.empty((int(keep.sum()), *value.shape[1:]), dtype=value.dtype))

    def _decode_bound(self, src: np.ndarray, limits: np.ndarray, steps: int):
        """The same loop with every cache kept as an OrtValue on the session's device (the
        state and step of beam search's bound path); only the token ids go in and the logits
        come out. Finished rows stay in the batch (slicing a device tensor would need a copy)
        and their outputs are ignored."""
        b = src.shape[0]
        state = self._start_bound(src)
        out = np.full((b, steps), self.pad, dtype=np.int64)
        out_len = np.zeros(b, dtype=np.int64)
        done = np.zeros(b, dtype=bool)
        tokens = np.full((b, 1), self.bos, dtype=np.int64)
        for step in range(steps):
            next_ids = self.tokens_of(self._step_bound(state, tokens).numpy().argmax(-1))
            active = ~done & (next_ids != self.eos)
            out[active, step] = next_ids[active]
            out_len[active] = step + 1
            done |= (next_ids == self.eos) | (step + 1 >= limits)
            if done.all():
                break
            tokens = next_ids[:, None]
        return out, out_len


def cross_attention_weights(query: np.ndarray, keys: np.ndarray, src_mask: np.ndarray) -> np.ndarray:
    """softmax(q K^T / sqrt(H)) over each row's real source tokens, averaged over the N heads:
    `query` (B, D) is one step's cross-attention query of a layer (the decoder's `align_query`
    output), `keys` (B, N, S, H) that layer's `cross_k`, `src_mask` (B, S) the real tokens.
    Returns (B, S); what the graphs before session 11 computed at every step."""
    b, n, _, h = keys.shape
    scores = np.matmul(keys, query.reshape(b, n, h, 1).astype(np.float32))[..., 0] / np.sqrt(h)  # (B, N, S)
    scores = np.where(src_mask[:, None, :], scores, -np.inf)
    return np.exp(log_softmax(scores)).mean(axis=1)


def _moved_rows(value: np.ndarray, rows: np.ndarray, filled: int | None, moved: np.ndarray) -> np.ndarray:
    """`value`'s rows in the order `rows` (len(rows) <= len(value)), in place: the first
    len(rows) rows of the same array. Only the rows `moved` (those whose source differs) are
    written (read first, so that no row is overwritten before it is read); of a fixed-width
    cache (B, N, C, H), with `filled`, only the first `filled` slots (contract 3: no row reads
    past its position)."""
    n = len(rows)
    if len(moved):
        if filled is None:
            value[moved] = value[rows[moved]]
        else:
            value[moved, :, :filled] = value[rows[moved], :, :filled]
    return value if n == len(value) else value[:n]


def _filled_rows(value: np.ndarray, rows: np.ndarray, filled: int, out: np.ndarray) -> np.ndarray:
    """`value`'s rows `rows` (indices or a mask) into `out`: of a fixed-width cache (B, N, C, H),
    only the first `filled` slots, the ones a row may read (contract 3); the rest of `out` is
    left as it was."""
    out[:, :, :filled] = value[rows, :, :filled]
    return out


def _pieces(sp: Any, text: str) -> list[tuple[int, int, int]]:
    """`text`'s pieces as (id, start, end), the span in characters of `text` (sentencepiece
    gives UTF-8 byte offsets)."""
    proto = sp.encode(text, out_type="proto")
    chars = [k for k, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))] + [len(text)]
    return [(p.id, chars[p.begin], chars[p.end]) for p in proto.pieces]
