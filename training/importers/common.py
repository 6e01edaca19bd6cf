"""What every reader produces: an imported model's weights in our module names, its vocabularies
and its text conventions (`Imported`), and the one exception a refusal raises (`Refused`).

The readers (ct2.py, marian.py) only read; build.py turns an `Imported` into a
``Seq2SeqTransformer`` and a bundle. Weights are float32 numpy arrays keyed by the module paths
of training/transformer.py (``encoder.layers.0.self_attn.q_proj.weight``, ...), without the
embeddings, positions and output projection, which are fields of their own because the readers'
sharing and the vocabulary fixes (build.finalize) act on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The logit bias that keeps a token from ever being generated (Hugging Face's bad_words_ids,
# the zero-embedding start row of a CTranslate2 Marian model): exp(-1e4) is 0 in float32, and
# the value stays finite in float16 and through the int8 graphs, whose biases are float.
BANNED_LOGIT = -1e4


class Refused(ValueError):
    """An import refused: the message names the feature, file or value. `python -m training`
    prints it and exits 2; nothing is left under --out."""


@dataclass
class Imported:
    """A translation model read from another format, in our layout."""

    d_model: int
    n_heads: int
    d_ff: int
    n_encoder_layers: int
    n_decoder_layers: int
    pre_norm: bool
    activation: str  # training.transformer.ACTIVATIONS
    layer_norm_eps: float
    scale_embeddings: bool
    embedding_norm: bool
    # Positions: a layout of sinusoids we compute ("sinusoidal", "sinusoidal-concat"), "table"
    # with each stack's table here (row p = position p, from 0), or "ct2-default" (CTranslate2's
    # own sinusoids, computed by build.finalize as a table).
    positions: str
    encoder_pe: np.ndarray | None
    decoder_pe: np.ndarray | None
    source_embed: np.ndarray  # (Vs, D)
    target_embed: np.ndarray  # (Vt, D); the same object as source_embed when shared
    output_weight: np.ndarray | None  # (Vt, D); None = tied to target_embed
    output_bias: np.ndarray | None  # (Vt,) or None
    weights: dict[str, np.ndarray]  # every other parameter, by our module path
    source_vocab: list[str]
    target_vocab: list[str]
    bos_id: int  # the decoder's start token (a target id)
    eos_id: int
    pad_id: int | None  # None: finalize finds or adds one
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"  # what add_source_bos puts before a source
    eos_piece: str = "</s>"  # what add_source_eos puts after it
    add_source_bos: bool = False
    add_source_eos: bool = False
    zero_start: bool = False  # the decoder's first input is a zero embedding (CTranslate2 Marian)
    banned: list[int] = field(default_factory=list)  # target ids never generated
    source_spm: Path | None = None
    target_spm: Path | None = None
    max_positions: int = 0  # positions the model was made for (0 = any: computed sinusoids)
    info: dict[str, Any] = field(default_factory=dict)  # provenance: format, files, conversion notes

    @property
    def shared(self) -> bool:
        return self.source_embed is self.target_embed


def check_shape(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(array.shape) != tuple(shape):
        raise Refused(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    return array


def positions_layout(table: np.ndarray) -> str:
    """Which of our computed layouts `table` (rows = positions from 0) is, else "table"."""
    from training.transformer import sinusoidal_table  # torch: only where weights are built

    n, d = table.shape
    for layout in ("sinusoidal", "sinusoidal-concat"):
        ours = sinusoidal_table(n, d, layout).numpy()
        if np.allclose(table, ours, atol=1e-4, rtol=0):
            return layout
    return "table"


def ct2_default_positions(n: int, d: int) -> np.ndarray:
    """CTranslate2's own sinusoids, used when a model.bin carries no position table
    (tensor2tensor's: [sin | cos], timescale step log(10000) / (D/2 - 1), the first position
    numbered 1; measured against ctranslate2 4.8.5 in tests/training/test_import.py)."""
    half = d // 2
    step = math.log(10000.0) / max(half - 1, 1)
    scales = np.exp(-step * np.arange(half, dtype=np.float64))
    angle = np.arange(1, n + 1, dtype=np.float64)[:, None] * scales[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)
