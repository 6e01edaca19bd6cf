"""The one definition of every graph's inputs and outputs (names, order, dtypes, axes).

The training job's graph builders name their tensors with these functions and write these specs
into the manifest; the engines read tensors by these names; and `check_session` compares each
onnxruntime session with the spec at load, so a renamed, reordered or retyped tensor refuses
the bundle with a message naming it instead of decoding garbage.

Encoder:      src_ids (B, S) int64 -> cross_k.{i}, cross_v.{i} (B, N, S, H) for each decoder layer i
Decoder step: input_ids (B, 1) int64, position (B,) int64, src_mask (B, S) bool, self_mask
              (B, P+1) bool, past_k.{i}, past_v.{i} (B, N, P, H), cross_k.{i}, cross_v.{i}
              -> logits (B, V), present_k.{i}, present_v.{i} (B, N, P+1, H)[, align_query.{L} (B, D)
              or, in older bundles, alignment (B, S)]

`position` is each row's own position (the number of tokens it has decoded) and `self_mask` marks
the cache slots that are its own (True) and, last, the slot the step appends: rows that joined a
running batch later than others carry masked slots on the left of their caches. That is what
iteration-level batching needs (service/runtime/continuous.py). Bundles exported before it
(contract 1) have neither input: their decoder reads every slot and puts every row at position P;
the engine refuses them at load. `alignment`, last and optional, is where
each step looked in the source (one layer's cross-attention weights, averaged over heads): the
HTML path carries inline elements by it (service/html.py); bundles without it place them by words.
Newer graphs output `align_query.{L}` instead: the query of layer L's cross-attention (B, D),
from which the engine computes those weights with `cross_k.{L}` only when it wants them (the
forced-decoding pass of runtime/alignment.py): computed in the graph, they cost every step of
every translation for an output that only that pass reads (BENCHMARKS.md section 9).
Contract 3 (a static cache): the same step without `self_mask`, its caches
(B, N, C, H) of a fixed width C that the step writes in place: `past_k.{i}` and `present_k.{i}`
are one buffer (the engine binds both to the same memory), a row's own slots are 0..position-1
(right-padded, every row from slot 0), and the step writes slot `position`. No cache is copied
into a grown one every step, and a row that joins a running batch needs no mask: it starts at
position 0 in a free row. (onnxruntime's GroupQueryAttention is faster than MultiHeadAttention
appending to a growing cache on the CPU: BENCHMARKS.md.)
Classifier:   ids (B, T) int64 -> probabilities (B, labels) float32
"""

from __future__ import annotations

from typing import Any

from service.runtime.bundle import BundleError, GraphSpec, TensorSpec

SRC_IDS, INPUT_IDS, SRC_MASK, LOGITS = "src_ids", "input_ids", "src_mask", "logits"
POSITION, SELF_MASK, ALIGNMENT = "position", "self_mask", "alignment"
ALIGN_QUERY = "align_query"
HIDDEN = "hidden"  # a shortlist decoder's last output: the output projection's uint8 input (runtime/shortlist.py)
CLASSIFIER_IDS, PROBABILITIES = "ids", "probabilities"


def cross(kind: str, layer: int) -> str:
    return f"cross_{kind}.{layer}"


def past(kind: str, layer: int) -> str:
    return f"past_{kind}.{layer}"


def present(kind: str, layer: int) -> str:
    return f"present_{kind}.{layer}"


def align_query(layer: int) -> str:
    return f"{ALIGN_QUERY}.{layer}"


def _kv(name: str, length: str) -> TensorSpec:
    return TensorSpec(name, "float32", ["batch", "heads", length, "head_dim"])


def encoder_io(n_layers: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    outputs = [_kv(cross(t, i), "src_len") for i in range(n_layers) for t in "kv"]
    return [TensorSpec(SRC_IDS, "int64", ["batch", "src_len"])], outputs


def decoder_io(
    n_layers: int,
    per_row: bool = True,
    alignment: bool = True,
    static: bool = False,
    align_layer: int | None = None,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The decoder step's contract; `per_row=False` is contract 1 (no position, no self_mask);
    `static=True` contract 3 (no self_mask, fixed-width caches written in place);
    `alignment=False`: a decoder exported before the alignment output; with `align_layer` L,
    the alignment output is `align_query.{L}` (the newer form), else `alignment`."""
    past_len, present_len = ("cache_len", "cache_len") if static else ("past_len", "present_len")
    inputs = [
        TensorSpec(INPUT_IDS, "int64", ["batch", 1]),
        *([TensorSpec(POSITION, "int64", ["batch"])] if per_row or static else []),
        TensorSpec(SRC_MASK, "bool", ["batch", "src_len"]),
        *([TensorSpec(SELF_MASK, "bool", ["batch", "present_len"])] if per_row and not static else []),
        *[_kv(past(t, i), past_len) for i in range(n_layers) for t in "kv"],
        *[_kv(cross(t, i), "src_len") for i in range(n_layers) for t in "kv"],
    ]
    outputs = [
        TensorSpec(LOGITS, "float32", ["batch", "vocab"]),
        *[_kv(present(t, i), present_len) for i in range(n_layers) for t in "kv"],
        *([_alignment_spec(align_layer)] if alignment else []),
    ]
    return inputs, outputs


def _alignment_spec(layer: int | None) -> TensorSpec:
    if layer is None:
        return TensorSpec(ALIGNMENT, "float32", ["batch", "src_len"])
    return TensorSpec(align_query(layer), "float32", ["batch", "d_model"])


def classifier_io() -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [TensorSpec(CLASSIFIER_IDS, "int64", ["batch", "length"])], [
        TensorSpec(PROBABILITIES, "float32", ["batch", "labels"])
    ]


def per_row(spec: GraphSpec) -> bool:
    """Whether a decoder spec has the per-row inputs (contract 2) or not (contract 1)."""
    return any(t.name == POSITION for t in spec.inputs)


def static_cache(spec: GraphSpec) -> bool:
    """Whether a decoder spec is contract 3: per-row positions, fixed-width caches written in place."""
    return per_row(spec) and not any(t.name == SELF_MASK for t in spec.inputs)


def is_alignment_output(name: str) -> bool:
    """Whether a decoder output is the alignment output, in either form."""
    head, _, layer = name.partition(".")
    return name == ALIGNMENT or (head == ALIGN_QUERY and layer.isdigit())


def has_alignment(spec: GraphSpec) -> bool:
    """Whether a decoder spec has an alignment output (`alignment` or `align_query.{L}`)."""
    return any(is_alignment_output(t.name) for t in spec.outputs)


def alignment_layer(spec: GraphSpec) -> int | None:
    """L of a decoder spec's `align_query.{L}` output; None without one."""
    for t in spec.outputs:
        if is_alignment_output(t.name) and t.name != ALIGNMENT:
            return int(t.name.partition(".")[2])
    return None


def expected(
    role: str,
    model: dict[str, Any],
    rows: bool = True,
    alignment: bool = True,
    static: bool = False,
    align_layer: int | None = None,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The contract of graph `role` of a model with config `model` (the manifest's); for the
    decoder, `rows` chooses contract 2 (per-row position and self mask) or 1, `static` contract 3,
    `alignment` whether the alignment output is there, `align_layer` its form (decoder_io)."""
    if role == "encoder":
        return encoder_io(model["n_decoder_layers"])
    if role == "decoder":
        if align_layer is not None and not 0 <= align_layer < model["n_decoder_layers"]:
            raise BundleError(f"{align_query(align_layer)}: the model has {model['n_decoder_layers']} decoder layers")
        return decoder_io(model["n_decoder_layers"], rows, alignment, static, align_layer)
    if role == "classifier":
        return classifier_io()
    raise BundleError(f"unknown graph role {role!r}")


def graph_spec(
    role: str, model: dict[str, Any], file: str, static: bool = False, align_layer: int | None = None
) -> GraphSpec:
    inputs, outputs = expected(role, model, static=static, align_layer=align_layer)
    return GraphSpec(file=file, inputs=inputs, outputs=outputs)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


def check_session(session: Any, spec: GraphSpec, role: str, model: dict[str, Any], where: str) -> None:
    """Refuse a graph whose manifest spec differs from the contract, or whose onnxruntime session
    differs from its spec: names and order, element types, ranks."""
    want_in, want_out = expected(
        role, model, per_row(spec), has_alignment(spec), static_cache(spec), alignment_layer(spec)
    )
    problems = []
    for side, declared, want in (("input", spec.inputs, want_in), ("output", spec.outputs, want_out)):
        for k in range(max(len(declared), len(want))):
            have = declared[k].name if k < len(declared) else None
            need = want[k].name if k < len(want) else None
            if have != need:
                problems.append(f"manifest {side} {k} of {role} is {have!r}, the contract says {need!r}")
                break
    for side, actual, declared in (
        ("input", session.get_inputs(), spec.inputs),
        ("output", session.get_outputs(), spec.outputs),
    ):
        if len(actual) != len(declared):
            problems.append(f"{role} graph has {len(actual)} {side}s, the manifest declares {len(declared)}")
        for k, (a, d) in enumerate(zip(actual, declared)):
            if a.name != d.name:
                problems.append(f"{role} graph {side} {k} is {a.name!r}, the manifest declares {d.name!r}")
                continue
            dtype = _ORT_TYPES.get(a.type, a.type)
            if dtype != d.dtype:
                problems.append(f"{role} graph {side} {a.name!r} is {dtype}, the manifest declares {d.dtype}")
            if a.shape is not None and len(a.shape) != len(d.shape):
                problems.append(f"{role} graph {side} {a.name!r} has rank {len(a.shape)}, the manifest {len(d.shape)}")
    if problems:
        raise BundleError(f"{where}: graph contract violated: " + "; ".join(problems))
