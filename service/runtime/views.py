"""A translator's views: the same translator decoding with another decoder session.

A translator (runtime/translator.py) decodes each sentence through the view that its target
language and its request choose (`Translator.view`):

* a target-language view (runtime/vocab.py): a decoder session of the same graph whose output
  projection is cut to the language's pieces; column j of its logits is piece `logit_ids[j]`;
* a shortlisted view (runtime/shortlist.py), where the bundle's lexical shortlist is loaded and
  the request does not turn it off: the decoder without the output projection (its output is
  `hidden`, the projection's uint8 input), one session for every target language; the
  projection is computed on the host per batch, on the union of the batch's rows' lists, which
  the tables cut to the language's vocabulary. Its `shortlist` is set (None in every other
  engine), and it has no device-resident step runner.

A view is a shallow copy of its translator (a shortlisted view: of the target-language view,
or of the translator) with its own decoder session and step runners; it shares the encoder,
the tokenizer and the settings as they are at its first use, and has no views of its own
(`view` gives itself). Views are built on first use, once per (language, shortlist) and shared
by every thread; every session they decode with is opened (and checked) at the translator's
load (`Views.open`): one opened at a language's first sentence would read its graph from disk
then, and a file replaced or truncated since, or a process out of file descriptors, would fail
that sentence in a decode worker instead of refusing the bundle at load.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.runtime import graph_io
from service.runtime.sessions import create_session
from service.runtime.shortlist import PROJECTION, Shortlist, check_hidden, load_shortlist
from service.runtime.steps import DecoderGraph

if TYPE_CHECKING:
    from service.runtime.translator import Translator

Hidden = tuple[Shortlist, Any]  # a shortlist's tables and its projection-less decoder's session


@dataclass(eq=False)
class Views:
    """The sessions a translator's views decode with, and the views built so far (a view's own
    `Views` holds only `hidden`, for its `has_shortlist`)."""

    decoders: dict[str, Any]  # target language -> its decoder session (the projection cut)
    hidden: Hidden | None  # the bundle's shortlist where it is loaded
    made: dict[tuple[str | None, bool], Translator] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, t: Translator, providers: list[str], threads: int, shortlist: bool) -> Views:
        """The sessions of `t`'s views: the shortlist's (only where `shortlist`, on the CPU, and
        the bundle has one for `t`'s variant), then every target language's decoder."""
        hidden = load_hidden(t, providers, threads) if shortlist and t.device == "cpu" else None
        vocab = t.target_vocab
        decoders = (
            {lang: t.session("decoder", providers, threads, vocab.initializers(lang)) for lang in vocab.ids}
            if vocab
            else {}
        )
        return cls(decoders, hidden)

    def get(self, t: Translator, lang: str | None, shortlist: bool | None) -> Translator:
        """`t.view(lang, shortlist)` (`t`: the translator these views are of, or one of them)."""
        use = self.hidden is not None and shortlist is not False
        if t.target_vocab is None:
            lang = None
        if (lang is None and not use) or not t._root:  # a view decodes as it is
            return t
        key = (lang, use)
        with self.lock:
            found = self.made.get(key)
        if found is not None:
            return found
        plain = t.view(lang, shortlist=False) if use else t
        with self.lock:
            found = self.made.get(key)
            if found is None:
                found = self.made[key] = self._make(t, plain, lang, use)
            return found

    def _make(self, t: Translator, plain: Translator, lang: str | None, use: bool) -> Translator:
        """A new view: `plain` (`t` or its view of `lang`) decoding with the shortlist where
        `use`, else `lang`'s decoder."""
        found = copy.copy(plain)
        if use and self.hidden is not None:
            found.shortlist, found.decoder = self.hidden
            found.logit_ids, found.n_logits = None, t.manifest.model["d_model"]
            found.step_output, found.step_output_dtype = graph_io.HIDDEN, np.uint8
        else:
            assert lang is not None and t.target_vocab is not None
            found.decoder = self.decoders[lang]
            found.logit_ids = t.target_vocab.ids[lang]
            found.n_logits = len(found.logit_ids)
        found.target_vocab, found._views, found._root = None, Views({}, self.hidden), False
        found.device_steps = None if use else found.device_steps
        found._choose_steps(DecoderGraph.of(found))
        return found


def load_hidden(t: Translator, providers: list[str], threads: int) -> Hidden | None:
    """The bundle's shortlist for `t`'s variant (cut to its target vocabularies where it has
    them) and its projection-less decoder's session, checked against the spec; the projection's
    session on the CPU. None where the bundle has none for the variant."""
    vocab = t.target_vocab
    found = load_shortlist(t.bundle_dir, t.manifest, t.variant, t.text.source.piece_to_id, vocab.ids if vocab else None)
    if found is None:
        return None
    tables, spec = found
    path = t.bundle_dir / spec.file
    session = create_session(path, providers, threads, t.memory_arena)
    check_hidden(session, spec, str(path))
    tables.projection.session = create_session(PROJECTION, ["CPUExecutionProvider"], threads, t.memory_arena)
    return tables, session


def forced(t: Translator) -> Translator:
    """The engine of `t`'s forced decoding (alignment), which reads no logits: its shortlisted
    view where the bundle's shortlist is loaded and the decoder has the alignment output (the
    same cross-attention, every other output the same bits), else `t`."""
    return t.view(None, shortlist=True) if t.has_shortlist and t.aligns else t
