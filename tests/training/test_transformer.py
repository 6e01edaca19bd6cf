"""Model tests on a tiny config: shapes, masks, caching, config validation."""

from __future__ import annotations

import pytest
import torch

from training.transformer import (
    Seq2SeqTransformer,
    TransformerClassifier,
    TransformerConfig,
    build_model,
)

TINY = dict(
    vocab_size=100,
    d_model=16,
    n_heads=2,
    d_ff=32,
    n_encoder_layers=2,
    n_decoder_layers=2,
    dropout=0.0,
    attention_dropout=0.0,
    max_len=64,
)


@pytest.fixture(params=[True, False], ids=["pre_norm", "post_norm"])
def model(request) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(TransformerConfig(**TINY, pre_norm=request.param)).eval()


def test_forward_shapes(model):
    logits = model(torch.randint(4, 100, (3, 7)), torch.randint(4, 100, (3, 5)))
    assert logits.shape == (3, 5, 100)


def test_causal_mask_future_token_does_not_change_earlier_outputs(model):
    src = torch.randint(4, 100, (2, 6))
    tgt = torch.randint(4, 100, (2, 8))
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(4, 100, (2, 3))
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_source_padding_does_not_change_outputs(model):
    src = torch.randint(4, 100, (1, 6))
    tgt = torch.randint(4, 100, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), rtol=1e-5, atol=1e-5)


def test_cached_decoding_equals_uncached(model):
    src = torch.randint(4, 100, (3, 9))
    src[1, 6:] = 0
    tgt = torch.randint(4, 100, (3, 6))
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cross = model.decoder.cross_kv(memory)
    past, steps = None, []
    for t in range(tgt.shape[1]):
        hidden, past = model.decoder(tgt[:, t : t + 1], cross, mask, past)
        steps.append(model.project(hidden))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert model.greedy_decode(src, use_cache=True) == model.greedy_decode(src, use_cache=False)


def test_greedy_decode_respects_length_limit(model):
    src = torch.randint(4, 100, (2, 4))
    out = model.greedy_decode(src, max_output_ratio=1.0, max_output_extra=2)
    assert all(len(o) <= 4 + 2 for o in out)


def test_output_projection_is_tied_to_embedding(model):
    assert model.embed.embedding.weight.data_ptr() == model.encoder.embed.embedding.weight.data_ptr()
    assert model.decoder.embed is model.encoder.embed


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_classifier_padding_invariance(pooling):
    torch.manual_seed(0)
    clf = TransformerClassifier(TransformerConfig(**TINY, n_classes=3, pooling=pooling)).eval()
    ids = torch.randint(4, 100, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    assert clf(ids).shape == (1, 3)
    torch.testing.assert_close(clf(ids), clf(padded), rtol=1e-5, atol=1e-5)


def test_build_model_picks_the_task():
    assert isinstance(build_model(TransformerConfig(**TINY)), Seq2SeqTransformer)
    assert isinstance(build_model(TransformerConfig(**TINY, n_classes=2)), TransformerClassifier)


def test_config_validation_reports_every_problem():
    with pytest.raises(ValueError) as e:
        TransformerConfig(vocab_size=2, d_model=30, n_heads=4, dropout=1.5, pooling="sum")
    msg = str(e.value)
    for part in ("vocab_size=2", "d_model=30", "dropout=1.5", "pooling='sum'"):
        assert part in msg


def test_config_round_trips_through_dict():
    cfg = TransformerConfig(**TINY)
    assert TransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TransformerConfig keys"):
        TransformerConfig.from_dict({**cfg.to_dict(), "bogus": 1})
