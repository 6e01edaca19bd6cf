"""The codec of imported models: two SentencePiece models, vocabularies whose ids are not the
SentencePiece ids, the source's specials (runtime/codec.py)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import sentencepiece as spm

from service.runtime.bundle import BundleError, Manifest, parse_manifest
from service.runtime.codec import Codec, CodecSpec

WORDS = "house garden tree river mountain window door table chair book light water fire stone road city".split()


def _spm(path: Path, lines: list[str], byte_fallback: bool = False) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=330 if byte_fallback else 60,
        model_type="unigram",
        hard_vocab_limit=False,
        byte_fallback=byte_fallback,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


def _manifest(codec: dict, specials: dict[str, int], max_len: int = 16) -> Manifest:
    return Manifest(
        name="m",
        task="translation",
        version="1",
        tokenizer="spm.model",
        special_ids=specials,
        vocab_size=0,
        max_len=max_len,
        model={},
        variants={},
        default_variant="fp32",
        files={},
        source_lang="de",
        target_lang="en",
        codec=codec,
    )


@pytest.fixture
def imported(tmp_path: Path):
    lines = [" ".join(WORDS[i : i + 5]) for i in range(len(WORDS) - 5)] * 20
    src = _spm(tmp_path / "spm.model", lines)
    tgt = _spm(tmp_path / "target.model", [line.upper() for line in lines] + ["é ü ß"] * 5, byte_fallback=True)
    # Marian-like: one vocabulary for both sides, </s> 0, <unk> 1, then the pieces of both models,
    # the padding (= the decoder's start) last.
    pieces = ["</s>", "<unk>"]
    for sp in (src, tgt):
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())) if p not in pieces]
    pieces.remove("<s>")
    pieces.append("<pad>")
    (tmp_path / "vocab.json").write_text(json.dumps(pieces), encoding="utf-8")
    spec = CodecSpec(
        target_spm="target.model", source_vocabulary="vocab.json", target_vocabulary="vocab.json", add_source_eos=True
    )
    specials = {"pad": len(pieces) - 1, "unk": 1, "bos": len(pieces) - 1, "eos": 0}
    return tmp_path, pieces, src, tgt, spec, specials


def test_mapped_source_ids_and_specials(imported) -> None:
    bundle, pieces, src, _, spec, specials = imported
    codec = Codec(bundle, _manifest(spec.to_dict(), specials), src)
    [ids] = codec.encode(["house garden tree"])
    expected = [pieces.index(p) for p in src.encode("house garden tree", out_type=str)]
    assert ids == expected + [0]  # the vocabulary's ids, then </s> (id 0 here, not SentencePiece's)
    assert codec.n_tokens("house garden tree") == len(ids)
    [unknown] = codec.encode(["Zebra"])  # pieces the vocabulary lacks become its <unk>
    assert 1 in unknown[:-1]
    # add_source_bos puts the vocabulary's <s> first; without </s> the source is its pieces only
    pieces_with_bos = ["<s>", *pieces]
    (bundle / "bos.json").write_text(json.dumps(pieces_with_bos), encoding="utf-8")
    both = replace(spec, source_vocabulary="bos.json", add_source_bos=True, add_source_eos=False)
    [ids] = Codec(bundle, _manifest(both.to_dict(), specials), src).encode(["house"])
    assert ids[0] == 0 and ids[1:] == [pieces_with_bos.index(p) for p in src.encode("house", out_type=str)]


def test_cut_keeps_the_specials(imported) -> None:
    bundle, _, src, _, spec, specials = imported
    codec = Codec(bundle, _manifest(spec.to_dict(), specials, max_len=4), src)
    [ids] = codec.encode([" ".join(WORDS)])
    assert len(ids) == 4 and ids[-1] == 0


def test_decode_through_the_target_model(imported) -> None:
    bundle, pieces, src, tgt, spec, specials = imported
    codec = Codec(bundle, _manifest(spec.to_dict(), specials), src)
    text = "HOUSE GARDEN"
    row = [pieces.index(p) for p in tgt.encode(text, out_type=str)]
    assert codec.decode([row]) == [text]
    assert codec.decode_one([specials["bos"], *row, 0]) == text  # start, padding and end are not text
    assert codec.target.pieces(text)[0][0] == row[0]  # alignment's target pieces are the model's ids


def test_byte_pieces_repaired_through_the_vocabulary(imported) -> None:
    bundle, pieces, src, tgt, spec, specials = imported
    codec = Codec(bundle, _manifest(spec.to_dict(), specials), src)
    lead, cont = pieces.index("<0xC3>"), pieces.index("<0xA9>")  # é = C3 A9
    house = pieces.index(tgt.encode("HOUSE", out_type=str)[0])
    assert codec.decode_one([house, lead, cont]).endswith("é")
    assert "\ufffd" not in codec.decode_one([house, lead])  # half a character is dropped, not made up


def test_our_bundles_read_as_before(tmp_path: Path) -> None:
    sp = _spm(tmp_path / "spm.model", [" ".join(WORDS)] * 50)
    codec = Codec(tmp_path, _manifest({}, {"pad": 0, "unk": 1, "bos": 2, "eos": 3}), sp)
    assert codec.encode(["house tree"]) == [sp.encode("house tree") + [3]]
    assert codec.decode([sp.encode("house tree")]) == ["house tree"]


def test_manifest_codec_checked() -> None:
    raw = json.loads(_manifest({}, {"pad": 0, "unk": 1, "bos": 2, "eos": 3}).to_json())
    graph = {"file": "g.onnx", "inputs": [], "outputs": []}
    raw |= {"variants": {"fp32": {"encoder": graph, "decoder": graph}}, "files": {"spm.model": "x", "g.onnx": "x"}}
    parse_manifest(raw)
    with pytest.raises(BundleError, match="codec: unknown codec keys"):
        parse_manifest({**raw, "codec": {"sourcespm": "spm.model"}})
    with pytest.raises(BundleError, match="codec file 'vocab.json' has no checksum"):
        parse_manifest({**raw, "codec": {"source_vocabulary": "vocab.json"}})
