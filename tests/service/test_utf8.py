"""Byte-fallback pieces never decode to U+FFFD (service/runtime/utf8.py)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from service.runtime.utf8 import ByteRepair

SPM = Path(__file__).resolve().parents[2] / "model" / "multi" / "spm.model"


def test_broken_byte_sequences_are_dropped_whole_ones_kept():
    sp = spm.SentencePieceProcessor(model_file=str(SPM))
    fix = ByteRepair(sp)
    b = {v: i for i, v in fix.value.items()}
    hello = sp.encode("Hallo")
    rare = "\U0001f600"  # no piece of its own: spelled as 4 byte pieces
    whole = [b[x] for x in rare.encode("utf-8")]
    assert sp.decode(hello + whole) == "Hallo" + rare
    assert fix.decode([hello + whole]) == ["Hallo" + rare]
    lead_only = hello + [b[0xE5]] + hello  # a 3-byte lead byte and no continuation
    assert "\ufffd" in sp.decode(lead_only)  # what SentencePiece alone gives
    assert fix.decode([lead_only]) == [sp.decode(hello + hello)]
    stray = [b[0xAE], b[0xAB]] + whole + [b[0xE5], b[0xAE]]  # continuation bytes, a char, a cut tail
    assert fix.decode([stray]) == [rare]
    assert fix.complete_bytes(hello) == hello


def test_the_shipped_translator_never_outputs_half_characters():
    from service.runtime.bundle import load_manifest, tag_source
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator

    bundle = SPM.parent
    engine = Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), threads=1)
    words = ["Hallo", "Hello", "Hi!", "Good morning", "Thanks a lot", "Bonjour", "Dobrý den", "Guten Morgen"]
    words += [f"The {x} is on the {y}." for x in ("cat", "book", "kettle", "quasar") for y in ("table", "roof")]
    words += ["Zyxt qwomp flarn.", "Ngorongoro", "Ljubljana and Reykjavík", "Grüße aus Köln"]
    outputs = engine.translate([tag_source(w, "zh") for w in words])
    assert all(outputs) and not [o for o in outputs if "\ufffd" in o]
