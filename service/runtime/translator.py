"""Translation in numpy around an encoder and a KV-cache decoder graph (onnxruntime).

Encoder graph:  src_ids (B, S) int64 -> cross_k.{i}, cross_v.{i} (B, H, S, Dh) for each layer i
Decoder graph:  input_ids (B, 1) int64, position (B,) int64, src_mask (B, S) bool, self_mask
                (B, T+1) bool, past_k.{i}, past_v.{i} (B, H, T, Dh), cross_k.{i}, cross_v.{i}
                -> logits (B, V), present_k.{i}, present_v.{i} (B, H, T+1, Dh)
                (graph_io: contract 3 has fixed-width caches and no self_mask)

Every decoder input is batch-first, so the decoding state is one dict of arrays. The parts are
chosen once, when the translator (or a view of it: runtime/views.py) is built: step runners
(runtime/steps.py) and greedy decoding and beam search as functions of them (runtime/search.py).
A sentence is decoded by the view its target language (runtime/vocab.py) and the lexical
shortlist (runtime/shortlist.py) choose.
`translate_batch` is the one text-level entry point; `translate`, `translate_nbest(_steps)`,
`generate` and `generate_nbest` are its older spellings, kept for their callers. Decoders
without per-row positions (graph contract 1) are refused at load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime import alignment, graph_io, loop_guard, views
from service.runtime.beam import Hypothesis, Steps, drain
from service.runtime.bundle import BundleError, Manifest
from service.runtime.codec import Codec
from service.runtime.engine import TranslateOptions, Translation
from service.runtime.preprocess import DECODING, output_limits
from service.runtime.search import greedy_hypotheses, search
from service.runtime.sessions import BundleEngine, create_session
from service.runtime.shortlist import Shortlist
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
        self.loop_guard = loop_guard.DEFAULT  # shared with the views (runtime/views.py)
        # What the decoder gives (a view's may differ: runtime/views.py): column j of the logits
        # is piece `logit_ids[j]` (None: every piece, in order).
        self.logit_ids: np.ndarray | None = None
        self.n_logits = manifest.vocab_size
        self.step_output: str = graph_io.LOGITS
        self.step_output_dtype: Any = np.float32
        self.shortlist: Shortlist | None = None  # set in a shortlisted view
        self.target_vocab = load_target_vocab(bundle_dir, manifest, self.variant) if target_vocab else None
        self._tag_langs = tag_languages(manifest, self.text.source.piece_to_id) if manifest.target_tags else {}
        self._root = True  # a view: False
        # every view's sessions, opened at load (`shortlist` False: the shortlist is not loaded)
        self._views = views.Views.open(self, providers, threads, shortlist)
        graph = DecoderGraph.of(self)
        self.device_steps = (
            DeviceStep(graph, self.device, providers, threads, memory_arena, BEAM_TOPK) if self.io_binding else None
        )
        self._choose_steps(graph)

    @property
    def has_shortlist(self) -> bool:
        """Whether the bundle's lexical shortlist is loaded (then sentences are decoded with it
        unless a request turns it off)."""
        return self._views.hidden is not None

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
        """The engine of forced decoding (views.forced)."""
        return views.forced(self)

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
        # a shortlisted view (no device steps) computes the projection here, on the batch's columns
        columns = self.shortlist.columns(sources) if self.shortlist is not None else None
        if options.beam_size > 1:  # on the device where the caches stay there
            runner = self.device_steps or self.steps
            beam = (options.beam_size, options.n_best, options.length_penalty)
            hyps = yield from search(runner, src, limits, *beam, self.topk, guard, columns)
            tokens = sum(h[0].length for h in hyps if h)
        else:  # scores are summed by the host loop
            runner = self.steps if options.return_scores else self.device_steps or self.steps
            hyps = greedy_hypotheses(runner, src, limits, options.return_scores, guard, columns)
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
        """This translator decoding into `lang`'s vocabulary only (None: the full vocabulary) and,
        unless `shortlist` is False, with the bundle's lexical shortlist where it is loaded; a
        view decodes as it is (runtime/views.py)."""
        return self._views.get(self, lang, shortlist)

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
