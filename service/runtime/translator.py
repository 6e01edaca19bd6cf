"""Translation in numpy around an encoder and a KV-cache decoder graph (onnxruntime).

Encoder graph:  src_ids (B, S) int64 -> cross_k.{i}, cross_v.{i} (B, H, S, Dh) for each layer i
Decoder graph:  input_ids (B, 1) int64, position (B,) int64, src_mask (B, S) bool, self_mask
                (B, T+1) bool, past_k.{i}, past_v.{i} (B, H, T, Dh), cross_k.{i}, cross_v.{i}
                -> logits (B, V), present_k.{i}, present_v.{i} (B, H, T+1, Dh)
                (graph_io: contract 3 has fixed-width caches and no self_mask)

Every decoder input is batch-first, so the decoding state is one dict of arrays. The parts are
chosen once, when the translator (or a target language's view of it) is built: step runners
(runtime/steps.py) and greedy decoding and beam search as functions of them (runtime/search.py).
`translate_batch` is the one text-level entry point; `translate`, `translate_nbest(_steps)`,
`generate` and `generate_nbest` are its older spellings, kept for their callers. Decoders
without per-row positions (graph contract 1) are refused at load.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime import alignment, graph_io, loop_guard
from service.runtime.beam import Hypothesis, Steps, drain
from service.runtime.bundle import BundleError, Manifest
from service.runtime.codec import Codec
from service.runtime.engine import TranslateOptions, Translation
from service.runtime.preprocess import DECODING, output_limits
from service.runtime.search import greedy_hypotheses, search
from service.runtime.sessions import BundleEngine, create_session
from service.runtime.shortlist import PROJECTION, Shortlist, check_hidden, load_shortlist
from service.runtime.steps import ROWS_GATHER as ROWS_GATHER  # where callers look for it
from service.runtime.steps import BoundStep, CopyStep, DecoderGraph, DeviceStep
from service.runtime.vocab import load_target_vocab, tag_languages, target_of

BEAM_TOPK = Path(__file__).parent / "graphs" / "beam_topk.onnx"
GREEDY = TranslateOptions()


class Translator(BundleEngine):
    per_row = True  # every decoder served has per-row positions (contract 1 is refused at load)
    loop_guard = loop_guard.SharedGuard()  # in every decoding path (runtime/loop_guard.py); None: off

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
        shortlist: bool = True,
    ) -> None:
        super().__init__(bundle_dir, manifest, variant, memory_arena)
        spec = manifest.graph(self.variant, "decoder")
        if not graph_io.per_row(spec):
            raise BundleError(
                f"{bundle_dir}: the {self.variant} decoder has no per-row positions (graph contract 1), no longer "
                "served: export the bundle again (python -m training export --config CONFIG); python -m training "
                "upgrade --bundle DIR rewrites only the alignment output and does not add them"
            )
        self.text = Codec(bundle_dir, manifest, self.sp)  # text <-> ids (never half a UTF-8 character)
        self.encoder = self.session("encoder", providers, threads)
        self.decoder = self.session("decoder", providers, threads)
        self._topk = create_session(BEAM_TOPK, ["CPUExecutionProvider"], threads, memory_arena)  # beam selection
        self.static = graph_io.static_cache(spec)  # contract 3: fixed-width caches written in place
        self._bind_static = True  # contract 3 bound (BoundStep); off: a copy per step (what calibration records)
        self.aligns = graph_io.has_alignment(spec)
        self.align_layer = graph_io.alignment_layer(spec)
        # On CUDA the caches stay on the device between steps (DeviceStep); on the CPU the
        # greedy loop can drop finished rows from the work instead.
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        ids = manifest.special_ids
        self.pad, self.bos, self.eos = ids["pad"], ids["bos"], ids["eos"]
        m = manifest.model
        self.n_heads, self.d_head = m["n_heads"], m["d_model"] // m["n_heads"]
        # The output-length rule: the manifest's parameters (older bundles: the defaults).
        rule = {**DECODING, **manifest.decoding}
        self.ratio = rule["max_output_ratio"] if max_output_ratio is None else max_output_ratio
        self.extra = rule["max_output_extra"] if max_output_extra is None else max_output_extra
        # Names from the graph contract (the sessions were checked against it at load).
        layers = range(m["n_decoder_layers"])
        self.encoder_outputs = [graph_io.cross(t, i) for i in layers for t in "kv"]
        self.present_outputs = [graph_io.present(t, i) for i in layers for t in "kv"]
        self.cache_names = [graph_io.past(t, i) for i in layers for t in "kv"]
        self.on_tokens: Callable[[int], None] | None = None  # told how many tokens each call made
        self.loop_guard = loop_guard.DEFAULT  # shared with the target-language views
        # Target vocabularies (runtime/vocab.py): a sentence is decoded by its target language's
        # view of this translator, whose decoder computes only that language's logits; column j
        # of the logits is piece `logit_ids[j]` (None: every piece, in order).
        self.logit_ids: np.ndarray | None = None
        self.n_logits = manifest.vocab_size
        self.target_vocab = load_target_vocab(bundle_dir, manifest, self.variant) if target_vocab else None
        self._tag_langs = tag_languages(manifest, self.text.source.piece_to_id) if manifest.target_tags else {}
        self._views: dict[tuple[str | None, bool], Translator] = {}
        self._views_lock = threading.Lock()
        # Lexical shortlists (runtime/shortlist.py): the bundle's tables and its decoder without
        # the output projection (one session for every target language: the projection is
        # computed per batch), on the CPU only; `shortlist` set in a view that decodes with them.
        self.step_output: str = graph_io.LOGITS
        self.step_output_dtype: Any = np.float32
        # (`shortlist` False: not loaded; a request may turn it off where it is)
        self.shortlist: Shortlist | None = None
        self._root, self._plain = True, self  # a view: False, and (shortlisted) the view without it
        self._hidden = self._load_shortlist(providers, threads) if shortlist and self.device == "cpu" else None
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
        graph = DecoderGraph.of(self)
        self.device_steps = (
            DeviceStep(graph, self.device, providers, threads, memory_arena, BEAM_TOPK) if self.io_binding else None
        )
        self._choose_steps(graph)

    def _load_shortlist(self, providers: list[str], threads: int) -> tuple[Shortlist, Any] | None:
        """The bundle's shortlist and its projection-less decoder's session; None without one."""
        vocab = self.target_vocab
        found = load_shortlist(
            self.bundle_dir, self.manifest, self.variant, self.text.source.piece_to_id, vocab.ids if vocab else None
        )
        if found is None:
            return None
        tables, spec = found
        path = self.bundle_dir / spec.file
        session = create_session(path, providers, threads, self.memory_arena)
        check_hidden(session, spec, str(path))
        tables.projection.session = create_session(PROJECTION, ["CPUExecutionProvider"], threads, self.memory_arena)
        return tables, session

    @property
    def has_shortlist(self) -> bool:
        """Whether the bundle's lexical shortlist is loaded (then sentences are decoded with it
        unless a request turns it off)."""
        return self._hidden is not None

    def _choose_steps(self, graph: DecoderGraph) -> None:
        """The step runners for `graph`: `steps` for the loops on the host (and the running
        batches), `device_steps` where the caches stay on the device."""
        self.steps: CopyStep = BoundStep(graph) if self.static and self._bind_static else CopyStep(graph)
        if self.device_steps is not None and self.device_steps.graph is not graph:
            self.device_steps = self.device_steps.for_graph(graph)

    @property
    def bind_static(self) -> bool:
        """Contract 3 run bound (in place); False: each step through `session.run`, a copy of
        every cache (training/export.py records the calibration feeds there)."""
        return self._bind_static

    @bind_static.setter
    def bind_static(self, on: bool) -> None:
        self._bind_static = on
        self._choose_steps(self.steps.graph)

    # -- text level -------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids (ours: pieces + </s>), cut to the model's length (codec.Codec)."""
        return self.text.encode(texts)

    def n_tokens(self, text: str) -> int:
        return self.text.n_tokens(text)

    def translate_batch(self, texts: Sequence[str], options: TranslateOptions = GREEDY) -> list[list[Translation]]:
        """Each sentence's best translations, best first: `options.n_best` of beam search
        (`beam_size` 1: greedy decoding, one); an empty text gives [("", 0.0, 0)]."""
        return drain(self.translate_batch_steps(texts, options))

    def translate_batch_steps(self, texts: Sequence[str], options: TranslateOptions = GREEDY) -> Steps:
        """`translate_batch` as a generator that yields between two decoder steps and returns its
        result: the scheduler advances a beam batch one step per turn beside the running greedy
        batches, instead of holding them for the whole search."""
        out = [[Translation("", 0.0, 0)] for _ in texts]
        idx, sources = self._by_length(texts)
        if idx:
            results = yield from self._search(sources, options)
            decoded = iter(self.text.decode([h.tokens for hyps in results for h in hyps]))  # one call
            for i, hyps in zip(idx, results):
                out[i] = [Translation(next(decoded), h.score, h.length) for h in hyps]
        return out

    def translate(self, texts: Sequence[str]) -> list[str]:
        """Greedy translations (`translate_batch`'s best texts)."""
        return [hyps[0].text for hyps in self.translate_batch(texts)]

    def translate_nbest(
        self, texts: Sequence[str], beam_size: int = 4, n_best: int = 1, length_penalty: float = 1.0
    ) -> list[list[Translation]]:
        """`translate_batch` with scores (each hypothesis a (text, score, length) tuple)."""
        return drain(self.translate_nbest_steps(texts, beam_size, n_best, length_penalty))

    def translate_nbest_steps(
        self, texts: Sequence[str], beam_size: int = 4, n_best: int = 1, length_penalty: float = 1.0
    ) -> Steps:
        """`translate_batch_steps` with scores."""
        return self.translate_batch_steps(texts, TranslateOptions(beam_size, n_best, length_penalty, True))

    def align(self, pairs: Sequence[tuple[str, str]]) -> list[list[tuple[int, int, int, int]]]:
        """Word alignment by forced decoding (runtime/alignment.py)."""
        return alignment.align(self._forced(), pairs)

    def attention(self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> np.ndarray:
        """Cross-attention weights of forced decoding (runtime/alignment.attention)."""
        return alignment.attention(self._forced(), sources, targets)

    def _forced(self) -> Translator:
        """The engine of forced decoding, which reads no logits: the shortlist's decoder without
        the output projection where the bundle has one (the same cross-attention, every other
        output the same bits), else this one."""
        return self.view(None, shortlist=True) if self._hidden is not None and self.aligns else self

    def _by_length(self, texts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """The indices of the non-empty texts, shortest source first, and their source ids."""
        todo = [i for i, t in enumerate(texts) if t.strip()]
        encoded = self.encode([texts[i] for i in todo]) if todo else []
        order = sorted(range(len(todo)), key=lambda k: len(encoded[k]))
        return [todo[k] for k in order], [encoded[k] for k in order]

    # -- id level ---------------------------------------------------------------------------

    def generate(self, sources: Sequence[Sequence[int]]) -> list[list[int]]:
        """Greedy decoding of a batch of source id lists (each ending in </s>)."""
        return [hyps[0].tokens for hyps in drain(self._search(sources, GREEDY))]

    def generate_nbest(
        self, sources: Sequence[Sequence[int]], beam_size: int, n_best: int = 1, length_penalty: float = 1.0
    ) -> list[list[Hypothesis]]:
        """Beam search over a batch of source id lists, n-best per source, scored."""
        return drain(self._search(sources, TranslateOptions(beam_size, n_best, length_penalty, True)))

    def _search(self, sources: Sequence[Sequence[int]], options: TranslateOptions) -> Steps:
        """Hypotheses for source id lists: each target language's part by its view, in turn."""
        out: list = [None] * len(sources)
        for lang, idx in self._target_groups(sources).items():
            found = yield from self.view(lang, options.shortlist)._search_part([sources[i] for i in idx], options)
            for i, result in zip(idx, found):
                out[i] = result
        return out

    def _search_part(self, sources: Sequence[Sequence[int]], options: TranslateOptions) -> Steps:
        src, limits = self.padded(sources)
        guard = self.loop_guard if options.loop_guard else None
        if self.shortlist is not None:  # on the host: the projection is computed here per batch
            columns = self.shortlist.columns(sources)
            if options.beam_size > 1:
                hyps = yield from search(
                    self.steps,
                    src,
                    limits,
                    options.beam_size,
                    options.n_best,
                    options.length_penalty,
                    self.topk,
                    guard,
                    columns,
                )
            else:
                hyps = greedy_hypotheses(self.steps, src, limits, options.return_scores, guard, columns)
            if self.on_tokens:
                self.on_tokens(sum(h[0].length if options.beam_size > 1 else len(h[0].tokens) for h in hyps if h))
            return hyps
        if options.beam_size > 1:  # on the device where the caches stay there
            runner = self.device_steps or self.steps
            hyps = yield from search(
                runner, src, limits, options.beam_size, options.n_best, options.length_penalty, self.topk, guard
            )
            tokens = sum(h[0].length for h in hyps if h)
        else:  # scores are summed by the host loop
            runner = self.steps if options.return_scores else self.device_steps or self.steps
            hyps = greedy_hypotheses(runner, src, limits, options.return_scores, guard)
            tokens = sum(len(h[0].tokens) for h in hyps)
        if self.on_tokens:
            self.on_tokens(tokens)
        return hyps

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

    # -- step level (runtime/continuous.py, forced decoding, parity checks) -------------------

    def start(self, src: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]:
        """The decoder's inputs before the first step (steps.CopyStep.start)."""
        return self.steps.start(src, width)

    def step(self, state: dict[str, np.ndarray], tokens: np.ndarray, extra: Sequence[str] = ()) -> Any:
        """One step of a batch that started together (steps.CopyStep.step)."""
        return self.steps.step(state, tokens, extra)

    def run_step(self, state: dict[str, np.ndarray], feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> Any:
        """The decoder on feeds a running batch built (steps.CopyStep/BoundStep.run_step)."""
        return self.steps.run_step(state, feeds, extra)

    def topk(self, logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's `k` best log-probabilities and token ids (beam.topk_numpy's contract)."""
        values, ids = self._topk.run(None, {"logits": logits, "k": np.array([k], dtype=np.int64)})
        return values, self.tokens_of(ids)

    def tokens_of(self, columns: np.ndarray) -> np.ndarray:
        """The piece ids of logit columns."""
        return columns if self.logit_ids is None else self.logit_ids[columns]

    # -- target vocabularies ----------------------------------------------------------------

    def target_of(self, source: Sequence[int]) -> str | None:
        """The target language whose vocabulary decodes `source` (None: the full vocabulary)."""
        return target_of(self.manifest, self.target_vocab, self._tag_langs, source)

    def view(self, lang: str | None, shortlist: bool | None = None) -> Translator:
        """This translator decoding into `lang`'s vocabulary only: its decoder session of the same
        graph with the projection cut to the language's pieces (opened at load); None: the full
        vocabulary. Unless `shortlist` is False, where the bundle's shortlist is loaded, the
        view decodes each sentence with its lexical shortlist instead (runtime/shortlist.py: the
        decoder without the projection, which is computed per batch; cut to the language's
        vocabulary too). A view shares the encoder, the tokenizer and the settings (as they are
        at its first use)."""
        use = self._hidden is not None and shortlist is not False
        if self.target_vocab is None:
            lang = None
        if (lang is None and not use) or not self._root:  # a view decodes as it is
            return self
        key = (lang, use)
        with self._views_lock:
            found = self._views.get(key)
        if found is not None:
            return found
        plain = self.view(lang, shortlist=False) if use else self
        with self._views_lock:
            found = self._views.get(key)
            if found is None:
                found = copy.copy(plain)
                if use and self._hidden is not None:
                    found.shortlist, found.decoder = self._hidden
                    found.logit_ids, found.n_logits = None, self.manifest.model["d_model"]
                    found.step_output, found.step_output_dtype = graph_io.HIDDEN, np.uint8
                    found._plain = plain
                else:
                    assert lang is not None and self.target_vocab is not None
                    found.decoder = self._view_decoders[lang]
                    found.logit_ids = self.target_vocab.ids[lang]
                    found.n_logits = len(found.logit_ids)
                found.target_vocab, found._views, found._view_decoders, found._root = None, {}, {}, False
                found.device_steps = None if use else found.device_steps
                found._choose_steps(DecoderGraph.of(found))
                self._views[key] = found
            return found

    def batch_engine(self) -> Translator:
        """The engine a running batch of this translator steps (runtime/continuous.DecodeBatch):
        its view with the shortlist where it decodes with one by default, else itself."""
        return self.view(None) if self._root and self.target_vocab is None else self

    def _target_groups(self, sources: Sequence[Sequence[int]]) -> dict[str | None, list[int]]:
        """The indices of `sources` by the target language whose vocabulary decodes them."""
        groups: dict[str | None, list[int]] = {}
        for i, s in enumerate(sources):
            groups.setdefault(self.target_of(s), []).append(i)
        return groups
