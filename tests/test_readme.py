"""Every Python snippet in the README and in docs/*.md runs as pasted, so the documentation cannot rot.

The snippets read `make run`'s and `topoat teacher`'s checkpoints and Debian's Fashion-MNIST. Here the
checkpoints are fresh (untrained) models of the same shapes in a temporary working folder, and where
Fashion-MNIST is not installed, synthetic images of its shape stand in for it; the snippets' code itself runs verbatim.
"""

import importlib
import re
from pathlib import Path

import pytest

import topoat
from topoat.data.fashion_mnist import DEFAULT_ROOT, FILES
from topoat.data.synthetic import make_synthetic
from topoat.runs.checkpoint import model_record, save_atomic

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = [
    (document, snippet)
    for document in DOCUMENTS
    for snippet in re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.S)
]


def _fashion_mnist_installed() -> bool:
    return all((DEFAULT_ROOT / f).is_file() for f in FILES.values())


@pytest.fixture
def make_run_folder(tmp_path, monkeypatch):
    data = make_synthetic((1, 28, 28), 10, 1000, 100, 0)
    for name in ("main/standard", "main/pgd-at", "teacher"):
        model = topoat.build_model_for(data, "small-cnn")
        path = tmp_path / "runs" / name / "last.pt"
        path.parent.mkdir(parents=True)
        save_atomic(model_record(model, "small-cnn", {}, data.num_classes, data.in_channels), path)
    if not _fashion_mnist_installed():
        for module in (
            topoat,
            importlib.import_module("topoat.evaluation.accuracy"),
            importlib.import_module("topoat.evaluation.target"),
        ):  # benchmark() and evaluate_checkpoint() read their data themselves
            monkeypatch.setattr(module, "load_dataset", lambda name, *args, **kwargs: data)
    monkeypatch.chdir(tmp_path)


def test_the_readme_and_the_docs_have_python_snippets():
    assert sum(document == README for document, _ in SNIPPETS) >= 2
    assert any(document.name == "METHODS.md" for document, _ in SNIPPETS)


def _snippet_id(index: int) -> str:
    document = SNIPPETS[index][0]
    return f"{document.stem}-{sum(d == document for d, _ in SNIPPETS[:index])}"


@pytest.mark.parametrize("document, snippet", SNIPPETS, ids=[_snippet_id(i) for i in range(len(SNIPPETS))])
def test_documented_snippet_runs_as_pasted(document, snippet, make_run_folder, capsys):
    exec(compile(snippet, str(document), "exec"), {"__name__": "__readme__"})
