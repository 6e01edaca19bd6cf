"""No pickle in any load path: the service reads ONNX, JSON and SentencePiece only; training
loads checkpoints with weights_only=True. Checked on the source (every load call) and at run
time (a checkpoint holding an arbitrary object is refused)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def calls(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                yield path, node, "import", names
            elif isinstance(node, ast.Call):
                yield path, node, "call", [ast.unparse(node.func)]


@pytest.mark.parametrize("package", ["service", "training"])
def test_no_pickle_imports_or_unsafe_loads(package):
    problems = []
    for path, node, kind, names in calls(package):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if kind == "import" and any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
            problems.append(f"{where} imports {names}")
        if kind == "call" and names[0] in ("torch.load", "np.load", "numpy.load"):
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if names[0] == "torch.load" and kwargs.get("weights_only") != "True":
                problems.append(f"{where} torch.load without weights_only=True")
            if names[0] != "torch.load" and kwargs.get("allow_pickle", "False") != "False":
                problems.append(f"{where} np.load with allow_pickle")
    assert not problems, problems


def test_service_never_imports_torch_or_loads_checkpoints():
    for path, _, kind, names in calls("service"):
        if kind == "import":
            assert not any(n.split(".")[0] == "torch" for n in names), path


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_an_arbitrary_object_is_refused(tmp_path):
    from training.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
