"""Fault injection: a full or unwritable disk, signals at every stage, kills mid-write, torn files.

Each fault ends in one line and a folder that can be resumed or rerun; docs/RELIABILITY.md tabulates them.
Signals and kills run the CLI in a subprocess (a real handler, a real exit status) with a patch that sends
the signal at a chosen stage, so the tests are short and deterministic."""

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SignalAfter, tiny_config

import topoat
from topoat.cli import main
from topoat.config import dump_config
from topoat.errors import TopoatError
from topoat.runs.checkpoint import load_checkpoint
from topoat.runs.study import load_study
from topoat.training.loop import Trainer, TrainingInterrupted

SRC = str(Path(topoat.__file__).resolve().parents[1])
TIMING = {"seconds", "train_seconds"}


def write_config(tmp_path, **overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(tiny_config(**overrides)))
    return path


def run_topoat(argv, patch="", timeout=240):
    """`topoat ARGV` in a fresh interpreter after `patch` (Python source) has run."""
    code = (
        "import os, signal, sys\n"
        + textwrap.dedent(patch)
        + f"\nfrom topoat.cli import main\nsys.exit(main({[str(a) for a in argv]!r}))\n"
    )
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in [SRC, os.environ.get("PYTHONPATH")] if p)
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(lines):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines]


def interrupted_in_epoch_two(run, **overrides):
    """A 2-epoch run stopped mid-way through its second epoch (6 steps an epoch)."""
    trainer = Trainer.from_config(tiny_config(**overrides), run)
    trainer.objective = SignalAfter(trainer.objective, 9)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


# -- 1. a study's runs stay inside --out ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/x", "../x", "a/b", "..", ".", "", "a\\b"])
def test_study_refuses_run_names_that_are_not_plain_folder_names(tmp_path, name):
    write_config(tmp_path)
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": name, "config": "cfg.yaml"}]}))
    with pytest.raises(TopoatError, match="plain folder name"):
        load_study(spec)


def test_study_writes_nothing_outside_its_folder(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "../escaped", "config": "cfg.yaml"}]}))
    assert main(["study", str(spec), "--out", str(tmp_path / "study"), "--no-progress"]) == 2
    assert "plain folder name" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "study").exists()


# -- 2. a full or unwritable disk ---------------------------------------------------------------------


def fail_writes_under(monkeypatch, folder, name, after=0, error=errno.ENOSPC):
    """os.write fails with `error` for temporary files of `name` under `folder`, after `after` good files."""
    real_write, seen = os.write, set()

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(str(folder)) and Path(target).name.startswith(f".{name}."):
            seen.add(target)
            if len(seen) > after:
                raise OSError(error, os.strerror(error))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    cfg, run = write_config(tmp_path), tmp_path / "run"
    fail_writes_under(monkeypatch, tmp_path, "last.pt", after=1)  # epoch 1 saves, epoch 2 finds the disk full
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "no space left on device" in err and str(run / "last.pt") in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()  # space was freed
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert [r["epoch"] for r in records(run)] == [1, 2]


def test_a_failed_first_save_leaves_a_folder_that_can_be_rerun(tmp_path, monkeypatch, capsys):
    cfg, run = write_config(tmp_path), tmp_path / "run"
    fail_writes_under(monkeypatch, tmp_path, "last.pt")
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert "no space left on device" in one_line(capsys.readouterr().err)
    assert not (run / "last.pt").exists() and (run / "config.yaml").exists()
    monkeypatch.undo()
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    assert [r["epoch"] for r in records(run)] == [1, 2]


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs, where this user may mount one (root); skipped elsewhere."""
    disk = tmp_path / "small"
    disk.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


def test_a_real_full_disk_is_one_line_and_the_folder_can_be_rerun(tmp_path, small_disk, capsys):
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk, then free one page: config.yaml fits, a checkpoint does not
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - 4096))
    cfg, run = write_config(tmp_path, **{"optim.epochs": 1}), small_disk / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert "no space left on device" in one_line(capsys.readouterr().err)
    # a folder it made and trained nothing in goes again; anything left holds no temporary file
    assert not run.exists() or not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    filler.unlink()
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0


def test_torch_save_failing_is_one_line(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):  # what torch.save raises when the disk fills under it
        raise RuntimeError(
            "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    assert main(["train", "--config", str(write_config(tmp_path)), "--out", str(tmp_path / "run")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "cannot write" in err and "PytorchStreamWriter failed writing file" in err


def test_unwritable_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    real_mkstemp = tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(tmp_path / "run")):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    assert main(["train", "--config", str(write_config(tmp_path)), "--out", str(tmp_path / "run")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "cannot write" in err and "Permission denied" in err


def untrained_run_folder(study):
    """A study folder with one finished run of an untrained tiny model: enough for `topoat report`."""
    from topoat import build_model
    from topoat.runs.checkpoint import model_record, save_atomic

    run = study / "a"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(tiny_config()))
    model = build_model("small-cnn", 10, 1, [0.5], [0.25], width=4, feature_dim=16)
    save_atomic(model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, 10, 1, (12, 12)), run / "last.pt")
    entry = {"method": "standard", "topology": None, "checkpoint": "a/last.pt", "natural_acc": 0.1, "robust_acc": {}}
    document = {"dataset": "synthetic", "threat": {"norm": "Linf", "eps": 0.1}, "runs": {"a": entry}}
    (study / "results.json").write_text(json.dumps(document))
    return study


def test_report_onto_a_full_disk_is_one_line_and_leaves_no_truncated_figure(tmp_path, monkeypatch, capsys):
    study = untrained_run_folder(tmp_path / "study")
    old = study / "figures" / "tsne.png"
    old.parent.mkdir()
    old.write_bytes(b"the previous report's picture")
    fail_writes_under(monkeypatch, study, "tsne.png")
    argv = ["report", str(study), "--n", "32", "--k", "3", "--attack-steps", "1", "--tsne-points", "16"]
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert f"cannot write {old}: no space left on device" in err
    assert [p.name for p in old.parent.iterdir()] == ["tsne.png"]  # no torn or temporary file
    assert old.read_bytes() == b"the previous report's picture"


def chmod_is_enforced(folder: Path) -> bool:
    """False for root (and some file systems), where a read-only folder still takes new files."""
    probe = folder / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "x").write_text("x")
        return False
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)


def test_read_only_run_folder_is_one_line(tmp_path, capsys):
    if not chmod_is_enforced(tmp_path):
        pytest.skip("chmod does not stop this user (root) from writing")
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        assert main(["train", "--config", str(write_config(tmp_path)), "--out", str(run)]) == 2
    finally:
        run.chmod(0o755)
    assert "Permission denied" in one_line(capsys.readouterr().err)


# -- 3. signals at every stage -------------------------------------------------------------------------

KILL_AT = {
    "training": """
        import topoat.training.loop as t
        _step = t.Trainer.train_step
        def train_step(self, *a):
            if self.state.step == 2:
                os.kill(os.getpid(), SIGNUM)
            return _step(self, *a)
        t.Trainer.train_step = train_step
        """,
    "validation": """
        import topoat.training.loop as t
        _validated = t.Trainer.validated
        def validated_last(self):
            if self.state.epoch == self.cfg.optim.epochs:
                os.kill(os.getpid(), SIGNUM)
            return _validated(self)
        t.Trainer.validated = validated_last
        """,
    "evaluation": """
        import topoat.runs.scoring as r
        _evaluate_run = r.evaluate_run
        def evaluate_run(*a, **k):
            os.kill(os.getpid(), SIGNUM)
            return _evaluate_run(*a, **k)
        r.evaluate_run = evaluate_run
        """,
}


@pytest.mark.parametrize(
    "stage,signum,says",
    [
        ("training", signal.SIGTERM, "in epoch 1 of 2"),
        ("validation", signal.SIGTERM, "after epoch 2 of 2"),
        ("evaluation", signal.SIGTERM, "during the final evaluation"),
        ("evaluation", signal.SIGINT, "during the final evaluation"),
    ],
)
def test_a_signal_at_each_stage_stops_with_one_line_and_resumes_there(tmp_path, stage, signum, says):
    cfg, run = write_config(tmp_path), tmp_path / "run"
    proc = run_topoat(
        ["train", "--config", cfg, "--out", run], KILL_AT[stage].replace("SIGNUM", f"signal.{signum.name}")
    )
    assert proc.returncode == 128 + signum
    err = one_line(proc.stderr)
    assert signum.name in err and says in err and "--resume" in err
    assert not (run / "results.json").exists()
    saved = (run / "last.pt").read_bytes()
    proc = run_topoat(["train", "--out", run, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert (run / "results.json").is_file() and [r["epoch"] for r in records(run)] == [1, 2]
    if stage != "training":  # training was complete: the resume evaluates without training again
        assert (run / "last.pt").read_bytes() == saved


def test_study_stops_on_sigterm_during_evaluation_and_resumes_there(tmp_path):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec, out = tmp_path / "study.yaml", tmp_path / "study"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "pgd-at", "config": "cfg.yaml"}]}))
    patch = KILL_AT["evaluation"].replace("SIGNUM", "signal.SIGTERM")  # the study evaluates through runs too
    proc = run_topoat(["study", spec, "--out", out, "--no-progress"], patch)
    assert proc.returncode == 143
    assert "during the evaluation of run pgd-at" in one_line(proc.stderr)
    saved = (out / "pgd-at" / "last.pt").read_bytes()
    proc = run_topoat(["study", spec, "--out", out, "--no-progress", "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert (out / "pgd-at" / "last.pt").read_bytes() == saved
    assert "pgd-at" in json.loads((out / "results.json").read_text())["runs"]


def run_program(argv, patch="", timeout=240):
    """`topoat ARGV` as the program itself (what the console script and `python -m topoat` run: `main()`
    on sys.argv, which keeps its signal handlers to the end of the process), after `patch` has run."""
    code = f"import os, signal, sys\nsys.argv = {['topoat', *map(str, argv)]!r}\n" + textwrap.dedent(patch)
    return run_topoat(
        [], code + "\nfrom topoat.cli import main\nmain()\nsys.exit(99)  # main() ends the process\n", timeout
    )


SIGNAL_WHEN_TORCH_LOADS = """
    import importlib.abc
    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch":
                os.kill(os.getpid(), signal.SIGTERM)
            return None
    sys.meta_path.insert(0, Finder())
    """


def test_a_signal_while_torch_loads_is_one_line_and_writes_nothing(tmp_path):
    proc = run_program(
        ["train", "--config", write_config(tmp_path), "--out", tmp_path / "run"], SIGNAL_WHEN_TORCH_LOADS
    )
    assert proc.returncode == 143, proc.stderr  # the handler was in place before torch began to load
    assert one_line(proc.stderr) == "topoat: interrupted by SIGTERM while topoat was starting; nothing was written"
    assert not (tmp_path / "run").exists()


def caught_signals(pid: int) -> int:
    """The mask of signals process `pid` has handlers for (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status (Linux)")
def test_sigterm_as_soon_as_the_program_handles_it_is_one_line(tmp_path):
    """A real `python -m topoat`, sent SIGTERM the moment it has a handler: during its start (loading torch
    takes seconds). Before that moment the interpreter itself is still starting and the default kills it."""
    cmd = [
        sys.executable,
        "-m",
        "topoat",
        "train",
        "--config",
        str(write_config(tmp_path)),
        "--out",
        str(tmp_path / "r"),
    ]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in [SRC, os.environ.get("PYTHONPATH")] if p)
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)):
            time.sleep(0.001)
    except OSError:  # the process is gone
        pass
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and out == ""
    assert one_line(err) == "topoat: interrupted by SIGTERM while topoat was starting; nothing was written"


def test_sigterm_just_after_the_results_table_is_one_line(tmp_path):
    patch = """
        import topoat.runs.results as r
        _table = r.format_table
        def format_table(*a, **k):  # the run's results.json is written; the table is its last line
            os.kill(os.getpid(), signal.SIGTERM)
            return _table(*a, **k)
        r.format_table = format_table
        """
    run = tmp_path / "run"
    proc = run_program(["train", "--config", write_config(tmp_path, **{"optim.epochs": 1}), "--out", run], patch)
    assert proc.returncode == 143, proc.stderr
    says = f"topoat: interrupted by SIGTERM after training and evaluating; the run is complete: {run / 'results.json'}"
    assert one_line(proc.stderr) == says
    assert (run / "results.json").is_file()


def test_sigterm_while_the_program_ends_is_one_line(tmp_path):
    # was exit 143 without a word: the signal came during the interpreter's teardown of torch (seconds)
    proc = run_program(["configs"], "import atexit; atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))")
    assert proc.returncode == 143 and "fashion-mnist/pgd-at" in proc.stdout
    assert (
        one_line(proc.stderr) == "topoat: interrupted by SIGTERM after the command had ended; its outputs are complete"
    )


# -- 4. the record survives resumes, kills and torn lines ----------------------------------------------


def test_a_resumed_epoch_has_the_same_metrics_line_as_an_uninterrupted_one(tmp_path):
    Trainer.from_config(tiny_config(), tmp_path / "straight").run()
    interrupted_in_epoch_two(tmp_path / "stopped")
    Trainer.from_config(tiny_config(), tmp_path / "stopped", resume=True).run()
    assert untimed(records(tmp_path / "stopped")) == untimed(records(tmp_path / "straight"))


def test_sigkill_between_the_metrics_line_and_the_checkpoint_loses_no_line(tmp_path):
    cfg, run = write_config(tmp_path), tmp_path / "run"
    patch = """
        import topoat.runs.folder as f
        import topoat.training.checkpoints as c
        writes = []
        def die_before_the_second(write):  # epoch 1's metrics line and checkpoint: a kill between the two
            def wrapped(self, *a):
                writes.append(write.__name__)
                if len(writes) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return write(self, *a)
            return wrapped
        f.RunFolder.append_metrics = die_before_the_second(f.RunFolder.append_metrics)
        c.save_last = die_before_the_second(c.save_last)
        """
    proc = run_topoat(["train", "--config", cfg, "--out", run], patch)
    assert proc.returncode == -signal.SIGKILL
    proc = run_topoat(["train", "--config", cfg, "--out", run, "--resume"])
    assert proc.returncode == 0, proc.stderr
    assert [r["epoch"] for r in records(run)] == [1, 2]


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    cfg = write_config(tmp_path)
    run_topoat(["train", "--config", cfg, "--out", tmp_path / "straight"])
    run = tmp_path / "run"
    patch = """
        import topoat.files as f
        _write_all, calls = f._write_all, []
        def half_then_die(fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".last.pt."):
                calls.append(fd)
                if len(calls) == 2:  # epoch 2's checkpoint
                    _write_all(fd, data[:len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            _write_all(fd, data)
        f._write_all = half_then_die
        """
    proc = run_topoat(["train", "--config", cfg, "--out", run], patch)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    proc = run_topoat(["train", "--config", cfg, "--out", run, "--resume"])
    assert proc.returncode == 0, proc.stderr
    a, b = (load_checkpoint(r / "last.pt")["model_state"] for r in (tmp_path / "straight", run))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(records(run)) == untimed(records(tmp_path / "straight"))


def test_a_torn_metrics_line_is_repaired_on_resume(tmp_path):
    run = tmp_path / "run"
    interrupted_in_epoch_two(run)
    line = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(line[: len(line) // 2])  # epoch 1's line, cut by a kill or a full disk
    Trainer.from_config(tiny_config(), run, resume=True).run()
    assert [r["epoch"] for r in records(run)] == [1, 2]  # epoch 1's line comes back from the checkpoint


def test_a_broken_metrics_line_inside_the_file_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    interrupted_in_epoch_two(run)
    (run / "metrics.jsonl").write_text("not json\n" + (run / "metrics.jsonl").read_text())
    with pytest.raises(TopoatError, match="line 1 is not a metrics record"):
        Trainer.from_config(tiny_config(), run, resume=True)


# -- 6. no dead-end folders ------------------------------------------------------------------------------


def test_a_run_that_diverged_in_epoch_one_can_be_rerun_or_resumed(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TopoatError, match="diverged") as e:
        Trainer.from_config(tiny_config(**{"optim.max_loss": 1e-3}), run).run()
    assert "last.pt" not in str(e.value) and (run / "config.yaml").exists() and not (run / "last.pt").exists()
    Trainer.from_config(tiny_config(**{"optim.epochs": 1}), run).run()  # rerun into the same folder
    assert [r["epoch"] for r in records(run)] == [1]
    with pytest.raises(TopoatError, match="diverged"):
        Trainer.from_config(tiny_config(**{"optim.max_loss": 1e-3}), tmp_path / "again").run()
    Trainer.from_config(tiny_config(**{"optim.epochs": 1}), tmp_path / "again", resume=True).run()  # --resume starts it
    assert (tmp_path / "again" / "last.pt").is_file()


def test_a_study_with_a_config_error_can_be_rerun(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec, out = tmp_path / "study.yaml", tmp_path / "study"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "r", "config": "cfg.yaml", "set": ["optim.momentun=0"]}]}))
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert "momentun" in one_line(capsys.readouterr().err)
    assert not out.exists() or not any(out.iterdir())
    out.mkdir(exist_ok=True)
    (out / "study.yaml").write_text("left by an older topoat\n")  # a folder holding only the study file
    spec.write_text(yaml.safe_dump({"runs": [{"name": "r", "config": "cfg.yaml"}]}))
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 0


def test_study_resume_evaluates_a_run_again_when_its_results_json_is_corrupt(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec, out = tmp_path / "study.yaml", tmp_path / "study"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "r", "config": "cfg.yaml"}]}))
    assert main(["study", str(spec), "--out", str(out), "--no-progress"]) == 0
    results = out / "r" / "results.json"
    good = json.loads(results.read_text())
    results.write_text(results.read_text()[:40])
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "not valid JSON" in capsys.readouterr().out
    again = json.loads(results.read_text())["runs"]["r"]
    assert again["natural_acc"] == good["runs"]["r"]["natural_acc"]
    assert again["robust_acc"] == good["runs"]["r"]["robust_acc"]


# -- 6. two processes on one folder, and a teacher another process has not finished ---------------------


def started_topoat(argv, patch=""):
    """`topoat ARGV` in a second process that is stopped inside Trainer.run (its folder locked) until its
    stdin is closed; it prints "training" when it gets there."""
    pause = """
        import sys, topoat.training.loop
        _run = topoat.training.loop.Trainer.run
        def paused(self):
            print("training", flush=True)
            sys.stdin.read()
            return _run(self)
        topoat.training.loop.Trainer.run = paused
    """
    code = "import sys\n" + textwrap.dedent(pause) + textwrap.dedent(patch)
    code += f"\nfrom topoat.cli import main\nsys.exit(main({[str(a) for a in argv]!r}))\n"
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in [SRC, os.environ.get("PYTHONPATH")] if p)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    assert line == "training\n", line + proc.stderr.read()
    return proc


def test_a_second_process_on_a_run_folder_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path, **{"optim.epochs": 1})
    out = tmp_path / "run"
    first = started_topoat(["train", "--config", cfg, "--out", out, "--no-progress"])
    try:
        for argv in (["--config", str(cfg)], ["--resume"]):
            assert main(["train", *argv, "--out", str(out), "--no-progress"]) == 2
            assert f"run folder {out} is in use by another topoat process" in one_line(capsys.readouterr().err)
    finally:
        first.stdin.close()
    assert first.wait(120) == 0, first.stderr.read()
    assert json.loads((out / "results.json").read_text())["runs"]["tiny"]


def test_a_killed_process_leaves_no_lock(tmp_path, capsys):
    cfg = write_config(tmp_path, **{"optim.epochs": 1})
    out = tmp_path / "run"
    first = started_topoat(["train", "--config", cfg, "--out", out, "--no-progress"])
    first.kill()  # flock dies with its process: nothing stale to remove
    first.wait(30)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # its config.yaml was written


def teacher_study(tmp_path):
    write_config(tmp_path, **{"optim.epochs": 2})
    spec = tmp_path / "study.yaml"
    standard = {"name": "standard", "config": "cfg.yaml", "set": ["method.name=standard", "validation.attack_steps=0"]}
    student = {"name": "student", "config": "cfg.yaml", "teacher": "standard", "set": ["topology.lambda_nat=5"]}
    spec.write_text(yaml.safe_dump({"runs": [standard, student]}))
    return spec


def test_a_student_refuses_a_teacher_that_was_interrupted(tmp_path, capsys):
    spec, out = teacher_study(tmp_path), tmp_path / "study"
    interrupted_in_epoch_two(out / "standard", **{"method.name": "standard", "validation.attack_steps": 0})
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--runs", "student"]) == 2
    err = one_line(capsys.readouterr().err)
    assert "run student needs run standard, which is not finished" in err and "--runs standard" in err
    assert not (out / "student").exists()
    # the library refuses such a checkpoint as a teacher wherever it comes from
    with pytest.raises(TopoatError, match="unfinished run .stopped after epoch 1 of 2, step 3 of epoch 2"):
        Trainer.from_config(tiny_config(**{"topology.teacher": str(out / "standard" / "last.pt")}), tmp_path / "s")


def test_a_student_waits_for_its_teacher_trained_by_another_process(tmp_path, capsys, monkeypatch):
    spec, out = teacher_study(tmp_path), tmp_path / "study"
    done = tmp_path / "done"
    assert main(["study", str(spec), "--out", str(done), "--no-progress", "--runs", "standard"]) == 0
    (out / "standard").mkdir(parents=True)
    # another process holds the teacher's folder, finishes it a moment later (copies a finished run in), exits
    finisher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, shutil, time\n"
            f"fd = os.open({str(out / 'standard' / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(1)\n"
            f"shutil.copytree({str(done / 'standard')!r}, {str(out / 'standard')!r}, dirs_exist_ok=True)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert finisher.stdout.readline() == "locked\n"
    monkeypatch.setattr("topoat.runs.study.POLL_SECONDS", 0.05)
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--no-progress", "--resume", "--runs", "student"]) == 0
    assert finisher.wait(30) == 0
    said = capsys.readouterr().out
    assert said.count("waiting for run standard to finish (trained by another process)") == 1
    assert list(json.loads((out / "results.json").read_text())["runs"]) == ["standard", "student"]


# -- 7. commands that would replace a run's files ------------------------------------------------------


def test_export_onto_an_existing_file_needs_force(tmp_path, capsys):
    cfg, run = write_config(tmp_path, **{"optim.epochs": 1}), tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for target in ("last.pt", "config.pt", "best.pt"):  # config.pt's .json is free, config.yaml is not touched
        capsys.readouterr()
        if target == "config.pt":
            (run / "config.json").write_text("{}")
        assert main(["export", str(run / "last.pt"), str(run / target)]) == 2
        assert "exists; choose another name, or pass --force" in one_line(capsys.readouterr().err)
    (run / "config.json").unlink()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    assert main(["export", str(run / "last.pt"), str(tmp_path / "w.pt")]) == 0
    assert main(["export", str(run / "last.pt"), str(tmp_path / "w.pt")]) == 2
    assert main(["export", str(run / "last.pt"), str(tmp_path / "w.pt"), "--force"]) == 0


def test_a_study_is_not_run_inside_a_run_folder(tmp_path, capsys):
    cfg, run = write_config(tmp_path, **{"optim.epochs": 1}), tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    results = (run / "results.json").read_bytes()
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "r", "config": "cfg.yaml"}]}))
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(run), "--resume", "--no-progress"]) == 2
    assert f"{run} is a run's folder (it holds config.yaml), not a study folder" in one_line(capsys.readouterr().err)
    assert (run / "results.json").read_bytes() == results and not (run / "r").exists()


def test_train_does_not_replace_its_own_config_file_without_force(tmp_path, capsys):
    run = tmp_path / "exp"
    run.mkdir()
    user = "# my experiment\n" + dump_config(tiny_config(**{"optim.epochs": 1}))
    (run / "config.yaml").write_text(user)
    capsys.readouterr()
    for resume in ([], ["--resume"]):
        assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), *resume]) == 2
        assert "is the run folder's config.yaml, which the run replaces" in one_line(capsys.readouterr().err)
        assert (run / "config.yaml").read_text() == user
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--force"]) == 0
    # the resolved config it wrote is its own: a later start from it loses nothing and needs no --force
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--resume"]) == 0


# -- 8. smaller ways to lose work or be misled ------------------------------------------------------------


@pytest.mark.parametrize("name", ["yes", "12", "~", "results.json", "study.yaml", ".lock"])
def test_study_run_names_are_refused_before_anything_trains(tmp_path, name):
    write_config(tmp_path)
    spec = tmp_path / "study.yaml"
    spec.write_text(f"runs:\n  - name: {name}\n    config: cfg.yaml\n")
    says = "is not a string" if name in ("yes", "12", "~") else "a file the study folder holds itself"
    with pytest.raises(TopoatError, match=says):
        load_study(spec)
    spec.write_text(f"runs:\n  - name: '{name}'\n    config: cfg.yaml\n")  # quoted: a plain name
    if name in ("yes", "12", "~"):
        assert load_study(spec)[1][0].name == name


def test_a_repeated_metrics_line_is_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    interrupted_in_epoch_two(run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines + lines) + "\n")
    Trainer.from_config(tiny_config(), run, resume=True).run()
    assert [r["epoch"] for r in records(run)] == [1, 2]


def test_a_run_whose_data_fail_to_load_leaves_no_folder(tmp_path, capsys):
    cfg, run = write_config(tmp_path), tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--out", str(run), "--set", "data.dataset=npz", "--set", "data.args={}"]
    assert main([*argv, "--set", f"data.root={tmp_path / 'missing.npz'}"]) == 2
    assert "npz file not found" in one_line(capsys.readouterr().err)
    assert not run.exists()


def test_a_run_killed_while_loading_its_data_is_started_again_by_plain_resume(tmp_path):
    cfg, run = write_config(tmp_path, **{"optim.epochs": 1}), tmp_path / "run"
    killed = run_topoat(
        ["train", "--config", cfg, "--out", run, "--no-progress"],
        "import topoat.training.build\n"
        "topoat.training.build.dataset_from_config = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    assert killed.returncode == -signal.SIGKILL and not (run / "last.pt").exists()
    resumed = run_topoat(["train", "--out", run, "--resume", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in records(run)] == [1]


def test_study_resume_refuses_a_run_folder_that_is_a_link(tmp_path, capsys):
    write_config(tmp_path, **{"optim.epochs": 1})
    spec, out, elsewhere = tmp_path / "study.yaml", tmp_path / "study", tmp_path / "elsewhere"
    spec.write_text(yaml.safe_dump({"runs": [{"name": "r", "config": "cfg.yaml"}]}))
    out.mkdir()
    elsewhere.mkdir()
    (out / "r").symlink_to(elsewhere)
    assert main(["study", str(spec), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert f"study run folder {out / 'r'} is a symbolic link" in one_line(capsys.readouterr().err)
    assert not any(elsewhere.iterdir())
