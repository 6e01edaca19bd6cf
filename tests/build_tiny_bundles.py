"""Writes the tiny bundles that the runtime and service tests load (tests/data/bundles), so
that those tests run without torch. Needs the training job (torch); run it again when the
bundle format or the graphs change:

    python -m tests.build_tiny_bundles
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.conftest import (
    TINY_BUNDLES,
    TINY_MODEL,
    _export_random,
    classification_config,
    make_parallel_corpus,
    make_tsv,
    translation_config,
)


def build(out: Path = TINY_BUNDLES) -> Path:
    import torch

    from tests.training.test_multilingual import make_multilingual, multilingual_config
    from training.checkpoint import model_config
    from training.config import config_from_dict
    from training.export import export_bundle
    from training.tasks import TOKENIZER_FILE, make_task, prepare_tokenizer
    from training.transformer import build_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        parallel, tsv = make_parallel_corpus(tmp / "parallel"), make_tsv(tmp / "tsv")
        staged = tmp / "bundles"
        runs = tmp / "runs"
        _export_random(translation_config(parallel), runs / "de-en", staged / "de-en", 1)
        # the same weights with a decoder of graph contract 2 (caches grown every step) that
        # computes its alignment weights itself, as bundles exported before session 10 do: the
        # engines serve both
        _export_random(
            translation_config(parallel),
            runs / "de-en",
            tmp / "contract2" / "de-en",
            1,
            static_cache=False,
            alignment_in_graph=True,
        )
        _export_random(translation_config(parallel, "en-de", "en", "de"), runs / "en-de", staged / "en-de", 2)
        _export_random(classification_config(tsv, epochs=15), runs / "sentiment", staged / "sentiment", 3, True)
        langid = config_from_dict(
            {
                "name": "langid",
                "task": "classification",
                "data": {"labels": ["de", "en"], "langid_sources": [f"de={parallel}", f"en={parallel}"]},
                "tokenizer": {"vocab_size": 60},
                "model": {**TINY_MODEL, "n_decoder_layers": 0},
                "train": {"amp": "off", "epochs": 2, "max_tokens": 512, "lr": 3e-3, "warmup_steps": 20, "patience": 0},
            }
        )
        _export_random(langid, runs / "langid", staged / "langid", 4, True)
        # A multilingual bundle (de-en, en-de, fr-en) on its own, for the pivot tests.
        cfg = multilingual_config(make_multilingual(tmp / "multi"))
        tok = prepare_tokenizer(cfg, runs / "multi")
        torch.manual_seed(7)
        model = build_model(model_config(cfg, tok)).eval()
        texts = [r[0] for r in make_task(cfg, tok).raw("valid")[:5]]
        export_bundle(model, cfg, runs / "multi" / TOKENIZER_FILE, tmp / "multi-bundles" / "multi", texts)
        rename_output(staged / "de-en", tmp / "broken" / "renamed-output", "logits", "scores")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        shutil.copytree(staged, out / "models")
        shutil.copytree(tmp / "multi-bundles", out / "multilingual")
        shutil.copytree(tmp / "broken", out / "broken")
        shutil.copytree(tmp / "contract2", out / "contract2")
    return out


def rename_output(bundle: Path, out: Path, old: str, new: str) -> None:
    """A copy of `bundle` whose fp32 decoder graph calls output `old` `new`, checksums updated:
    only the graph contract can tell (tests/runtime/test_graph_io.py)."""
    import json

    import onnx

    from service.runtime.bundle import sha256_file

    shutil.copytree(bundle, out)
    raw = json.loads((out / "manifest.json").read_text())
    raw["variants"] = {"fp32": raw["variants"]["fp32"]}
    raw["default_variant"] = "fp32"
    path = out / raw["variants"]["fp32"]["decoder"]["file"]
    graph = onnx.load(str(path))
    for node in graph.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    for output in graph.graph.output:
        if output.name == old:
            output.name = new
    onnx.save(graph, str(path))
    served = {g["file"] for g in raw["variants"]["fp32"].values()}
    for name in list(raw["files"]):
        if name.endswith(".onnx") and name not in served:
            (out / name).unlink()
            del raw["files"][name]
    raw["files"] = {name: sha256_file(out / name) for name in raw["files"]}
    (out / "manifest.json").write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else TINY_BUNDLES))
