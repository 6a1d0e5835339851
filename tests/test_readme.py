"""Every Python snippet in the README runs as pasted, so the README cannot rot.

The snippets read `make run`'s checkpoints and Debian's Fashion-MNIST. Here the checkpoints are fresh
(untrained) models of the same shapes in a temporary working folder, and where Fashion-MNIST is not
installed, synthetic images of its shape stand in for it; the snippets' code itself runs verbatim.
"""

import re
from pathlib import Path

import pytest

import topoat
from topoat.checkpoint import model_record, save_atomic
from topoat.data.fashion_mnist import DEFAULT_ROOT, FILES
from topoat.data.synthetic import make_synthetic

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _fashion_mnist_installed() -> bool:
    return all((DEFAULT_ROOT / f).is_file() for f in FILES.values())


@pytest.fixture
def make_run_folder(tmp_path, monkeypatch):
    data = make_synthetic((1, 28, 28), 10, 1000, 100, 0)
    for name in ("standard", "pgd-at"):
        model = topoat.build_model_for(data, "small-cnn")
        path = tmp_path / "runs" / "main" / name / "last.pt"
        path.parent.mkdir(parents=True)
        save_atomic(model_record(model, "small-cnn", {}, data.num_classes, data.in_channels), path)
    if not _fashion_mnist_installed():
        monkeypatch.setattr(topoat, "load_dataset", lambda name, *args, **kwargs: data)
    monkeypatch.chdir(tmp_path)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs_as_pasted(snippet, make_run_folder, capsys):
    exec(compile(snippet, str(README), "exec"), {"__name__": "__readme__"})
