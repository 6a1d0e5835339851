"""What a new user meets in the first hour: where things were written, files others can read, pipes into
`head`, a report that compares only what is comparable, and options that explain themselves."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from topoat.cli import build_parser, main
from topoat.config import dump_config
from topoat.errors import TopoatError
from topoat.files import write_text_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_written_files_honour_the_umask_like_any_other_tool(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~_umask()
    # a umask other than this process's (which may be 077, giving mkstemp's 0600 anyway)
    script = "from topoat.files import write_text_atomic; import sys; write_text_atomic(sys.argv[1], 'x')"
    path = tmp_path / "b.txt"
    subprocess.run(
        [sys.executable, "-c", script, str(path)], check=True, timeout=120, preexec_fn=lambda: os.umask(0o027)
    )
    assert path.stat().st_mode & 0o777 == 0o640


def test_downloads_and_extracted_archives_honour_the_umask(tmp_path):
    """A shared data folder is read by others too."""
    import hashlib
    import tarfile

    from topoat.data.archive import download
    from topoat.data.extract import safe_extract

    (tmp_path / "src" / "inner").mkdir(parents=True)
    (tmp_path / "src" / "inner" / "x.txt").write_text("x")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "inner", arcname="inner")
    md5 = hashlib.md5((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    fetched = tmp_path / "data" / "a.tar.gz"
    download((tmp_path / "a.tar.gz").as_uri(), fetched, md5=md5, progress=False)
    assert fetched.stat().st_mode & 0o777 == 0o666 & ~_umask()
    extracted = safe_extract(fetched, tmp_path / "data" / "a")
    assert extracted.stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_train_says_where_it_wrote_and_its_files_are_readable(tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_config(tiny_config(**{"optim.epochs": 1, "evaluation.n": 16})))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    (said,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"wrote {out} (")]
    assert all(name in said for name in ("best.pt", "config.yaml", "last.pt", "metrics.jsonl", "results.json"))
    for name in ("results.json", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`topoat configs | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "topoat", "configs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # before the first line is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def test_sync_bn_on_a_cpu_is_a_warning_not_a_traceback(capsys):
    from topoat.training.build import _sync_batchnorm
    from topoat.training.distributed import DistContext

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    kept = _sync_batchnorm(model, torch.device("cpu"), DistContext(rank=0, world=2))
    assert kept is model and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in kept.modules())
    assert "warning: runtime.sync_bn needs CUDA" in capsys.readouterr().err
    _sync_batchnorm(model, torch.device("cpu"), DistContext(rank=1, world=2))
    assert capsys.readouterr().err == ""  # said once, by rank 0


def _run(name, cfg, natural, folder: Path, n_eval=64):
    from topoat.report import Run

    entry = {
        "method": cfg.method.name,
        "natural_acc": natural,
        "robust_acc": {"pgd-3": natural / 2},
        "topology": {"lambda_nat": 5.0, "lambda_adv": 5.0} if cfg.topology is not None else None,
        "n_eval": n_eval,
    }
    return Run(name, entry, folder / name, folder / name / "last.pt", {"norm": "Linf", "eps": 0.1}, cfg)


def test_report_pairs_train_only_with_a_base_run_trained_alike(tmp_path):
    from topoat.report import paired_section
    from topoat.report.tables import skipped_pairs_notes

    train = {"topology.teacher": "t.pt", "topology.lambda_nat": 5, "topology.lambda_adv": 5}
    base = _run("pgd-at", tiny_config(), 0.70, tmp_path)
    alike = _run("pgd-at-train", tiny_config(**train), 0.72, tmp_path)
    assert "| pgd-at-train − pgd-at | - (one run each) | +2.00 | +1.00 |" in paired_section([base, alike])
    assert skipped_pairs_notes([base, alike]) == []

    # single run folders: a TRAIN run on 300 images for 2 epochs against PGD-AT on all of them for 1 epoch
    other = _run("pgd-at-train", tiny_config(**train, **{"data.train_subset": 150, "optim.epochs": 1}), 0.72, tmp_path)
    assert paired_section([base, other]) == ""
    (note,) = skipped_pairs_notes([base, other])
    assert note.startswith("`pgd-at-train` is not compared with `pgd-at`: they were not trained alike")
    assert "data.train_subset 150 vs None" in note and "optim.epochs 1 vs 2" in note
    fewer = _run("pgd-at-train", tiny_config(**train), 0.72, tmp_path, n_eval=32)
    assert "test images 32 vs 64" in skipped_pairs_notes([base, fewer])[0]


def test_report_md_names_a_skipped_pair(tmp_path):
    from topoat.report.write import _results_part

    base = _run("pgd-at", tiny_config(), 0.70, tmp_path)
    other = _run("pgd-at-train", tiny_config(**{"topology.teacher": "t.pt", "seed": 3}), 0.72, tmp_path)
    text = "\n".join(_results_part([base, other], {}))
    assert "TRAIN minus its base method" not in text and "seed 3 vs 0" in text


def test_every_option_of_every_command_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    missing = [
        f"{name} {a.option_strings[0]}"
        for name, parser in sub.choices.items()
        for a in parser._actions
        if a.option_strings and a.help is None and a.dest != "help"
    ]
    assert missing == []


TINY_DATA = [
    "data.dataset=synthetic",
    "data.args.shape=[1, 12, 12]",
    "data.args.train=128",
    "data.args.test=32",
    "data.val_size=32",
    "model.args={width: 4, feature_dim: 16}",
    "optim.epochs=1",
    "optim.batch_size=32",
    "validation.n=32",
    "evaluation.n=32",
    "evaluation.attacks=[pgd-2]",
]


def test_teacher_trains_the_packaged_standard_model_in_one_command(tmp_path, capsys):
    from topoat import load_model
    from topoat.runs.checkpoint import load_checkpoint

    out = tmp_path / "teacher"
    sets = [arg for item in TINY_DATA for arg in ("--set", item)]
    assert main(["teacher", "--dataset", "fashion-mnist", *sets, "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    record = load_checkpoint(out / "last.pt")
    assert record["config"]["method"]["name"] == "standard" and record["config"]["name"] == "standard"
    assert record["config"]["topology"] is None and record["config"]["attack"]["eps"] == 0.1
    load_model(out / "last.pt")  # what the README's training loop loads
    assert main(["teacher", "--dataset", "mnist", "--out", str(tmp_path / "x")]) == 2
    assert (
        "no packaged standard config for 'mnist'; choose from cifar10, cifar10-jpg, cifar10/wrn-34-10, cifar100, "
        "fashion-mnist, tiny-imagenet" in capsys.readouterr().err
    )
    # the teacher as a plain state_dict: `eval` reads back the JSON `export` wrote beside it
    weights = tmp_path / "exported" / "teacher.pt"
    weights.parent.mkdir()
    assert main(["export", str(out / "last.pt"), str(weights)]) == 0
    scores = []
    for model in (out / "last.pt", weights):
        report = tmp_path / f"{model.stem}-{model.parent.name}.json"
        argv = ["eval", str(model), "--n", "16", "--attacks", "pgd-2", "--json", str(report), "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
        document = json.loads(report.read_text())
        scores.append((document["dataset"], document["eps"], document["natural_acc"], document["robust_acc"]))
    assert scores[0] == scores[1]
    assert "note: small-cnn rebuilt as " in capsys.readouterr().out
    # without its JSON, a plain state_dict is an error that says what to give
    weights.with_suffix(".json").unlink()
    assert main(["eval", str(weights), "--n", "16"]) == 2
    assert "is a plain state_dict, not a topoat checkpoint: give its architecture" in capsys.readouterr().err


MODULE = """
import torch
from topoat import build_model


def build():
    return build_model("small-cnn", 10, 1, [0.5], [0.25], width=8, feature_dim=32)
"""


def test_benchmark_gives_the_numbers_topoat_eval_prints(tmp_path, monkeypatch, capsys):
    """One call on any [0, 1] -> logits module: the CLI's seeded subset, attacks and random starts."""
    from conftest import train_undefended

    from topoat import benchmark

    model, _, _ = train_undefended(epochs=3, shape=(1, 28, 28))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "mymodels.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)  # the module is found in the current folder, as `python -m` would find it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    argv = ["eval", "weights.pt", "--model", "mymodels:build", "--dataset", "synthetic", "--eps", "0.1"]
    argv += ["--n", "100", "--attacks", "pgd-3,fgsm", "--json", "cli.json", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    cli = json.loads((tmp_path / "cli.json").read_text())

    res = benchmark(model, "synthetic", eps=0.1, attacks=["pgd-3", "fgsm"], n=100)
    assert res.natural_acc == cli["natural_acc"] and res.robust_acc == cli["robust_acc"]
    assert res.natural_acc > 0.5 and res.robust_acc["pgd-3"] < res.natural_acc  # the numbers mean something
    # the dataset's own threat model by default; a subset of another seed gives other images
    with pytest.raises(TopoatError, match="benchmark: give eps"):
        benchmark(model, "synthetic")
    from topoat.evaluation.accuracy import _packaged_radius

    assert _packaged_radius("fashion-mnist", "Linf") == 0.1 and _packaged_radius("cifar10", "Linf") == 8 / 255
    assert benchmark(model, "synthetic", eps=0.1, n=100, seed=1).natural_acc != res.natural_acc


class _Writer:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is an optional extra)."""

    scalars: list = []

    def __init__(self, log_dir):
        pass

    def add_text(self, tag, text):
        pass

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        pass


def test_tensorboard_gets_per_step_scalars_as_well_as_per_epoch(tmp_path, monkeypatch):
    import types

    from topoat.training.loop import Trainer

    _Writer.scalars = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_Writer))
    monkeypatch.setattr("topoat.training.loop.GUARD_EVERY", 3)  # flushes inside the epoch as well as at its end
    trainer = Trainer.from_config(tiny_config(**{"optim.epochs": 2, "runtime.tensorboard": True}), tmp_path / "run")
    trainer.run()
    steps = 2 * len(trainer.loader)
    by_tag: dict = {}
    for tag, value, step in _Writer.scalars:
        by_tag.setdefault(tag, []).append((step, value))
    for tag in ("step/loss", "step/lr", "step/seconds"):
        assert [s for s, _ in by_tag[tag]] == list(range(1, steps + 1)), tag
    assert all(v > 0 for _, v in by_tag["step/seconds"])
    lrs = [v for _, v in by_tag["step/lr"]]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < lrs[0]  # the cosine schedule, step by step
    assert all(isinstance(v, float) for _, v in by_tag["step/loss"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in by_tag["loss"]] == [1, 2]  # the epoch's scalars keep their names and epochs
    assert by_tag["loss"][1][1] == pytest.approx(lines[1]["loss"])


REPORT_MD = """# topoat report: synthetic, Linf eps=0.1

Runs from `runs/x`. Accuracies in **percent**; see [the docs](https://example.org/docs) & <more>.

## Results

| run | natural | pgd-20 |
|---|---|---|
| pgd-at | 75.70 | 58.90 |
| **pgd-at-train − pgd-at** | +4.30 | - |

- `pgd-at-train` is not compared with `pgd-at`: seed 3 vs 0.

## Pictures

### Accuracy per epoch

![Accuracy per epoch](figures/accuracy.png)

Mean over seeds.
"""


def _report_folder(folder: Path) -> Path:
    """report.md and report.html as `topoat report` writes them, with a real (matplotlib) picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topoat.report.html import markdown_to_html

    (folder / "figures").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [0.5, 0.7, 0.8])
    fig.savefig(folder / "figures" / "accuracy.png")
    plt.close(fig)
    (folder / "report.md").write_text(REPORT_MD)
    page = folder / "report.html"
    page.write_text(markdown_to_html(REPORT_MD, folder))
    return page


class _Page:
    """What an HTML parser sees of a page: its tags, images, references and text."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.tags: list = []
        self.text: list = []
        page = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                page.tags.append((tag, dict(attrs)))

            def handle_data(self, data):
                page.text.append(data)

        parser = Parser()
        parser.feed(text)
        parser.close()


def test_report_html_is_one_self_contained_page(tmp_path):
    import base64

    page = _report_folder(tmp_path / "rep")
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    parsed = _Page(text)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 1 and images[0]["alt"] == "Accuracy per epoch"
    prefix = "data:image/png;base64,"
    assert images[0]["src"].startswith(prefix)
    png = base64.b64decode(images[0]["src"][len(prefix) :])
    assert png == (tmp_path / "rep" / "figures" / "accuracy.png").read_bytes()
    # nothing refers outside the page: no links, scripts, style sheets or frames; links keep their text
    references = [(tag, k, v) for tag, attrs in parsed.tags for k, v in attrs.items() if k in ("src", "href")]
    assert all(v.startswith("data:") for _, _, v in references)
    assert not {tag for tag, _ in parsed.tags} & {"script", "link", "iframe", "a", "object", "embed"}
    assert "http" not in re.sub(r'"data:[^"]*"', "", text)
    words = " ".join(parsed.text)
    assert "see the docs & <more>" in words and "topoat report: synthetic, Linf eps=0.1" in words
    assert [tag for tag, _ in parsed.tags].count("tr") == 3 and ("strong", {}) in parsed.tags
    assert ("li", {}) in parsed.tags and ("code", {}) in parsed.tags
    # a picture that is missing is said so, never a broken image
    (tmp_path / "rep" / "figures" / "accuracy.png").unlink()
    from topoat.report.html import markdown_to_html

    assert "picture accuracy.png is missing" in markdown_to_html(REPORT_MD, tmp_path / "rep")


# Loads report.html in a frame of the same folder and writes what the browser made of it into its own DOM,
# which `chromium --dump-dom` prints: the page's title, and each picture's decoded width (0: it did not render).
BROWSER_CHECK = """<!DOCTYPE html>
<html><body>
<iframe id="page" src="report.html"></iframe>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  document.body.dataset.result = JSON.stringify({
    title: doc.title,
    widths: Array.from(doc.images).map((img) => (img.complete ? img.naturalWidth : -1)),
    tables: doc.querySelectorAll("table").length,
  });
});
</script>
</body></html>
"""


def _chromium():
    found = [shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")]
    return next((path for path in found if path), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (apt-get install chromium)")
def test_report_html_renders_in_a_headless_browser(tmp_path):
    import html

    folder = tmp_path / "rep"
    _report_folder(folder)
    (folder / "check.html").write_text(BROWSER_CHECK)
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    argv += ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'p'}"]
    env = dict(os.environ, HOME=str(tmp_path))
    shown = subprocess.run(
        [*argv, "--dump-dom", (folder / "check.html").as_uri()], capture_output=True, text=True, timeout=180, env=env
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    found = re.search(r'data-result="([^"]*)"', shown.stdout)
    assert found, f"the page did not load: {shown.stdout[-1000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["title"] == "topoat report: synthetic, Linf eps=0.1" and result["tables"] == 1
    assert result["widths"] == [300]  # the picture decoded at its size (3 inches at 100 dpi)
    console = [line for line in shown.stderr.splitlines() if ":CONSOLE" in line and "report.html" in line]
    assert console == []  # the browser reported nothing from the page: no error, no warning
