"""`python -m training import`: models made by other tools, read by our own code (training/importers).

No network: every model is made here by the format's own library (transformers' MarianMTModel,
ctranslate2's converters and spec API) from SentencePiece models trained on made-up text, then
imported, and our PyTorch model's greedy tokens are compared with that library's. Tests that
need transformers or ctranslate2 skip when it is missing (pip install -e '.[dev]').

The transformer-base-sized measurement (import time and bundle size) runs only with
TRANSERVE_IMPORT_BENCH=1, or as ``python -m tests.training.test_import``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

from training.importers import Refused, run_import
from training.importers.argos import open_package, read_argos
from training.importers.build import finalize, import_model
from training.importers.common import ct2_default_positions
from training.importers.ct2 import read_ct2, read_model_bin
from training.importers.marian import read_marian
from training.transformer import Seq2SeqTransformer, TransformerConfig


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_ct2 = pytest.mark.skipif(not _has("ctranslate2"), reason="needs ctranslate2 (pip install -e '.[dev]')")
needs_hf = pytest.mark.skipif(
    not (_has("transformers") and _has("safetensors")), reason="needs transformers (pip install -e '.[dev]')"
)

# A made-up language pair: each source word has one target word, in the same order.
SRC_WORDS = "zor blik mafu teki runa sel dovo pirak ulm gesta nori vaku lemo trisk abo fenu".split()
TGT_WORDS = "red house cat walks green tree city car drives fast slow big small dog man woman".split()
LIMIT = 40  # tokens both sides may generate in a comparison


def _corpus(n: int, seed: int) -> list[tuple[str, str]]:
    r = random.Random(seed)
    pairs = []
    for _ in range(n):
        idx = [r.randrange(len(SRC_WORDS)) for _ in range(r.randint(2, 7))]
        pairs.append((" ".join(SRC_WORDS[i] for i in idx), " ".join(TGT_WORDS[i] for i in idx)))
    return pairs


PAIRS = _corpus(300, 0)
INPUTS = [s for s, _ in _corpus(10, 1)]


def _train_spm(lines: list[str], path: Path, size: int, **ids) -> spm.SentencePieceProcessor:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=size, minloglevel=2, hard_vocab_limit=False, **ids
    )
    path.write_bytes(buf.getvalue())
    return spm.SentencePieceProcessor(model_file=str(path))


def _agree(a: list[int], b: list[int]) -> bool:
    """Equal, or equal up to the length limit where one side ran into it (transformers forces
    </s> at the last step)."""
    return a == b or (max(len(a), len(b)) >= LIMIT - 1 and a[: LIMIT - 1] == b[: LIMIT - 1])


def _source_ids(imp, sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    index = {p: i for i, p in enumerate(imp.source_vocab)}
    ids = [index.get(p, index[imp.unk_piece]) for p in sp.encode(text, out_type=str)]
    return ([index[imp.bos_piece]] if imp.add_source_bos else []) + ids + ([imp.eos_id] if imp.add_source_eos else [])


def _greedy(model, ids: list[int]) -> list[int]:
    return model.greedy_decode(torch.tensor([ids]), max_output_ratio=0, max_output_extra=LIMIT, loop_guard=None)[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory) -> Path:
    """A tiny Hugging Face Marian model as Opus-MT's are (swish, post-norm, tied embeddings,
    scaled embeddings, static sinusoids, decoding from <pad>, <pad> banned), trained for a few
    seconds on the made-up pair, with a nonzero final_logits_bias; save_pretrained."""
    if not (_has("transformers") and _has("safetensors")):
        pytest.skip("needs transformers (pip install -e '.[dev]')")
    from transformers import MarianConfig, MarianMTModel

    folder = tmp_path_factory.mktemp("hf") / "opus-mt-xx-en"
    folder.mkdir()
    filler = [" ".join(random.Random(i).sample(SRC_WORDS + TGT_WORDS, 6)) + f" w{i % 97}x" for i in range(200)]
    ssp = _train_spm([s for s, _ in PAIRS] + filler, folder / "source.spm", 150)
    tsp = _train_spm([t for _, t in PAIRS] + filler, folder / "target.spm", 150)
    pieces = ["</s>", "<unk>"]
    for sp in (ssp, tsp):
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) not in pieces]
    pieces = [p for p in pieces if p not in ("<s>", "<pad>")] + ["<pad>"]
    pad = len(pieces) - 1
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"source_lang": "xx", "target_lang": "en", "model_max_length": 128}), encoding="utf-8"
    )
    cfg = MarianConfig(
        vocab_size=len(pieces),
        decoder_vocab_size=len(pieces),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    index = {p: i for i, p in enumerate(pieces)}

    def ids(sp, text):
        return [index.get(p, 1) for p in sp.encode(text, out_type=str)] + [0]

    data = [(ids(ssp, s), ids(tsp, t)) for s, t in PAIRS]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(150):
        batch = rng.sample(data, 32)
        src = torch.full((32, max(len(s) for s, _ in batch)), pad)
        tgt = torch.full((32, max(len(t) for _, t in batch)), -100)
        for i, (s, t) in enumerate(batch):
            src[i, : len(s)] = torch.tensor(s)
            tgt[i, : len(t)] = torch.tensor(t)
        loss = model(input_ids=src, attention_mask=src != pad, labels=tgt).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias) * 0.5)
        model.final_logits_bias[0, pad] = 0.0
        # Opus-MT's <pad> row is zero (Marian-NMT has no <pad>; the conversion adds a zero row);
        # transformers' own init here leaves it random
        model.model.shared.weight[pad] = 0.0
    model.generation_config.bad_words_ids = [[pad]]
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours_ckpt(tmp_path_factory) -> tuple[Path, Path, Seq2SeqTransformer]:
    """One of our own models (pre-norm, ReLU, one shared vocabulary: the OpenNMT-py /
    Locomotive layout) with random weights, as a checkpoint beside its SentencePiece model."""
    from training.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("ours")
    lines = [s for s, _ in PAIRS] + [t for _, t in PAIRS]
    sp = _train_spm(lines, folder / "spm.model", 120, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
    cfg = TransformerConfig(
        vocab_size=sp.get_piece_size(), d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2
    )
    torch.manual_seed(1)
    model = Seq2SeqTransformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    save_checkpoint({"model_config": cfg.to_dict(), "model": model.state_dict()}, folder / "ckpt.pt")
    return folder / "ckpt.pt", folder / "spm.model", model


def _argos_zip(path: Path, model_dir: Path, spm_path: Path | None, meta: dict | None = None) -> Path:
    """An .argosmodel: a zip of one folder with metadata.json, sentencepiece.model, model/."""
    meta = meta or {"from_code": "xx", "to_code": "en", "package_version": "1.2", "name": "Made-up to English"}
    top = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/metadata.json", json.dumps(meta))
        zf.writestr(f"{top}/README.md", "# Made-up to English\n\n## License\n\nCC0 (public domain)\n")
        if spm_path is not None:
            zf.write(spm_path, f"{top}/sentencepiece.model")
        for f in sorted(model_dir.iterdir()):
            zf.write(f, f"{top}/model/{f.name}")
    return path


# ----------------------------------------------------------------------------- model.bin reader


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return len(raw).to_bytes(2, "little") + raw


def test_model_bin_older_binary_versions(tmp_path):
    """Versions 1-3 store an item width and an item count instead of a type and a byte size;
    version 1 has no spec name, versions below 3 no aliases."""
    import struct

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    q = np.array([[1, -2], [3, 4]], dtype=np.int8)
    for version in (1, 2, 3):
        data = struct.pack("<I", version)
        if version >= 2:
            data += _string("TransformerBase") + struct.pack("<I", 1)
        data += struct.pack("<I", 2)
        data += _string("a/weight") + struct.pack("<B2IBI", 2, 2, 3, 4, 6) + w.tobytes()
        data += _string("b/weight") + struct.pack("<B2IBI", 2, 2, 2, 1, 4) + q.tobytes()
        if version >= 3:
            data += struct.pack("<I", 1) + _string("c/weight") + _string("a/weight")
        (tmp_path / "model.bin").write_bytes(data)
        mb = read_model_bin(tmp_path / "model.bin")
        assert mb.spec == ("" if version == 1 else "TransformerBase")
        assert np.array_equal(mb.arrays["a/weight"], w) and mb.dtypes["b/weight"] == "int8"
        assert mb.aliases == ({"c/weight": "a/weight"} if version >= 3 else {})
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 7))
    with pytest.raises(Refused, match="binary version 7"):
        read_model_bin(tmp_path / "model.bin")


def test_text_vocabulary_without_final_newline(tmp_path):
    from training.importers.ct2 import read_vocabularies

    (tmp_path / "source_vocabulary.txt").write_text("<unk>\n<s>\n</s>\na\u2028b\n", encoding="utf-8")
    (tmp_path / "target_vocabulary.txt").write_text("<unk>\r\n<s>\r\n</s>\r\nx", encoding="utf-8")
    assert read_vocabularies(tmp_path) == (["<unk>", "<s>", "</s>", "a\u2028b"], ["<unk>", "<s>", "</s>", "x"])


# ----------------------------------------------------------------------------- Marian


@needs_hf
def test_marian_folder_matches_transformers(marian_dir):
    """Our model from the Marian folder: the same logits as MarianMTModel (teacher-forced), and
    greedy tokens equal to generate(num_beams=1) on 10 inputs."""
    from transformers import MarianMTModel

    hf = MarianMTModel.from_pretrained(str(marian_dir)).eval()
    # transformers 5 keeps bad_words_ids out of config.json: generate bans <pad> only when told
    assert hf.generation_config.bad_words_ids == [[hf.config.pad_token_id]]
    model, imp = import_model(read_marian(marian_dir))
    cfg = model.cfg
    assert (cfg.activation, cfg.pre_norm, cfg.positions, cfg.scale_embeddings) == (
        "swish",
        False,
        "sinusoidal-concat",
        True,
    )
    assert cfg.tie_output and cfg.share_embeddings and cfg.output_bias
    assert cfg.bos_id == cfg.pad_id == hf.config.pad_token_id and cfg.eos_id == 0
    sp = spm.SentencePieceProcessor(model_file=str(marian_dir / "source.spm"))
    same, max_diff, outputs = 0, 0.0, []
    for text in INPUTS:
        ids = _source_ids(imp, sp, text)
        ours = _greedy(model, ids)
        with torch.no_grad():
            g = hf.generate(torch.tensor([ids]), num_beams=1, do_sample=False, max_new_tokens=LIMIT)[0].tolist()[1:]
            g = g[: g.index(0)] if 0 in g else g
            tgt = torch.tensor([[cfg.bos_id] + ours])
            a = hf(input_ids=torch.tensor([ids]), decoder_input_ids=tgt).logits[0]
            b = model(torch.tensor([ids]), tgt)[0]
        keep = [i for i in range(a.shape[1]) if i != cfg.pad_id]  # ours: the banned <pad> at -1e4
        max_diff = max(max_diff, float((a[:, keep] - b[:, keep]).abs().max()))
        same += _agree(ours, g)
        outputs.append(ours)
    assert max_diff < 1e-4
    assert same == len(INPUTS)
    assert len({tuple(o) for o in outputs}) > 5  # the trained model's outputs differ by input


@needs_hf
@needs_ct2
@pytest.mark.parametrize("quantization", [None, "int8"])
def test_ct2_marian_as_argos_package(marian_dir, tmp_path, quantization):
    """The same Marian model converted by CTranslate2's own TransformersConverter and wrapped as
    an Argos package: imported, its greedy tokens equal Translator.translate_batch's (float32;
    an int8 model read back dequantized equals ctranslate2 computing in float32, and the share
    of identical outputs against ctranslate2's int8 computation is reported)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    ct2_dir = tmp_path / "ct2"
    TransformersConverter(str(marian_dir)).convert(str(ct2_dir), quantization=quantization)
    package = _argos_zip(tmp_path / "translate-xx_en-1_2.argosmodel", ct2_dir, marian_dir / "source.spm")
    pkg = open_package(package, tmp_path / "unpacked")
    imp = read_argos(pkg)
    assert imp.zero_start and imp.info["license"].startswith("CC0")
    model, done = import_model(imp)
    # CTranslate2 dropped Marian's <pad>; the zero start row we append takes its id back
    assert model.cfg.bos_id == model.cfg.pad_id == len(done.target_vocab) - 1 == 0 + len(imp.target_vocab)
    sp = spm.SentencePieceProcessor(model_file=str(pkg.folder / "sentencepiece.model"))
    tgt_index = {p: i for i, p in enumerate(done.target_vocab)}
    pieces = [sp.encode(t, out_type=str) for t in INPUTS]
    ours = [_greedy(model, _source_ids(done, sp, t)) for t in INPUTS]
    shares = {}
    for compute in ("float32", "int8") if quantization else ("float32",):
        tr = ctranslate2.Translator(str(pkg.folder / "model"), compute_type=compute, intra_threads=1)
        res = tr.translate_batch(pieces, beam_size=1, max_decoding_length=LIMIT, min_decoding_length=0)
        theirs = [[tgt_index[t] for t in r.hypotheses[0]] for r in res]
        shares[compute] = sum(_agree(a, b) for a, b in zip(ours, theirs)) / len(INPUTS)
    print(f"ct2 {quantization or 'float32'} model: identical greedy outputs {shares}")
    assert shares["float32"] == 1.0
    if quantization:
        assert shares["int8"] >= 0.5
    if quantization is None:  # the same weights as the Hugging Face folder's, to the bit
        direct, _ = import_model(read_marian(marian_dir))
        a, b = direct.state_dict(), model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- OpenNMT-py layout


@needs_ct2
@pytest.mark.parametrize("quantization", [None, "int8", "float16", "bfloat16", "int8_bfloat16"])
def test_opennmt_layout_round_trip(ours_ckpt, tmp_path, quantization):
    """A pre-norm ReLU shared-vocabulary model (OpenNMT-py / Locomotive's layout) written by
    benchmarks/ct2_convert.py through CTranslate2's spec API, imported back: the same weights
    (int8: within half a quantization step; float16/bfloat16: their rounding), and ctranslate2's
    greedy tokens (computing in float32 from the same stored values: identical)."""
    import ctranslate2

    from benchmarks.ct2_convert import convert

    ckpt, spm_path, original = ours_ckpt
    out = convert(ckpt, spm_path, tmp_path / "ct2", quantization)
    mb = read_model_bin(out / "model.bin")
    assert (mb.binary_version, mb.spec) == (6, "TransformerSpec")
    assert mb.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    model, imp = import_model(read_ct2(out))
    assert model.cfg.pre_norm and model.cfg.activation == "relu" and model.cfg.share_embeddings
    # the table it wrote is ours, recognised; rounded to 16 bits, it is kept as it is stored
    assert model.cfg.positions == ("sinusoidal" if quantization in (None, "int8") else "table")
    a, b = original.state_dict(), model.state_dict()
    rel = {"float16": 2.0**-11, "bfloat16": 2.0**-8}.get((quantization or "").split("_")[-1], 0.0)
    for name, value in a.items():
        if quantization is None:
            assert torch.equal(value, b[name]), name
        else:  # int8: w = q / scale, scale = 127 / max|row|: within half a step of the original
            step = value.abs().amax(dim=-1, keepdim=True) / 127 if value.dim() == 2 and "int8" in quantization else 0
            assert bool(((value - b[name]).abs() <= step / 2 + value.abs() * rel + 1e-6).all()), name
    imp.source_spm = imp.target_spm = spm_path
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    index = {p: i for i, p in enumerate(imp.target_vocab)}
    ours = [_greedy(model, _source_ids(imp, sp, t)) for t in INPUTS]
    for compute in ("float32", "int8") if quantization == "int8" else ("float32",):
        tr = ctranslate2.Translator(str(out), compute_type=compute, intra_threads=1)
        res = tr.translate_batch(
            [sp.encode(t, out_type=str) for t in INPUTS], beam_size=1, max_decoding_length=LIMIT, min_decoding_length=0
        )
        theirs = [[index[t] for t in r.hypotheses[0]] for r in res]
        share = sum(_agree(x, y) for x, y in zip(ours, theirs)) / len(INPUTS)
        print(f"ct2 {quantization or 'float32'} model, {compute} compute: identical greedy outputs {share}")
        assert share == 1.0 or compute == "int8"


def _spec_from_ours(model: Seq2SeqTransformer, vocab: list[str], **options):
    """A TransformerSpec of our model's weights with CTranslate2's options varied (positions
    left to CTranslate2, post-norm, relative positions, other activations, ...)."""
    from ctranslate2.specs import common_spec, transformer_spec

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.cfg
    default_positions = options.pop("default_positions", False)
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.n_encoder_layers, cfg.n_decoder_layers),
        cfg.n_heads,
        pre_norm=cfg.pre_norm,
        activation=options.pop("activation", common_spec.Activation.RELU),
        **options,
    )

    def lin(dst, *names):
        dst.weight = np.concatenate([sd[f"{n}.weight"] for n in names])
        dst.bias = np.concatenate([sd[f"{n}.bias"] for n in names])

    def norm(dst, name):
        dst.gamma, dst.beta = sd[f"{name}.weight"], sd[f"{name}.bias"]

    emb = sd["embed.embedding.weight"]
    spec.encoder.embeddings[0].weight = emb
    spec.decoder.embeddings.weight = emb
    spec.decoder.projection.weight = emb
    for stack in (spec.encoder, spec.decoder):
        if hasattr(stack, "position_encodings") and not default_positions:
            stack.position_encodings.encodings = sd.get("encoder.pos.pe", model.encoder.pos.pe.numpy())
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.attn_block.norm")
        lin(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        lin(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        if hasattr(layer.self_attention, "relative_position_keys"):
            rel = np.zeros((9, cfg.d_head), np.float32)
            layer.self_attention.relative_position_keys = layer.self_attention.relative_position_values = rel
        norm(layer.ffn.layer_norm, f"{p}.ffn_block.norm")
        lin(layer.ffn.linear_0, f"{p}.ffn.linear1")
        lin(layer.ffn.linear_1, f"{p}.ffn.linear2")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.layers.{i}"
        norm(layer.self_attention.layer_norm, f"{p}.self_block.norm")
        lin(layer.self_attention.linear[0], *(f"{p}.self_attn.{x}_proj" for x in "qkv"))
        lin(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        if hasattr(layer.self_attention, "relative_position_keys"):
            rel = np.zeros((9, cfg.d_head), np.float32)
            layer.self_attention.relative_position_keys = layer.self_attention.relative_position_values = rel
        norm(layer.attention.layer_norm, f"{p}.cross_block.norm")
        lin(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
        lin(layer.attention.linear[1], f"{p}.cross_attn.k_proj", f"{p}.cross_attn.v_proj")
        lin(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
        norm(layer.ffn.layer_norm, f"{p}.ffn_block.norm")
        lin(layer.ffn.linear_0, f"{p}.ffn.linear1")
        lin(layer.ffn.linear_1, f"{p}.ffn.linear2")
    if cfg.pre_norm:
        norm(spec.encoder.layer_norm, "encoder.norm")
        norm(spec.decoder.layer_norm, "decoder.norm")
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.config.add_source_eos = True
    return spec


def _save_spec(spec, folder: Path, quantization: str | None = None) -> Path:
    spec.validate()
    spec.optimize(quantization=quantization)
    folder.mkdir(parents=True)
    spec.save(str(folder))
    return folder


@needs_ct2
def test_ct2_default_positions_and_post_norm(ours_ckpt, tmp_path):
    """A model.bin without position tables (CTranslate2 computes its own sinusoids), post-norm,
    GELU, a layer norm of the embeddings: the log-probabilities of ctranslate2's score_batch."""
    import ctranslate2
    from ctranslate2.specs import common_spec

    _, spm_path, _ = ours_ckpt
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    cfg = TransformerConfig(
        vocab_size=len(vocab), d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=1, pre_norm=False
    )
    torch.manual_seed(2)
    source_model = Seq2SeqTransformer(cfg).eval()
    with torch.no_grad():
        for p in source_model.parameters():
            p.normal_(0, 0.3)
    spec = _spec_from_ours(
        source_model, vocab, default_positions=True, activation=common_spec.Activation.GELU, layernorm_embedding=True
    )
    for stack in (spec.encoder, spec.decoder):  # the embedding norm's weights: a fresh pair
        stack.layernorm_embedding.gamma = np.linspace(0.5, 1.5, cfg.d_model, dtype=np.float32)
        stack.layernorm_embedding.beta = np.linspace(-0.2, 0.2, cfg.d_model, dtype=np.float32)
    folder = _save_spec(spec, tmp_path / "ct2")
    model, imp = import_model(read_ct2(folder))
    assert (model.cfg.positions, model.cfg.pre_norm, model.cfg.activation, model.cfg.embedding_norm) == (
        "table",
        False,
        "gelu",
        True,
    )
    assert np.allclose(model.encoder.pos.pe.numpy(), ct2_default_positions(model.cfg.max_len, 32))
    tr = ctranslate2.Translator(str(folder), compute_type="float32", intra_threads=1)
    for text, target in PAIRS[:5]:
        src = sp.encode(text, out_type=str)
        tgt = sp.encode(target)
        theirs = tr.score_batch([src], [[vocab[i] for i in tgt]])[0].log_probs
        ids = torch.tensor([[vocab.index(p) for p in src] + [imp.eos_id]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, torch.tensor([[imp.bos_id] + tgt]))[0], -1)
        ours = [float(logp[t, tok]) for t, tok in enumerate(tgt + [imp.eos_id])]
        assert np.allclose(ours, theirs, atol=1e-4), (ours, theirs)


# ----------------------------------------------------------------------------- refusals


def _unchanged(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@needs_ct2
@pytest.mark.parametrize(
    "case,message",
    [
        ("relative", "relative position"),
        ("multi_query", "multi-query"),
        ("gelu_sigmoid", "activation GELU with a sigmoid"),
        ("alignment", "trained alignment"),
        ("extra_variable", "cannot map"),
        ("language_model", "model type 'TransformerDecoderSpec'"),
        ("truncated_bin", "corrupt model.bin"),
        ("vocab_size", "wrong size"),
    ],
)
def test_refusals_ct2(ours_ckpt, tmp_path, case, message):
    """Each unsupported or broken CTranslate2 model is refused with a message naming it, and
    --out is left as it was."""
    from ctranslate2.specs import common_spec

    _, spm_path, model = ours_ckpt
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    folder = tmp_path / "ct2"
    if case == "relative":
        _save_spec(_spec_from_ours(model, vocab, with_relative_position=True), folder)
    elif case == "multi_query":
        spec = _spec_from_ours(model, vocab)
        spec.encoder.multi_query_attention = True
        _save_spec(spec, folder)
    elif case == "gelu_sigmoid":
        _save_spec(_spec_from_ours(model, vocab, activation=common_spec.Activation.GELUSigmoid), folder)
    elif case == "alignment":
        _save_spec(_spec_from_ours(model, vocab, alignment_layer=0, alignment_heads=2), folder)
    elif case == "extra_variable":
        spec = _spec_from_ours(model, vocab)
        object.__setattr__(spec.decoder, "mystery", np.ones(3, np.float32))  # a variable we know nothing of
        _save_spec(spec, folder)
    elif case == "language_model":  # the same file under a decoder-only spec's name
        _save_spec(_spec_from_ours(model, vocab), folder)
        data = (folder / "model.bin").read_bytes()
        n = int.from_bytes(data[4:6], "little")
        name = b"TransformerDecoderSpec\0"
        (folder / "model.bin").write_bytes(data[:4] + len(name).to_bytes(2, "little") + name + data[6 + n :])
    elif case == "truncated_bin":
        _save_spec(_spec_from_ours(model, vocab), folder)
        data = (folder / "model.bin").read_bytes()
        (folder / "model.bin").write_bytes(data[: len(data) // 2])
    elif case == "vocab_size":
        _save_spec(_spec_from_ours(model, vocab), folder)
        (folder / "shared_vocabulary.json").write_text(json.dumps(vocab[:-3]))
    out = tmp_path / "bundles" / "refused"
    out.parent.mkdir()
    with pytest.raises(Refused, match=message):
        run_import("ct2", folder, out, source_spm=spm_path, source_lang="xx", target_lang="en", int8=False)
    _unchanged(out)


@needs_ct2
@pytest.mark.parametrize("case,message", [("corrupt_zip", "corrupt .argosmodel"), ("no_spm", "missing tokenizer")])
def test_refusals_argos(ours_ckpt, tmp_path, case, message):
    from benchmarks.ct2_convert import convert

    ckpt, spm_path, _ = ours_ckpt
    ct2_dir = convert(ckpt, spm_path, tmp_path / "ct2")
    package = tmp_path / "translate-xx_en-1_0.argosmodel"
    if case == "corrupt_zip":
        _argos_zip(package, ct2_dir, spm_path)
        data = bytearray(package.read_bytes())
        data[len(data) // 3 : len(data) // 3 + 64] = b"\0" * 64  # damaged in transit
        package.write_bytes(bytes(data))
    else:
        _argos_zip(package, ct2_dir, None)
    out = tmp_path / "bundles" / "refused"
    out.parent.mkdir()
    with pytest.raises(Refused, match=message):
        run_import("argos", package, out, int8=False)
    _unchanged(out)


def test_refusal_ct2_without_tokenizer(tmp_path):
    with pytest.raises(Refused, match="missing tokenizer"):
        run_import("ct2", tmp_path, tmp_path / "out", source_lang="xx", target_lang="en")


def test_refusal_marian_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(Refused, match="model type 'bart'"):
        read_marian(tmp_path)


def test_finalize_appends_start_and_pad_rows():
    """A model without a padding token that starts from a zero embedding (CTranslate2's Marian):
    one zero row, the start and the padding, never generated."""
    from training.importers.common import BANNED_LOGIT, Imported

    d, v = 8, 6
    emb = np.random.default_rng(0).normal(size=(v, d)).astype(np.float32)
    vocab = ["</s>", "<unk>", "a", "b", "c", "d"]
    imp = Imported(
        d_model=d,
        n_heads=2,
        d_ff=16,
        n_encoder_layers=1,
        n_decoder_layers=1,
        pre_norm=True,
        activation="relu",
        layer_norm_eps=1e-5,
        scale_embeddings=True,
        embedding_norm=False,
        positions="sinusoidal",
        encoder_pe=None,
        decoder_pe=None,
        source_embed=emb,
        target_embed=emb,
        output_weight=None,
        output_bias=None,
        weights={},
        source_vocab=vocab,
        target_vocab=vocab,
        bos_id=-1,
        eos_id=0,
        pad_id=None,
        zero_start=True,
    )
    fields, state, done = finalize(imp)
    assert fields["vocab_size"] == v + 1 and fields["bos_id"] == fields["pad_id"] == v
    assert done.target_vocab[-1] == "<pad>" and not state["decoder.embed.embedding.weight"][v].any()
    assert state["output_bias"][v] == BANNED_LOGIT and not state["output_bias"][:v].any()


# ----------------------------------------------------------------------------- bundles


@needs_hf
def test_import_marian_bundle(marian_dir, tmp_path):
    """`python -m training import marian`: a bundle whose engine decodes as our PyTorch model
    (greedy: the same tokens; beam 4 compared with transformers'), a card naming the source,
    the conversion and the variant chosen on the validation text."""
    from service.runtime.bundle import load_manifest
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator
    from training.__main__ import main

    valid = tmp_path / "valid.xx"
    valid.write_text("\n".join(s for s, _ in _corpus(12, 3)) + "\n", encoding="utf-8")
    ref = tmp_path / "valid.en"
    ref.write_text("\n".join(t for _, t in _corpus(12, 3)) + "\n", encoding="utf-8")
    out = tmp_path / "model" / "xx-en"
    argv = ["import", "marian", str(marian_dir), "--out", str(out), "--valid-source", str(valid)]
    assert main(argv + ["--valid-target", str(ref), "--check", "--keep-all-variants"]) == 0
    manifest = load_manifest(out)
    assert (manifest.source_lang, manifest.target_lang) == ("xx", "en")  # from the folder's name
    assert manifest.codec["target_spm"] == "target_spm.model" and manifest.codec["add_source_eos"]
    assert manifest.training["imported"]["check"]["transformers"] == 1.0
    card = (out / "README.md").read_text(encoding="utf-8")
    for words in ("Hugging Face Marian", "opus-mt-xx-en", "parity", manifest.default_variant, "12 sentences"):
        assert words in card
    assert set(manifest.variants) == {"fp32", "int8", "int8-blockwise", "int8-static"}
    chosen = manifest.training["variants"]
    assert chosen["int8"]["batch_invariant"] <= 1.0 and chosen["fp32"]["bleu"] > 0
    print(f"variants on the validation text: {chosen}; served {manifest.default_variant}")
    model, imp = import_model(read_marian(marian_dir))
    engine = Translator(out, manifest, resolve_providers("cpu"), variant="fp32")
    engine.loop_guard = None  # compared with transformers, which has none
    sources = engine.encode(INPUTS)
    sp = spm.SentencePieceProcessor(model_file=str(marian_dir / "source.spm"))
    assert sources == [_source_ids(imp, sp, t) for t in INPUTS]
    assert engine.generate(sources) == [
        model.greedy_decode(torch.tensor([s]), loop_guard=None)[0] for s in sources
    ]  # the service's length rule on both sides
    from transformers import MarianMTModel

    hf = MarianMTModel.from_pretrained(str(marian_dir)).eval()
    beams = engine.generate_nbest(sources, beam_size=4)
    same = 0
    for src, hyps in zip(sources, beams):
        with torch.no_grad():
            g = hf.generate(torch.tensor([src]), num_beams=4, max_new_tokens=LIMIT, length_penalty=1.0)[0].tolist()[1:]
        g = g[: g.index(0)] if 0 in g else g
        same += hyps[0].tokens == g
    print(f"beam 4: engine = transformers on {same}/{len(sources)}")
    assert same >= len(sources) - 2
    assert main(argv) == 2  # no --force: refused, the bundle stays
    assert load_manifest(out).files == manifest.files


@needs_ct2
def test_import_argos_packages_folder(ours_ckpt, tmp_path):
    """A LibreTranslate packages folder (two packages, one broken): one bundle per good package
    under --out, the broken one refused and nothing written for it; the bundle's engine decodes
    as ctranslate2 (greedy)."""
    import ctranslate2

    from benchmarks.ct2_convert import convert
    from service.runtime.bundle import load_manifest
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator

    ckpt, spm_path, _ = ours_ckpt
    ct2_dir = convert(ckpt, spm_path, tmp_path / "ct2", "int8")
    packages = tmp_path / "packages"
    packages.mkdir()
    good = _argos_zip(tmp_path / "translate-xx_en-1_2.argosmodel", ct2_dir, spm_path)
    with zipfile.ZipFile(good) as zf:
        zf.extractall(packages)  # installed packages are unpacked folders
    broken = packages / "translate-en_xx-1_0"
    shutil.copytree(packages / "translate-xx_en-1_2", broken)
    (broken / "sentencepiece.model").unlink()
    (broken / "metadata.json").write_text(json.dumps({"from_code": "en", "to_code": "xx", "package_version": "1.0"}))
    out = tmp_path / "bundles"
    results = run_import("argos", packages, out, int8=False, check=True)
    assert ["refused" in r for r in results] == [True, False]
    assert "missing tokenizer" in results[0]["refused"]
    assert sorted(p.name for p in out.iterdir()) == ["translate-xx_en-1_2"]
    bundle = out / "translate-xx_en-1_2"
    manifest = load_manifest(bundle)
    assert (manifest.source_lang, manifest.target_lang, manifest.data["license"]) == ("xx", "en", "CC0 (public domain)")
    assert results[1]["check"]["ctranslate2_float32"] == 1.0
    print(f"argos int8 package, --check: {results[1]['check']}")
    card = (bundle / "README.md").read_text(encoding="utf-8")
    assert "Made-up to English" in card and "version 1.2" in card and "dequantized" in card
    engine = Translator(bundle, manifest, resolve_providers("cpu"), variant="fp32")
    engine.loop_guard = None  # compared with ctranslate2, which has none
    model, imp = import_model(read_ct2(ct2_dir))
    sources = engine.encode(INPUTS)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    assert sources == [_source_ids(imp, sp, t) for t in INPUTS]
    assert engine.generate(sources) == [model.greedy_decode(torch.tensor([s]), loop_guard=None)[0] for s in sources]
    tr = ctranslate2.Translator(str(ct2_dir), compute_type="float32", intra_threads=1)
    vocab = json.loads((bundle / manifest.codec["target_vocabulary"]).read_text())
    pieces = [sp.encode(t, out_type=str) for t in INPUTS]
    res = tr.translate_batch(pieces, beam_size=1, max_decoding_length=LIMIT, min_decoding_length=0)
    theirs = [[vocab.index(t) for t in r.hypotheses[0]] for r in res]
    assert all(_agree(_greedy(model, s), t) for s, t in zip(sources, theirs))


def test_import_options_from_the_command_line(tmp_path):
    """`python -m training import`'s arguments as ImportOptions: the one set of options that
    run_import, import_one and the command line share."""
    from training.__main__ import build_parser
    from training.importers import ImportOptions

    valid = tmp_path / "valid.xx"
    valid.write_text("zor blik\nmafu\n", encoding="utf-8")
    argv = ["import", "ct2", "m", "--out", "o", "--source-spm", "s.model", "--source-lang", "xx"]
    args = build_parser().parse_args(
        argv + ["--target-lang", "en", "--no-int8", "--max-len", "128", "--valid-source", str(valid)]
    )
    assert ImportOptions.from_args(args) == ImportOptions(
        source_spm=Path("s.model"),
        source_lang="xx",
        target_lang="en",
        valid_source=["zor blik", "mafu"],
        max_len=128,
        int8=False,
    )


# ----------------------------------------------------------------------------- fine-tuning


def _finetune_raw(data: Path, init: Path, **train) -> dict:
    return {
        "name": "xx-en-ft",
        "task": "translation",
        "data": {"dir": str(data), "source_lang": "xx", "target_lang": "en", "license": "made up for the test"},
        "model": {"dropout": 0.1},
        "train": {
            "init_from": str(init),
            "max_tokens": 300,
            "lr": 3e-3,
            "warmup_steps": 10,
            "epochs": 6,
            "patience": 0,
            "threads": 1,
            "amp": "off",
            **train,
        },
    }


def _finetune_config(data: Path, init: Path, **train):
    from training.config import config_from_dict

    return config_from_dict(_finetune_raw(data, init, **train))


def _write_toml(raw: dict, path: Path) -> Path:
    """A config dict of strings and numbers (one level of sections) as a TOML file, for the CLI."""
    top = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, values in raw.items():
        if isinstance(values, dict):
            top += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(top) + "\n", encoding="utf-8")
    return path


@needs_hf
def test_finetune_imported_marian_bundle(marian_dir, tmp_path, capsys):
    """An imported Marian bundle fine-tuned by the training job (train.init_from = its weights.pt)
    on pairs made here (the made-up pair with its target words in reverse order): the pairs are
    encoded as the service encodes (source ids = the engine's, and both sides = transformers'
    MarianTokenizer), the loss falls, and `release --checkpoint` exports a bundle with the same
    codec and model options that the service's engine serves as PyTorch decodes. From the run
    folder alone (the imported bundle moved away), `python -m training export` writes a bundle
    with the same codec that translates as the released one, and `evaluate --checkpoint` decodes
    through the codec as the service does."""
    from service.runtime.bundle import load_manifest
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator
    from training.checkpoint import load_checkpoint, model_from_checkpoint
    from training.config import config_from_dict, load_config
    from training.release import release
    from training.tasks import make_task, run_tokenizer
    from training.tokenizer import CodecTokenizer
    from training.train import train

    bundle = tmp_path / "model" / "opus-mt-xx-en"
    run_import("marian", marian_dir, bundle, int8=False)
    assert (bundle / "weights.pt").is_file() and "weights.pt" not in load_manifest(bundle).files
    weights = load_checkpoint(bundle / "weights.pt")
    assert weights["model"]["output_bias"].dtype == torch.float16

    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 240, 7), ("val", 24, 8)):
        pairs = [(s, " ".join(reversed(t.split()))) for s, t in _corpus(n, seed)]
        (data / f"{split}.xx").write_text("\n".join(s for s, _ in pairs) + "\n", encoding="utf-8")
        (data / f"{split}.en").write_text("\n".join(t for _, t in pairs) + "\n", encoding="utf-8")
    cfg = _finetune_config(data, bundle / "weights.pt")
    run_dir = tmp_path / "run"
    summary = train(cfg, run_dir, device="cpu")
    history = [row for row in load_checkpoint(run_dir / "last.pt")["state"]["history"]]
    print(f"fine-tuning: {[(r['train_loss'], r['valid_loss'], r['valid_bleu']) for r in history]}")
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.3
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert summary["best_valid_bleu"] > 0

    # the training pairs' ids: what the service feeds the model, and what transformers makes
    tok = run_tokenizer(run_dir)
    assert isinstance(tok, CodecTokenizer) and (tok.pad_id, tok.bos_id, tok.eos_id) == (
        weights["model_config"]["pad_id"],
        weights["model_config"]["bos_id"],
        0,
    )
    task = make_task(cfg, tok)
    raw = task.raw("val")
    encoded = task.encode(raw, filter_long=False)
    engine = Translator(bundle, load_manifest(bundle), resolve_providers("cpu"), variant="fp32")
    assert [e[0] for e in encoded] == engine.encode([s for s, _ in raw])
    from transformers import MarianTokenizer

    hf_tok = MarianTokenizer.from_pretrained(str(marian_dir))
    for (s, t), (src, tgt) in zip(raw, encoded):
        assert hf_tok(s)["input_ids"] == src
        assert hf_tok(text_target=t)["input_ids"] == tgt + [tok.eos_id]
    batch = task.collate(encoded[:2], torch.device("cpu"))
    assert batch["tgt_in"][0, 0] == hf_tok.pad_token_id  # Marian's decoder starts from <pad>
    # its config is the bundle's; [model] may set the training-only fields, nothing else
    with pytest.raises(ValueError, match="d_model=64"):
        tok.model_config({"d_model": 64})

    out = tmp_path / "model" / "opus-mt-xx-en-ft"
    report = release(cfg, run_dir, out, keep_all_variants=True, checkpoint=run_dir / "best.pt")
    tuned, imported = load_manifest(out), load_manifest(bundle)
    assert tuned.codec == imported.codec and tuned.special_ids == imported.special_ids
    same = ("activation", "pre_norm", "positions", "share_embeddings", "tie_output", "output_bias", "vocab_size")
    assert all(tuned.model[k] == imported.model[k] for k in same)
    for name in imported.codec.values():
        if isinstance(name, str) and name.endswith((".json", ".model")):
            assert (out / name).read_bytes() == (bundle / name).read_bytes(), name
    assert (out / "weights.pt").is_file() and report["served_variant"] in tuned.variants
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "`imported (Hugging Face Marian)`" in card and f"`{bundle / 'weights.pt'}`" in card  # its history
    served = Translator(out, tuned, resolve_providers("cpu"), variant="fp32")
    sources = [s for s, _ in raw]
    assert served.encode(sources) == [e[0] for e in encoded]
    model = model_from_checkpoint(run_dir / "best.pt")
    assert served.translate(sources) == task.translate(model, sources)
    bleu = next(r for r in report["results"] if r["variant"] == "fp32" and r["split"] == "val")["bleu"]
    print(f"fine-tuned bundle: val BLEU {bleu} (fp32), served {report['served_variant']}")

    # the run folder holds the codec: export, evaluate and --resume need nothing more from the bundle
    shutil.move(bundle, tmp_path / "elsewhere")
    from training.__main__ import main

    config = _write_toml(_finetune_raw(data, bundle / "weights.pt"), tmp_path / "ft.toml")
    assert {**load_config(config).to_dict(), "source": ""} == {**cfg.to_dict(), "source": ""}
    common = ["--config", str(config), "--run-dir", str(run_dir), "--checkpoint", str(run_dir / "best.pt")]
    exported = tmp_path / "model" / "exported"
    capsys.readouterr()  # what the test printed so far
    assert main(["export", *common, "--out", str(exported), "--no-int8"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["variants"] == ["fp32"] and shown["bundle"] == str(exported)
    manifest = load_manifest(exported)
    assert manifest.codec == imported.codec and manifest.special_ids == imported.special_ids
    assert all(manifest.model[k] == imported.model[k] for k in same)
    for name in imported.codec.values():
        if isinstance(name, str) and name.endswith((".json", ".model")):
            assert (exported / name).read_bytes() == (out / name).read_bytes(), name
    assert Translator(exported, manifest, resolve_providers("cpu"), variant="fp32").translate(sources) == (
        served.translate(sources)
    )
    hyps_file = tmp_path / "hyps.txt"
    assert main(["evaluate", *common, "--split", "val", "--output", str(hyps_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    hyps = task.translate(model, sources)
    assert hyps_file.read_text(encoding="utf-8").splitlines() == hyps
    expected = task.metrics("val", hyps, [t for _, t in raw])
    assert result["split"] == "val" and (result["bleu"], result["chrf"]) == (expected["bleu"], expected["chrf"])
    assert result["bleu"] == bleu  # the released bundle's fp32, decoded by the service's engine

    longer = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 7}})
    train(longer, run_dir, resume=True, device="cpu")
    state = load_checkpoint(run_dir / "last.pt")["state"]
    assert len(state["history"]) == 7 and state["step"] > history[-1]["step"]


@needs_hf
def test_import_no_weights(marian_dir, tmp_path, capsys):
    """`python -m training import --no-weights`: a bundle only to serve, without weights.pt."""
    from service.runtime.bundle import load_manifest
    from training.__main__ import main

    out = tmp_path / "model" / "opus-mt-xx-en"
    assert main(["import", "marian", str(marian_dir), "--out", str(out), "--no-int8", "--no-weights"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert "refused" not in result and not (out / "weights.pt").exists()
    assert load_manifest(out).variants.keys() == {"fp32"}


def test_readme_finetuning_example_is_a_valid_config_and_commands():
    """README's "Fine-tuning an imported model" example: its config parses, sets only what an
    imported model may take, and every command line parses with the training job's arguments."""
    import re
    import shlex
    import tomllib

    from training.__main__ import build_parser
    from training.config import config_from_dict
    from training.tokenizer import CodecTokenizer

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Fine-tuning an imported model", 1)[1].split("\n## ", 1)[0]
    toml_block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    cfg = config_from_dict(tomllib.loads(toml_block))
    assert cfg.train.init_from.endswith("/weights.pt") and cfg.task == "translation"
    assert set(cfg.model) <= set(CodecTokenizer.TRAINING_FIELDS)
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    lines = [line.split("  #")[0] for line in commands.splitlines() if line.strip()]
    assert len(lines) == 5
    for line in lines:
        argv = shlex.split(line)
        assert argv[:3] == [".venv/bin/python", "-m", "training"]
        build_parser().parse_args(argv[3:])


# ----------------------------------------------------------------------------- measurement


def measure_base(tmp: Path) -> dict:
    """Import time and bundle size of a transformer-base-sized model (d512, 8 heads, FFN 2048,
    6+6 layers, 32k vocabulary, random weights) saved through ctranslate2's spec API in int8."""
    cfg = TransformerConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).eval()
    lines = [f"{w} {v} {i}" for i, (w, v) in enumerate(PAIRS * 3)]
    sp = _train_spm(lines, tmp / "spm.model", 200, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
    vocab = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab += [f"<extra{i}>" for i in range(32000 - len(vocab))]
    folder = _save_spec(_spec_from_ours(model, vocab), tmp / "ct2", "int8")
    model_bin = (folder / "model.bin").stat().st_size
    t0 = time.perf_counter()
    imp = read_ct2(folder)
    read_s = time.perf_counter() - t0
    torch_model, done = import_model(imp)
    build_s = time.perf_counter() - t0 - read_s
    out = tmp / "bundle"
    t1 = time.perf_counter()
    run_import("ct2", folder, out, source_spm=tmp / "spm.model", source_lang="en", target_lang="de")
    bundle_s = time.perf_counter() - t1
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    return {
        "model_bin_mb": round(model_bin / 1e6, 1),
        "read_s": round(read_s, 2),
        "build_s": round(build_s, 2),
        "import_to_bundle_s": round(bundle_s, 1),
        "bundle_mb": round(sum(files.values()) / 1e6, 1),
        "files_mb": {k: round(v / 1e6, 1) for k, v in sorted(files.items())},
    }


@needs_ct2
@pytest.mark.skipif(not os.environ.get("TRANSERVE_IMPORT_BENCH"), reason="a measurement: TRANSERVE_IMPORT_BENCH=1")
def test_measure_base_sized_import(tmp_path):
    print(json.dumps(measure_base(tmp_path), indent=2))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(measure_base(Path(d)), indent=2))
