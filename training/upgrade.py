"""Bring an exported bundle's graphs to today's form without exporting it again.

    python -m training upgrade --bundle model/multi

Older decoders compute their alignment weights (`alignment`, one layer's
cross-attention weights averaged over heads) at every step, although only the forced-decoding
pass of `Translator.align` reads them: 10-19% of every decoder step (BENCHMARKS.md section 9).
This rewrites each such decoder, in every variant, into the form the export writes now: the
nodes that only the `alignment` output needed are removed and the query they started from is
output as `align_query.{L}` (the engine computes the weights from it and `cross_k.{L}` when it
wants them). Nothing else in the graph changes, so every logit is the same as before: the
translations of the bundle stay byte for byte what its card measured (a re-export from
`weights.pt`, fp16, would not), which the upgrade checks on a few sentences before it writes
anything. The weights of an int8-static graph's alignment were computed from int8 operands;
from the query they are computed in float32, so a link may move where two source pieces were
almost tied.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from service.runtime import graph_io
from service.runtime.bundle import GraphSpec, load_manifest, sha256_file, write_manifest
from service.runtime.sessions import resolve_providers
from service.runtime.translator import Translator

log = logging.getLogger(__name__)

# what the check translates (target tags are added for a multilingual bundle); a few languages
CHECK_TEXTS = [
    "Ein Mann fährt mit dem Fahrrad durch die Stadt.",
    "Where is the station? I would like to buy two tickets.",
    "Le chat dort sur le canapé depuis ce matin.",
    "Dnes je hezky a jdeme na procházku.",
    "我们明天去北京。",
]


def query_form(proto: onnx.ModelProto) -> int | None:
    """Rewrite, in place, a decoder whose graph computes `alignment` into the `align_query.{L}`
    form; returns L, or None when the graph has no `alignment` output (nothing to do)."""
    g = proto.graph
    if graph_io.ALIGNMENT not in [o.name for o in g.output]:
        return None
    producer = {out: n for n in g.node for out in n.output}

    def ancestors(names: list[str]) -> set[int]:
        seen: set[int] = set()
        todo = list(names)
        while todo:
            node = producer.get(todo.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            todo.extend(i for i in node.input if i)
        return seen

    own = ancestors([graph_io.ALIGNMENT]) - ancestors([o.name for o in g.output if o.name != graph_io.ALIGNMENT])
    nodes = [n for n in g.node if id(n) in own]
    made = {out for n in nodes for out in n.output}
    inputs = {i.name for i in g.input}
    constants = {t.name for t in g.initializer}
    outside = {i for n in nodes for i in n.input if i and i not in made and i not in constants}
    queries = sorted(outside - inputs)  # tensors the rest of the graph computes: the query alone
    keys = sorted(i for i in outside & inputs if i.startswith("cross_k."))
    if len(queries) != 1 or len(keys) != 1:
        raise ValueError(f"the alignment branch reads {queries} and {keys}: not the form the export wrote")
    layer = int(keys[0].split(".")[1])
    kept = [n for n in g.node if id(n) not in own]
    kept.append(helper.make_node("Identity", [queries[0]], [graph_io.align_query(layer)], name="align_query"))
    del g.node[:]
    g.node.extend(kept)
    d_model = proto_d_model(g)
    outputs = [o for o in g.output if o.name != graph_io.ALIGNMENT]
    outputs.append(helper.make_tensor_value_info(graph_io.align_query(layer), TensorProto.FLOAT, ["batch", d_model]))
    del g.output[:]
    g.output.extend(outputs)
    used = {i for n in g.node for i in n.input}
    initializers = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(initializers)
    return layer


def proto_d_model(g: onnx.GraphProto) -> int | str:
    """The model width, from the cross-attention keys (B, N, S, H): N * H, where both are fixed."""
    for i in g.input:
        if i.name.startswith("cross_k."):
            dims = i.type.tensor_type.shape.dim
            if dims[1].HasField("dim_value") and dims[3].HasField("dim_value"):
                return dims[1].dim_value * dims[3].dim_value
    return "d_model"


def upgrade_bundle(bundle_dir: Path) -> dict[str, int]:
    """Rewrite every variant's decoder of `bundle_dir` into the query form (`query_form`), after
    checking on a copy that its translations are unchanged. Returns {variant: L} of the
    variants it rewrote (empty: nothing to do)."""
    manifest = load_manifest(bundle_dir)
    if manifest.task != "translation":
        return {}
    with tempfile.TemporaryDirectory(prefix=".upgrade.", dir=bundle_dir.parent) as tmp_dir:
        staged = Path(tmp_dir) / bundle_dir.name
        shutil.copytree(bundle_dir, staged)
        variants, done = dict(manifest.variants), {}
        for name, graphs in manifest.variants.items():
            dec = graphs["decoder"]
            proto = onnx.load(str(staged / dec.file))
            layer = query_form(proto)
            if layer is None:
                continue
            onnx.save(proto, str(staged / dec.file))
            outputs = [t for t in dec.outputs if t.name != graph_io.ALIGNMENT]
            want = graph_io.expected(
                "decoder", manifest.model, graph_io.per_row(dec), True, graph_io.static_cache(dec), layer
            )
            outputs.append(want[1][-1])
            variants[name] = {**graphs, "decoder": GraphSpec(dec.file, dec.inputs, outputs)}
            done[name] = layer
        if not done:
            return {}
        files = {n: sha256_file(staged / n) for n in manifest.files}
        write_manifest(staged, replace(manifest, variants=variants, files=files))
        for name in done:
            before, after = (_engine(d, name) for d in (bundle_dir, staged))
            texts = _check_texts(before)
            old, new = before.translate(texts), after.translate(texts)
            if old != new:
                raise ValueError(f"{bundle_dir} {name}: the upgraded decoder translates differently: {old} vs {new}")
            log.info(
                "%s %s: alignment as align_query.%d; %d check translations unchanged",
                bundle_dir,
                name,
                done[name],
                len(texts),
            )
        for name in done:
            shutil.copyfile(staged / variants[name]["decoder"].file, bundle_dir / variants[name]["decoder"].file)
        shutil.copyfile(staged / "manifest.json", bundle_dir / "manifest.json")
    return done


def _engine(bundle_dir: Path, variant: str) -> Translator:
    return Translator(bundle_dir, load_manifest(bundle_dir), resolve_providers("cpu"), threads=1, variant=variant)


def _check_texts(engine: Translator) -> list[str]:
    """CHECK_TEXTS as the model reads them: into each of the bundle's target languages in turn."""
    targets = sorted({target for _, target in engine.manifest.pairs()})
    return [engine.manifest.model_input(t, targets[i % len(targets)]) for i, t in enumerate(CHECK_TEXTS)]
