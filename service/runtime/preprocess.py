"""The rules that turn text into model inputs and bound the outputs, shared by the training
job (training, evaluation, export parity) and the engines, so the two cannot drift apart.

Special ids are fixed for every bundle; the output-length rule's parameters travel in the
manifest (`decoding`), these are the defaults a release writes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}

# A translation stops at </s> or after len(source) * ratio + extra tokens, within the model's
# positions: room for languages that need more pieces, and a bound on runaway repetition.
MAX_OUTPUT_RATIO = 1.5
MAX_OUTPUT_EXTRA = 10
DECODING = {"max_output_ratio": MAX_OUTPUT_RATIO, "max_output_extra": MAX_OUTPUT_EXTRA}


def source_ids(pieces: Sequence[int], max_len: int, eos: int = EOS_ID) -> list[int]:
    """A translation source as the models see it: pieces then </s>, cut to `max_len`."""
    return list(pieces[: max_len - 1]) + [eos]


def classifier_ids(pieces: Sequence[int], max_len: int, bos: int = BOS_ID) -> list[int]:
    """A classifier input: <s> (the position `cls` pooling reads) then pieces, cut to `max_len`."""
    return [bos] + list(pieces[: max_len - 1])


def classifier_windows(pieces: Sequence[int], max_len: int, bos: int = BOS_ID) -> list[list[int]]:
    """A classifier's inputs for one text: one window if it fits, else consecutive windows of
    max_len - 1 pieces (each after <s>) that cover the whole text, so a long review is read to
    its end rather than cut at the model's length. The engine averages the windows'
    probabilities, weighted by their lengths."""
    width = max_len - 1
    if len(pieces) <= width:
        return [classifier_ids(pieces, max_len, bos)]
    return [[bos] + list(pieces[i : i + width]) for i in range(0, len(pieces), width)]


def output_limits(
    source_lengths: np.ndarray,
    max_len: int,
    ratio: float = MAX_OUTPUT_RATIO,
    extra: int = MAX_OUTPUT_EXTRA,
) -> np.ndarray:
    """Most target tokens (without </s>) each source may produce."""
    lengths = np.asarray(source_lengths)
    return np.minimum(max_len - 1, (lengths * ratio).astype(np.int64) + extra)
