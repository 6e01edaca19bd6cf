"""The import rule: training/ and benchmarks/ use nothing of service/ but service.runtime;
service/ never imports training; service.runtime imports neither FastAPI nor torch, nor the
rest of service/ (read from the source, so any new import breaking the rule fails here)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> list[tuple[str, str]]:
    """(file, imported module) for every import in `package`, function-level ones too."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out += [(str(path.relative_to(ROOT)), a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out += [(str(path.relative_to(ROOT)), node.module)]
    return out


def _top(module: str) -> str:
    return module.split(".")[0]


# The benchmarks that measure a stage of the translation pipeline against the pipeline without it
# (placeholders, glossary terms: kept with and without) run the app in process and swap the stages.
PIPELINE_BENCHMARKS = {"benchmarks/placeholders.py", "benchmarks/glossary.py", "benchmarks/pipeline.py"}


@pytest.mark.parametrize("package", ["training", "benchmarks"])
def test_training_and_benchmarks_use_only_the_runtime_of_the_service(package):
    bad = [
        (f, m)
        for f, m in imports(package)
        if _top(m) == "service" and not m.startswith("service.runtime") and f not in PIPELINE_BENCHMARKS
    ]
    assert not bad, bad


def test_service_never_imports_training_and_the_runtime_is_torch_and_http_free():
    assert not [(f, m) for f, m in imports("service") if _top(m) == "training"]
    runtime = [(f, m) for f, m in imports("service/runtime")]
    assert runtime, "no imports read: wrong folder?"
    forbidden = {"torch", "fastapi", "starlette", "uvicorn", "training"}
    assert not [(f, m) for f, m in runtime if _top(m) in forbidden]
    assert not [(f, m) for f, m in runtime if _top(m) == "service" and not m.startswith("service.runtime")]
