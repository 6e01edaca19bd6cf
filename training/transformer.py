"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), written out by hand.

One file, one module per concept of the paper. Two models are built from these parts:

* ``Seq2SeqTransformer``: encoder-decoder for translation, by default with a joint (shared)
  source/target embedding whose weight is tied to the output projection, and incremental decoding
  with a key/value cache (self-attention keys/values grow by one position per step;
  cross-attention keys/values are computed once from the encoder output).
* ``TransformerClassifier``: the encoder, a pooling step, dropout and a linear layer.

The config's options beyond the paper let the model hold the weights of other families
(OpenNMT-py / CTranslate2 packages, Hugging Face Marian): ``activation``, ``layer_norm_eps``,
``scale_embeddings``, ``embedding_norm``, ``positions``, ``source_vocab_size``,
``share_embeddings``, ``tie_output``, ``output_bias`` (their defaults are the original model's,
so older checkpoints load unchanged). The module paths importers assign weights to
(``model.`` + path; ``{q,k,v,out}_proj`` and ``linear1/2`` are ``nn.Linear``: weight (out, in)
and bias; norms are ``nn.LayerNorm``: weight and bias):

* ``encoder.embed.embedding.weight`` (source vocabulary x D), ``decoder.embed.embedding.weight``
  (vocab_size x D): one module when ``share_embeddings`` (also ``model.embed``), else two;
* ``encoder.pos.pe``, ``decoder.pos.pe``: (max_len, D) positions table, row p = position p
  (from 0); in the state dict only with ``positions="table"``, else computed from the config;
* ``encoder.embed_norm``, ``decoder.embed_norm``: LayerNorm of embeddings + positions
  (``embedding_norm``; ``nn.Identity`` without);
* ``encoder.layers[i]``: ``self_attn.{q,k,v,out}_proj``, ``attn_block.norm``,
  ``ffn.linear1``, ``ffn.linear2``, ``ffn_block.norm``;
* ``decoder.layers[i]``: ``self_attn.{q,k,v,out}_proj``, ``cross_attn.{q,k,v,out}_proj``,
  ``self_block.norm``, ``cross_block.norm``, ``ffn.linear1``, ``ffn.linear2``, ``ffn_block.norm``;
* ``encoder.norm``, ``decoder.norm``: each stack's final LayerNorm (pre-norm only; post-norm
  has none, ``nn.Identity``);
* ``output``: ``nn.Linear(D, vocab_size, bias=output_bias)`` when not ``tie_output``;
  ``output_bias``: (vocab_size,) logits bias when ``tie_output`` and ``output_bias``.

Shapes in comments use B = batch, S = source length, T = target length, D = d_model,
H = heads, Dh = D // H, L = layers, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.runtime.loop_guard import DEFAULT as LOOP_GUARD
from service.runtime.loop_guard import LoopGuard
from service.runtime.preprocess import (
    BOS_ID,
    EOS_ID,
    MAX_OUTPUT_EXTRA,
    MAX_OUTPUT_RATIO,
    PAD_ID,
    output_limits,
)

# A layer's self-attention cache, or its precomputed cross-attention keys/values: (k, v),
# each (B, H, T, Dh).
KV = tuple[Tensor, Tensor]

# The feed-forward network's activation: "gelu" is the exact (erf) GELU, "gelu_tanh" its tanh
# approximation, "swish" x * sigmoid(x) (SiLU).
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swish")
# Position encodings: "sinusoidal" interleaves sin and cos (the paper: PE(p, 2i) = sin,
# PE(p, 2i + 1) = cos); "sinusoidal-concat" puts every sin first, then every cos (Hugging Face
# Marian, tensor2tensor); "table" is a fixed table saved with the weights (an imported model's).
POSITIONS = ("sinusoidal", "sinusoidal-concat", "table")


@dataclass(frozen=True)
class TransformerConfig:
    """Everything needed to rebuild a model; saved inside every checkpoint."""

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    max_len: int = 256
    pre_norm: bool = True
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    # Classification only: number of labels (0 for a translation model) and pooling.
    n_classes: int = 0
    pooling: str = "mean"
    # Options of other model families (the defaults are this model's own layout).
    activation: str = "relu"  # one of ACTIVATIONS
    layer_norm_eps: float = 1e-5  # every LayerNorm's epsilon
    scale_embeddings: bool = True  # token embeddings times sqrt(d_model)
    embedding_norm: bool = False  # a LayerNorm of embeddings + positions, in each stack
    positions: str = "sinusoidal"  # one of POSITIONS
    source_vocab_size: int = 0  # the source embedding's rows; 0 = vocab_size (the target's)
    share_embeddings: bool = True  # one embedding matrix for source and target
    tie_output: bool = True  # the output projection is the target embedding, transposed
    output_bias: bool = False  # a (vocab_size,) bias on the logits

    def __post_init__(self) -> None:
        problems = []
        if self.vocab_size < 4:
            problems.append(f"vocab_size={self.vocab_size} must be >= 4 (the special tokens)")
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} must be a positive multiple of n_heads={self.n_heads}")
        if self.d_ff <= 0:
            problems.append(f"d_ff={self.d_ff} must be positive")
        if self.n_encoder_layers <= 0 or self.n_decoder_layers < 0:
            problems.append(
                f"n_encoder_layers={self.n_encoder_layers} must be >= 1 and "
                f"n_decoder_layers={self.n_decoder_layers} >= 0"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.max_len <= 0:
            problems.append(f"max_len={self.max_len} must be positive")
        if self.n_classes < 0 or self.n_classes == 1:
            problems.append(f"n_classes={self.n_classes} must be 0 (translation) or >= 2")
        if self.pooling not in ("mean", "cls", "max"):
            problems.append(f"pooling={self.pooling!r} must be 'mean', 'cls' or 'max'")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r} must be one of {', '.join(map(repr, ACTIVATIONS))}")
        if self.positions not in POSITIONS:
            problems.append(f"positions={self.positions!r} must be one of {', '.join(map(repr, POSITIONS))}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < math.inf:
            problems.append(f"layer_norm_eps={eps!r} must be a number > 0")
        for name in ("scale_embeddings", "embedding_norm", "share_embeddings", "tie_output", "output_bias"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r} must be true or false")
        src = self.source_vocab_size
        if isinstance(src, bool) or not isinstance(src, int) or src < 0 or 0 < src < 4:
            problems.append(f"source_vocab_size={src!r} must be 0 (= vocab_size) or >= 4 (the special tokens)")
        elif src not in (0, self.vocab_size) and self.share_embeddings is True:
            problems.append(
                f"source_vocab_size={src} differs from vocab_size={self.vocab_size}: "
                "needs share_embeddings=false (separate source and target embeddings)"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(f"{name}={getattr(self, name)} must be in [0, vocab_size={self.vocab_size})")
        if isinstance(src, int) and src >= 4 and not self.pad_id < src:
            problems.append(f"pad_id={self.pad_id} must be < source_vocab_size={src}")
        if self.n_classes:  # the classifier has one embedding, which its masked-LM head reuses
            translation_only = {
                "source_vocab_size": src not in (0, self.vocab_size),
                "share_embeddings": self.share_embeddings is False,
                "tie_output": self.tie_output is False,
                "output_bias": self.output_bias is True,
            }
            for name, set_ in translation_only.items():
                if set_:
                    problems.append(f"{name}={getattr(self, name)!r} is for translation models (n_classes=0) only")
        if problems:
            raise ValueError("invalid TransformerConfig: " + "; ".join(problems))

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def source_vocab(self) -> int:
        """The source embedding's rows (``source_vocab_size``, or ``vocab_size`` when 0)."""
        return self.source_vocab_size or self.vocab_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TransformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig keys: {unknown}")
        return cls(**data)


class TokenEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d_model), as in section 3.4 of the paper (unscaled
    without ``scale_embeddings``). `vocab_size`: its rows (default: the config's)."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size or cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=cfg.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[cfg.pad_id].zero_()
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else None

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids)  # (B, T, D)
        return x if self.scale is None else x * self.scale

    def unembed(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits through the same matrix (weight tying): (..., D) -> (..., V)."""
        return hidden @ self.embedding.weight.t()


def sinusoidal_table(max_len: int, d_model: int, layout: str = "sinusoidal") -> Tensor:
    """(max_len, D) sinusoids of angle(pos, j) = pos / 10000^(2j/D), j in [0, D/2).

    "sinusoidal" (the paper's, this model's own): interleaved, column 2j = sin, 2j + 1 = cos,
    computed in float32 as it always was. "sinusoidal-concat" (Hugging Face Marian's): columns
    [0, D/2) = sin, [D/2, D) = cos, computed in float64 and rounded once to float32, exactly
    as Hugging Face's ``MarianSinusoidalPositionalEmbedding`` does."""
    if layout == "sinusoidal-concat":
        position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
        n_sin = (d_model + 1) // 2  # Marian's split for an odd D: one more sin column
        j = torch.arange(n_sin, dtype=torch.float64)
        angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * j / d_model)
        return torch.cat([torch.sin(angle), torch.cos(angle[:, : d_model - n_sin])], dim=1).float()
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return pe


class PositionalEncoding(nn.Module):
    """Fixed encodings added to the embeddings, `pe` (max_len, D): the sinusoids of the paper,
    PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...), or of `cfg.positions`'s
    layout. ``positions="table"``: a table saved with the weights (not trained; importers fill
    it), which starts as the paper's sinusoids."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        layout = "sinusoidal" if cfg.positions == "table" else cfg.positions
        # Not a parameter; saved only as a table: else a function of the config alone.
        pe = sinusoidal_table(cfg.max_len, cfg.d_model, layout)
        self.register_buffer("pe", pe, persistent=cfg.positions == "table")
        self.dropout = nn.Dropout(cfg.dropout)

    def add(self, x: Tensor, start: int | Tensor = 0) -> Tensor:
        """x (B, T, D) plus the encodings of positions start..start+T-1; `start` may be a
        traced size in ONNX export."""
        positions = torch.arange(x.shape[1], device=x.device) + start
        return x + self.pe.index_select(0, positions)

    def forward(self, x: Tensor, start: int | Tensor = 0) -> Tensor:
        return self.dropout(self.add(x, start))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads with its own Q/K/V and output projections."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.attention_dropout)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, x: Tensor) -> KV:
        """Keys and values of `x` (B, T, D), each (B, H, T, Dh)."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def forward(self, query: Tensor, kv: KV, mask: Tensor | None) -> Tensor:
        """query: (B, Tq, D); kv: keys/values (B, H, Tk, Dh); mask: bool, True = may attend,
        broadcastable to (B, H, Tq, Tk). Every query must be allowed at least one key."""
        q = self.split_heads(self.q_proj(query))  # (B, H, Tq, Dh)
        k, v = kv
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = (weights @ v).transpose(1, 2)  # (B, Tq, H, Dh)
        return self.out_proj(out.reshape(query.shape[0], query.shape[1], -1))


def activation(name: str, x: Tensor) -> Tensor:
    """The FFN's activation `name` (one of ACTIVATIONS) of `x`."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "swish":
        return F.silu(x)
    return F.relu(x)


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, d_ff) -> ReLU (or `cfg.activation`) -> dropout -> Linear(d_ff, D)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.linear2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation = cfg.activation

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(activation(self.activation, self.linear1(x))))


class SublayerConnection(nn.Module):
    """Residual connection around a sub-layer, with LayerNorm before or after it.

    Post-LN, ``LN(x + Dropout(f(x)))``, is the paper's order. Pre-LN, ``x + Dropout(f(LN(x)))``
    plus a final LayerNorm per stack (Xiong et al., 2020), is the default here: it trains
    stably without a long warmup, which matters when CPU budgets allow only a few epochs.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each in a SublayerConnection."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.attn_block = SublayerConnection(cfg)
        self.ffn_block = SublayerConnection(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, self.self_attn.project_kv(h), mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, then the FFN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg)
        self.cross_attn = MultiHeadAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.self_block = SublayerConnection(cfg)
        self.cross_block = SublayerConnection(cfg)
        self.ffn_block = SublayerConnection(cfg)

    def forward(
        self, x: Tensor, self_mask: Tensor, cross_kv: KV, src_mask: Tensor, past: KV | None
    ) -> tuple[Tensor, KV]:
        present: list[KV] = []

        def self_attention(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            present.append((k, v))
            return self.self_attn(h, (k, v), self_mask)

        x = self.self_block(x, self_attention)
        x = self.cross_block(x, lambda h: self.cross_attn(h, cross_kv, src_mask))
        return self.ffn_block(x, self.ffn), present[0]


def _final_norm(cfg: TransformerConfig) -> nn.Module:
    """A stack's final LayerNorm: pre-norm only."""
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()


def _embed_norm(cfg: TransformerConfig) -> nn.Module:
    """The LayerNorm of embeddings + positions (`embedding_norm`), else nothing."""
    return nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.embedding_norm else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, embed: TokenEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.pos = PositionalEncoding(cfg)
        self.embed_norm = _embed_norm(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.norm = _final_norm(cfg)

    def forward(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """src_ids: (B, S); src_mask: (B, S) bool, True = real token. Returns (B, S, D)."""
        x = self.pos.dropout(self.embed_norm(self.pos.add(self.embed(src_ids))))
        attn_mask = src_mask[:, None, None, :]  # (B, 1, 1, S): padding keys are never attended
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, cfg: TransformerConfig, embed: TokenEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.pos = PositionalEncoding(cfg)
        self.embed_norm = _embed_norm(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.norm = _final_norm(cfg)

    def cross_kv(self, memory: Tensor) -> list[KV]:
        """Cross-attention keys/values of every layer, computed once per source sentence."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def forward(
        self,
        tgt_ids: Tensor,
        cross_kv: list[KV],
        src_mask: Tensor,
        past: list[KV] | None = None,
    ) -> tuple[Tensor, list[KV]]:
        """tgt_ids: (B, T) new target tokens; past: each layer's cached (k, v) for the earlier
        positions, or None. Returns hidden states (B, T, D) and each layer's updated cache."""
        past_len = past[0][0].shape[2] if past else 0
        x = self.pos.dropout(self.embed_norm(self.pos.add(self.embed(tgt_ids), start=past_len)))
        t = tgt_ids.shape[1]
        # Query i sits at absolute position past_len + i and may see keys 0..past_len + i.
        query_pos = torch.arange(t, device=tgt_ids.device)[:, None] + past_len
        key_pos = torch.arange(t + past_len, device=tgt_ids.device)[None, :]
        self_mask = key_pos <= query_pos  # (T, past_len + T), broadcast over B and H
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        present = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, self_mask, cross_kv[i], cross_mask, past[i] if past else None)
            present.append(kv)
        return self.norm(x), present


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder; by default one embedding shared by source, target and the output
    projection. Without ``share_embeddings`` the encoder and decoder have embeddings of their
    own (source_vocab x D, vocab_size x D); without ``tie_output`` the logits come from a
    linear layer ``output`` of their own; ``output_bias`` adds a bias to them."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.n_decoder_layers < 1:
            raise ValueError("Seq2SeqTransformer needs n_decoder_layers >= 1")
        self.cfg = cfg
        if cfg.share_embeddings:
            self.embed = TokenEmbedding(cfg)
            self.encoder = Encoder(cfg, self.embed)
            self.decoder = Decoder(cfg, self.embed)
        else:
            source, target = TokenEmbedding(cfg, cfg.source_vocab), TokenEmbedding(cfg, cfg.vocab_size)
            self.encoder = Encoder(cfg, source)
            self.decoder = Decoder(cfg, target)
        # The output projection: the decoder's embedding transposed (tied), or a layer of its own.
        self.output = None if cfg.tie_output else nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)
        if cfg.tie_output and cfg.output_bias:
            self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        else:
            self.register_parameter("output_bias", None)

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (B, S, D) and the source mask (B, S), True = a real token: only the
        source's padding is masked (a decoder input equal to pad_id is a token like any other)."""
        src_mask = src_ids != self.cfg.pad_id
        return self.encoder(src_ids, src_mask), src_mask

    def project(self, hidden: Tensor) -> Tensor:
        """Output projection: (..., D) -> logits (..., V); tied to the decoder's embedding
        unless ``tie_output`` is off, plus the logits bias when there is one."""
        if self.output is not None:
            return self.output(hidden)
        logits = self.decoder.embed.unembed(hidden)
        return logits if self.output_bias is None else logits + self.output_bias

    def forward(self, src_ids: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for target inputs `tgt_in` (starting with <s>)."""
        memory, src_mask = self.encode(src_ids)
        hidden, _ = self.decoder(tgt_in, self.decoder.cross_kv(memory), src_mask)
        return self.project(hidden)

    @torch.no_grad()
    def greedy_decode(
        self,
        src_ids: Tensor,
        use_cache: bool = True,
        max_output_ratio: float = MAX_OUTPUT_RATIO,
        max_output_extra: int = MAX_OUTPUT_EXTRA,
        loop_guard: LoopGuard | None = LOOP_GUARD,
    ) -> list[list[int]]:
        """Greedy decoding; returns each sentence's target ids without <s> and </s>.

        A row stops at </s> or after ``len(source) * ratio + extra`` tokens (capped by the
        model's positions), the same rule as the service's engine; and, as there, `loop_guard`
        (service/runtime/loop_guard.py; None: off) bans a token that would end a row's output
        with one n-gram repeated too often in a row: the row takes its best other token."""
        cfg = self.cfg
        b = src_ids.shape[0]
        memory, src_mask = self.encode(src_ids)
        lengths = src_mask.sum(1).cpu().numpy()
        limits = torch.as_tensor(output_limits(lengths, cfg.max_len, max_output_ratio, max_output_extra))
        limits = limits.to(src_ids.device)
        cross = self.decoder.cross_kv(memory)
        ys = torch.full((b, 1), cfg.bos_id, dtype=torch.long, device=src_ids.device)
        done = torch.zeros(b, dtype=torch.bool, device=src_ids.device)
        past = None
        repeats = loop_guard.state(src_ids.cpu().numpy(), cfg.pad_id) if loop_guard is not None else None
        for step in range(int(limits.max())):
            if use_cache:
                hidden, past = self.decoder(ys[:, -1:], cross, src_mask, past)
            else:
                hidden, _ = self.decoder(ys, cross, src_mask)
            logits = self.project(hidden[:, -1])
            next_ids = logits.argmax(-1)
            if repeats is not None:
                next_ids = _unbanned(logits, next_ids, torch.as_tensor(repeats.banned(), device=logits.device))
            next_ids = next_ids.masked_fill(done, cfg.pad_id)
            if repeats is not None:
                repeats.push(next_ids.cpu().numpy())
            ys = torch.cat([ys, next_ids[:, None]], dim=1)
            done |= (next_ids == cfg.eos_id) | (step + 1 >= limits)
            if bool(done.all()):
                break
        out = []
        for row, limit in zip(ys[:, 1:].tolist(), limits.tolist()):
            row = row[:limit]
            out.append(row[: row.index(cfg.eos_id)] if cfg.eos_id in row else row)
        return out


def _unbanned(logits: Tensor, best: Tensor, banned: Tensor) -> Tensor:
    """Each row's best token (`best`: the argmax of `logits` (B, V)) that `banned` (B, N; -1: none)
    does not name: the loop guard's choice (service/runtime/loop_guard.pick)."""
    hit = (banned == best[:, None]).any(1)
    if not bool(hit.any()):
        return best
    rows, slots = torch.nonzero(banned >= 0, as_tuple=True)
    masked = logits.clone()
    masked[rows, banned[rows, slots]] = float("-inf")
    return torch.where(hit, masked.argmax(-1), best)


class TransformerClassifier(nn.Module):
    """The Transformer encoder, pooled to one vector per text, then dropout and a linear layer.

    Pooling ``mean`` averages the non-padding positions; ``max`` takes each feature's maximum
    over them (max-over-time, as in Kim 2014's CNN classifier); ``cls`` takes position 0, where
    the tokenizer puts ``<s>`` as a classification token. It takes the encoder's options
    (activation, layer_norm_eps, scale_embeddings, embedding_norm, positions); the config
    refuses the translation-only ones (source_vocab_size, share_embeddings, tie_output,
    output_bias) away from their defaults.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.n_classes < 2:
            raise ValueError(f"TransformerClassifier needs n_classes >= 2, got {cfg.n_classes}")
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg)
        self.encoder = Encoder(cfg, self.embed)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, ids: Tensor, lm_positions: Tensor | None = None) -> Tensor:
        """ids: (B, T) -> logits (B, n_classes). With `lm_positions` ((B, T) bool), the masked-LM
        pretraining objective instead: vocabulary logits (N, V) at those N positions, through
        the embedding matrix (tied, as in the translation model's output projection)."""
        mask = ids != self.cfg.pad_id
        hidden = self.encoder(ids, mask)  # (B, T, D)
        if lm_positions is not None:
            return self.embed.unembed(hidden[lm_positions])
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.cfg.pooling == "max":
            pooled = hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


def build_model(cfg: TransformerConfig) -> nn.Module:
    """The model a config describes: a classifier when it has labels, else a translator."""
    return TransformerClassifier(cfg) if cfg.n_classes else Seq2SeqTransformer(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
