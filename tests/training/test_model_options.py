"""The model options of other families (OpenNMT-py / CTranslate2, Hugging Face Marian): every
value in PyTorch and in the hand-written ONNX graphs (training/onnx_graphs.py), which must give
the same logits and the same greedy outputs; the defaults' graphs unchanged; bad values refused."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.runtime import graph_io
from service.runtime.preprocess import MAX_OUTPUT_EXTRA, MAX_OUTPUT_RATIO, output_limits
from training.export import PARITY_ATOL, export_translation_graphs
from training.onnx_graphs import build_decoder_step, build_encoder
from training.transformer import (
    PositionalEncoding,
    Seq2SeqTransformer,
    TransformerClassifier,
    TransformerConfig,
    build_model,
)

TINY = dict(
    vocab_size=53,
    d_model=32,
    n_heads=2,
    d_ff=64,
    n_encoder_layers=2,
    n_decoder_layers=2,
    dropout=0.0,
    attention_dropout=0.0,
    max_len=64,
)

# Between them, every value of every option (and the families' special-token choices).
COMBOS = {
    # Hugging Face Marian: post-norm, swish, [sin | cos] positions, a logits bias, starts from pad
    "marian": dict(pre_norm=False, activation="swish", positions="sinusoidal-concat", output_bias=True, bos_id=0),
    # OpenNMT-py / CTranslate2: pre-norm, ReLU, its own positions table, eps 1e-6, separate
    # embeddings of different sizes, an output layer of its own
    "opennmt": dict(
        positions="table", layer_norm_eps=1e-6, share_embeddings=False, source_vocab_size=61, tie_output=False
    ),
    # CTranslate2's Marian conversion: starts from </s>; a smaller source vocabulary; untied with bias
    "ct2-marian": dict(
        pre_norm=False,
        activation="gelu",
        share_embeddings=False,
        source_vocab_size=40,
        tie_output=False,
        output_bias=True,
        bos_id=3,
    ),
    "gelu_tanh-embedding_norm-unscaled": dict(
        activation="gelu_tanh", embedding_norm=True, scale_embeddings=False, layer_norm_eps=1e-3
    ),
    "gelu-post_norm-embedding_norm-shared_untied": dict(
        pre_norm=False, activation="gelu", embedding_norm=True, tie_output=False, positions="table"
    ),
}


def randomize(model: Seq2SeqTransformer, seed: int) -> Seq2SeqTransformer:
    """Non-trivial weights everywhere: LayerNorm scales and every bias away from 1 and 0, and
    a random positions table (an imported model's is not the sinusoids)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5 * (2.0 if "embed" in name or "output" in name else 1.0))
        for stack in (model.encoder, model.decoder):
            if model.cfg.positions == "table":
                stack.pos.pe.copy_(0.5 * torch.randn(stack.pos.pe.shape, generator=gen))
    return model.eval()


def make(options: dict, seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    return randomize(Seq2SeqTransformer(TransformerConfig(**TINY, **options)), seed + 1)


def sources(cfg: TransformerConfig, seed: int) -> torch.Tensor:
    """Three sentences ending in </s>, of different lengths (padded), from the source vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, cfg.source_vocab, (n,), generator=gen).tolist() + [cfg.eos_id] for n in (9, 5, 2)]
    width = max(map(len, rows))
    return torch.tensor([r + [cfg.pad_id] * (width - len(r)) for r in rows])


class OrtModel:
    """The exported graphs run as the engine runs them (graph contract 3: fixed-width caches
    and each row's position), with the model's own output-length rule."""

    def __init__(self, model: Seq2SeqTransformer, out_dir) -> None:
        specs = export_translation_graphs(model, out_dir)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(out_dir / specs["encoder"].file), opts, ["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(out_dir / specs["decoder"].file), opts, ["CPUExecutionProvider"])
        self.cfg = model.cfg
        layers = range(self.cfg.n_decoder_layers)
        self.cross_names = [graph_io.cross(t, i) for i in layers for t in "kv"]
        self.cache_names = [graph_io.past(t, i) for i in layers for t in "kv"]
        self.present_names = [graph_io.present(t, i) for i in layers for t in "kv"]

    def start(self, src: np.ndarray, width: int) -> dict[str, np.ndarray]:
        state = dict(zip(self.cross_names, self.encoder.run(self.cross_names, {graph_io.SRC_IDS: src})))
        state[graph_io.SRC_MASK] = src != self.cfg.pad_id
        b, shape = src.shape[0], (src.shape[0], self.cfg.n_heads, width, self.cfg.d_head)
        state.update({name: np.zeros(shape, np.float32) for name in self.cache_names})
        state[graph_io.POSITION] = np.zeros(b, np.int64)
        return state

    def step(self, state: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
        logits, *caches = self.decoder.run(
            [graph_io.LOGITS, *self.present_names], {graph_io.INPUT_IDS: tokens[:, None], **state}
        )
        state.update(zip(self.cache_names, caches))
        state[graph_io.POSITION] = state[graph_io.POSITION] + 1
        return logits

    def forced(self, src: np.ndarray, tgt_in: np.ndarray) -> np.ndarray:
        """Logits (B, T, V) of the target inputs `tgt_in` (B, T), a step at a time."""
        state = self.start(src, tgt_in.shape[1])
        return np.stack([self.step(state, tgt_in[:, t]) for t in range(tgt_in.shape[1])], axis=1)

    def greedy(self, src: np.ndarray) -> list[list[int]]:
        """Greedy decoding as `Seq2SeqTransformer.greedy_decode` does it."""
        cfg = self.cfg
        limits = output_limits((src != cfg.pad_id).sum(1), cfg.max_len, MAX_OUTPUT_RATIO, MAX_OUTPUT_EXTRA)
        limits = np.asarray(limits)
        state = self.start(src, int(limits.max()))
        ys = [np.full(src.shape[0], cfg.bos_id, np.int64)]
        done = np.zeros(src.shape[0], bool)
        for step in range(int(limits.max())):
            nxt = np.where(done, cfg.pad_id, self.step(state, ys[-1]).argmax(-1))
            ys.append(nxt)
            done |= (nxt == cfg.eos_id) | (step + 1 >= limits)
            if done.all():
                break
        out = []
        for row, limit in zip(np.stack(ys[1:], 1).tolist(), limits.tolist()):
            row = row[:limit]
            out.append(row[: row.index(cfg.eos_id)] if cfg.eos_id in row else row)
        return out


@pytest.mark.parametrize("name", list(COMBOS))
def test_graphs_match_pytorch_for_every_option(name, tmp_path):
    options = COMBOS[name]
    model = make(options, seed=len(name))
    cfg = model.cfg
    assert all(getattr(cfg, k) == v for k, v in options.items())
    engine = OrtModel(model, tmp_path)
    src = sources(cfg, seed=3)
    with torch.no_grad():
        expected = model.greedy_decode(src, loop_guard=None)  # the graphs' own greedy loop has no guard
        assert model.greedy_decode(src, use_cache=False, loop_guard=None) == expected
    assert max(map(len, expected)) >= 3, "a greedy output of a few tokens at least"
    assert engine.greedy(src.numpy()) == expected  # batched, rows of different lengths
    # teacher-forced logits, each row's own greedy output after the start token
    width = max(map(len, expected)) + 1
    tgt_in = torch.tensor([[cfg.bos_id] + r + [cfg.pad_id] * (width - 1 - len(r)) for r in expected])
    with torch.no_grad():
        ref = model(src, tgt_in).numpy()
    got = engine.forced(src.numpy(), tgt_in.numpy())
    assert got.shape == ref.shape == (3, width, cfg.vocab_size)
    assert np.abs(got - ref).max() <= PARITY_ATOL, np.abs(got - ref).max()
    # the graphs carry the options themselves (not by chance equal numbers)
    enc = onnx.load(str(tmp_path / "encoder.onnx")).graph
    dec = onnx.load(str(tmp_path / "decoder.onnx")).graph
    norms = [n for n in [*enc.node, *dec.node] if n.op_type == "LayerNormalization"]
    eps = {a.f for n in norms for a in n.attribute if a.name == "epsilon"}
    assert eps == {np.float32(cfg.layer_norm_eps)}
    ops = [n.op_type for n in dec.node]
    act = {"relu": "Relu", "gelu": "Gelu", "gelu_tanh": "FastGelu", "swish": "Sigmoid"}[cfg.activation]
    assert ops.count(act) == cfg.n_decoder_layers
    n_norms = 3 * cfg.n_decoder_layers + cfg.pre_norm + cfg.embedding_norm
    assert ops.count("LayerNormalization") == n_norms
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in dec.initializer}
    np.testing.assert_array_equal(inits["positional_encoding"], model.decoder.pos.pe.numpy())
    assert inits["embedding"].shape == (cfg.vocab_size, cfg.d_model)
    assert {t.name: t.dims for t in enc.initializer}["embedding"] == [cfg.source_vocab, cfg.d_model]
    assert ("embed_scale" in inits) == cfg.scale_embeddings


def test_pad_as_a_decoder_input_is_not_masked():
    # Marian starts decoding from pad: a target pad must be attended to like any token
    model = make(COMBOS["marian"], seed=5)
    src = sources(model.cfg, seed=1)
    with torch.no_grad():
        a = model(src, torch.tensor([[0, 7, 9]] * 3))
        b = model(src, torch.tensor([[0, 8, 9]] * 3))
    assert not torch.allclose(a[:, 2], b[:, 2])  # position 2 sees position 1
    assert torch.isfinite(a).all()


def test_default_options_give_the_same_graphs_as_before_they_existed():
    # The defaults add no node: the graphs of a default model are those the builder made before
    # the options (the shipped bundles' goldens rest on that). The reference is a model built
    # with every default spelled out, and its graphs rebuilt from the state dict alone.
    torch.manual_seed(0)
    default = Seq2SeqTransformer(TransformerConfig(**TINY)).eval()
    spelled = Seq2SeqTransformer(
        TransformerConfig(
            **TINY,
            activation="relu",
            layer_norm_eps=1e-5,
            scale_embeddings=True,
            embedding_norm=False,
            positions="sinusoidal",
            source_vocab_size=0,
            share_embeddings=True,
            tie_output=True,
            output_bias=False,
        )
    ).eval()
    spelled.load_state_dict(default.state_dict())
    for build in (build_encoder, build_decoder_step):
        assert build(default).SerializeToString() == build(spelled).SerializeToString()
    # the old state dict: no new keys (checkpoints load unchanged both ways)
    keys = set(default.state_dict())
    assert not any("embed_norm" in k or "pos.pe" in k or k.startswith("output") for k in keys)
    assert {"embed.embedding.weight", "encoder.embed.embedding.weight", "decoder.embed.embedding.weight"} <= keys
    enc, dec = model_nodes(build_encoder(default)), model_nodes(build_decoder_step(default))
    assert enc[:8] == ["Equal", "Not", "Cast", "Gather", "Mul", "Shape", "Slice", "Add"]
    assert dec[:5] == ["Squeeze", "Gather", "Mul", "Gather", "Add"] and dec[-1] == "MatMul"  # tied, no bias
    assert "Gelu" not in dec and "Sigmoid" not in dec and dec.count("Relu") == 2


def model_nodes(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def test_sinusoidal_concat_is_marians_table_exactly():
    cfg = TransformerConfig(**{**TINY, "max_len": 100}, positions="sinusoidal-concat")
    pe = PositionalEncoding(cfg).pe
    d = cfg.d_model
    expected = np.zeros((cfg.max_len, d))
    for pos in range(cfg.max_len):
        for j in range(d // 2):
            angle = pos / 10000 ** (2 * j / d)
            expected[pos, j], expected[pos, d // 2 + j] = math.sin(angle), math.cos(angle)
    assert pe.dtype == torch.float32
    np.testing.assert_array_equal(pe.numpy(), expected.astype(np.float32))
    # positions start at 0: row 0 is sin(0) = 0, cos(0) = 1
    assert pe[0, : d // 2].abs().max() == 0 and (pe[0, d // 2 :] == 1).all()
    # the default layout interleaves the same sinusoids (as far as float32 goes)
    default = PositionalEncoding(TransformerConfig(**{**TINY, "max_len": 100})).pe
    np.testing.assert_allclose(default[:, 0::2], pe[:, : d // 2], atol=2e-5)
    np.testing.assert_allclose(default[:, 1::2], pe[:, d // 2 :], atol=2e-5)


def test_positions_table_is_saved_and_loaded_with_the_weights(tmp_path):
    model = make(COMBOS["opennmt"], seed=2)
    state = model.state_dict()
    assert {"encoder.pos.pe", "decoder.pos.pe"} <= set(state)
    assert not torch.equal(state["encoder.pos.pe"], state["decoder.pos.pe"])  # one table per stack
    assert not any(p is model.encoder.pos.pe for p in model.parameters())  # not trained
    torch.save(state, tmp_path / "w.pt")
    fresh = Seq2SeqTransformer(model.cfg)
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # strict
    for stack in ("encoder", "decoder"):
        assert torch.equal(getattr(fresh, stack).pos.pe, getattr(model, stack).pos.pe)
    src = sources(model.cfg, seed=4)
    assert fresh.eval().greedy_decode(src) == model.greedy_decode(src)
    # the computed layouts are not saved: a default checkpoint has no table to load
    assert "encoder.pos.pe" not in Seq2SeqTransformer(TransformerConfig(**TINY)).state_dict()


def test_module_layout_the_importers_assign_to():
    shared = make({"tie_output": True, "output_bias": True, "embedding_norm": True})
    assert shared.encoder.embed is shared.decoder.embed is shared.embed
    assert shared.output is None and shared.output_bias.shape == (53,)
    assert isinstance(shared.encoder.embed_norm, torch.nn.LayerNorm)
    assert isinstance(shared.decoder.embed_norm, torch.nn.LayerNorm)
    separate = make(COMBOS["ct2-marian"])
    assert separate.encoder.embed is not separate.decoder.embed and not hasattr(separate, "embed")
    assert separate.encoder.embed.embedding.weight.shape == (40, 32)
    assert separate.decoder.embed.embedding.weight.shape == (53, 32)
    assert separate.output.weight.shape == (53, 32) and separate.output.bias.shape == (53,)
    assert separate.output_bias is None
    assert isinstance(separate.encoder.embed_norm, torch.nn.Identity)
    assert isinstance(separate.encoder.norm, torch.nn.Identity)  # post-norm: no final norm
    untied = make(COMBOS["opennmt"])
    assert untied.output.bias is None and untied.encoder.layers[0].attn_block.norm.eps == 1e-6
    assert untied.decoder.layers[1].cross_block.norm.eps == untied.decoder.norm.eps == 1e-6
    hidden = torch.randn(2, 3, 32)
    torch.testing.assert_close(untied.project(hidden), hidden @ untied.output.weight.t())
    torch.testing.assert_close(shared.project(hidden), hidden @ shared.embed.embedding.weight.t() + shared.output_bias)
    unscaled = make({"scale_embeddings": False})
    ids = torch.tensor([[5, 6]])
    torch.testing.assert_close(unscaled.encoder.embed(ids), unscaled.embed.embedding(ids))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activation": "tanh"}, "activation='tanh' must be one of 'relu', 'gelu', 'gelu_tanh', 'swish'"),
        ({"positions": "learned"}, "positions='learned' must be one of 'sinusoidal', 'sinusoidal-concat', 'table'"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0 must be a number > 0"),
        ({"layer_norm_eps": -1e-6}, "layer_norm_eps=-1e-06 must be a number > 0"),
        ({"layer_norm_eps": "1e-6"}, "layer_norm_eps='1e-6' must be a number > 0"),
        ({"scale_embeddings": "yes"}, "scale_embeddings='yes' must be true or false"),
        ({"embedding_norm": 1}, "embedding_norm=1 must be true or false"),
        ({"share_embeddings": None}, "share_embeddings=None must be true or false"),
        ({"tie_output": 0}, "tie_output=0 must be true or false"),
        ({"output_bias": "no"}, "output_bias='no' must be true or false"),
        ({"source_vocab_size": -1}, "source_vocab_size=-1 must be 0 (= vocab_size) or >= 4"),
        ({"source_vocab_size": 3, "share_embeddings": False}, "source_vocab_size=3 must be 0 (= vocab_size) or >= 4"),
        ({"source_vocab_size": 61}, "source_vocab_size=61 differs from vocab_size=53: needs share_embeddings=false"),
        ({"bos_id": 53}, "bos_id=53 must be in [0, vocab_size=53)"),
        (
            {"pad_id": 45, "source_vocab_size": 40, "share_embeddings": False},
            "pad_id=45 must be < source_vocab_size=40",
        ),
    ],
)
def test_invalid_option_values_are_refused_with_the_allowed_ones(options, message):
    with pytest.raises(ValueError, match="invalid TransformerConfig") as e:
        TransformerConfig(**{**TINY, **options})
    assert message in str(e.value)


def test_option_problems_are_gathered_with_the_others():
    with pytest.raises(ValueError) as e:
        TransformerConfig(vocab_size=2, activation="elu", positions="rope", layer_norm_eps=0)
    for part in ("vocab_size=2", "activation='elu'", "positions='rope'", "layer_norm_eps=0"):
        assert part in str(e.value)


def test_config_with_options_round_trips_through_dict():
    cfg = TransformerConfig(**TINY, **COMBOS["ct2-marian"])
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.source_vocab == 40 and TransformerConfig(**TINY).source_vocab == 53


def test_classifier_takes_the_encoder_options_and_refuses_the_translation_ones():
    options = dict(activation="gelu", layer_norm_eps=1e-6, embedding_norm=True, positions="table")
    clf = build_model(TransformerConfig(**TINY, n_classes=3, **options)).eval()
    assert isinstance(clf, TransformerClassifier)
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    torch.testing.assert_close(clf(ids), clf(ids[:, :3]), rtol=1e-5, atol=1e-5)
    assert clf(ids, lm_positions=ids != 0).shape == (3, 53)
    for bad in ({"share_embeddings": False}, {"tie_output": False}, {"output_bias": True}):
        with pytest.raises(ValueError, match="for translation models"):
            TransformerConfig(**TINY, n_classes=3, **bad)


@pytest.mark.parametrize("activation", ["gelu_tanh", "swish"])
def test_classifier_graph_with_encoder_options_matches_pytorch(activation, tmp_path):
    # the classifier's graph is traced (torch.onnx.export): the options come through it
    from training.export import export_classifier_graph

    options = dict(activation=activation, embedding_norm=True, scale_embeddings=False, positions="sinusoidal-concat")
    torch.manual_seed(0)
    clf = TransformerClassifier(TransformerConfig(**TINY, n_classes=3, **options)).eval()
    spec = export_classifier_graph(clf, tmp_path)["classifier"]
    session = ort.InferenceSession(str(tmp_path / spec.file), providers=["CPUExecutionProvider"])
    ids = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    with torch.no_grad():
        ref = torch.softmax(clf(ids), -1).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: ids.numpy()})
    assert np.abs(got - ref).max() <= PARITY_ATOL


def test_bundle_of_an_imported_layout_quantizes_and_passes_the_exports_parity(parallel_dir, tmp_path):
    # The whole export: every int8 variant made by the quantizers (the untied projection a
    # MatMul of its own, quantized like the tied one) and the parity check through the service's
    # own engine. The special ids are the tokenizer's here (the manifest's).
    from service.runtime.sessions import resolve_providers
    from service.runtime.translator import Translator
    from tests.conftest import translation_config
    from training.checkpoint import model_config
    from training.export import export_bundle
    from training.tasks import make_task, prepare_tokenizer

    cfg = translation_config(parallel_dir)
    cfg.model.update(
        activation="gelu",
        layer_norm_eps=1e-6,
        embedding_norm=True,
        positions="table",
        share_embeddings=False,
        source_vocab_size=70,
        tie_output=False,
        output_bias=True,
    )
    tok = prepare_tokenizer(cfg, tmp_path / "run")
    torch.manual_seed(4)
    model = randomize(build_model(model_config(cfg, tok)), 5)
    texts = [r[0] for r in make_task(cfg, tok).raw("val")[:6]]
    out = tmp_path / "de-en"
    manifest, parity = export_bundle(model, cfg, tmp_path / "run" / "spm.model", out, texts)
    assert parity["max_abs_logit_diff"] <= PARITY_ATOL and parity["identical_greedy"] == 1.0
    assert manifest.model["tie_output"] is False and manifest.model["source_vocab_size"] == 70
    for graph in ("encoder", "decoder"):
        fp32 = model_nodes(onnx.load(str(out / f"{graph}.onnx")))
        static = model_nodes(onnx.load(str(out / f"{graph}.int8-static.onnx")))
        assert static.count("MatMulIntegerToFloat") == fp32.count("MatMul") and "MatMul" not in static
        blockwise = model_nodes(onnx.load(str(out / f"{graph}.int8-blockwise.onnx")))
        assert blockwise.count("MatMulNBits") == fp32.count("MatMul")
    src = np.array([[5, 6, 7, 3]], dtype=np.int64)
    first = {}
    for variant in manifest.variants:
        engine = Translator(out, manifest, resolve_providers("cpu"), variant=variant)
        first[variant] = engine.step(engine.start(src, width=2), np.array([[model.cfg.bos_id]], np.int64))
    for variant, logits in first.items():
        assert logits.shape == (1, model.cfg.vocab_size)
        assert np.abs(logits - first["fp32"]).max() < 0.25 * np.abs(first["fp32"]).max(), variant
