"""`pip install .` in a virtual environment gives the `topoat` command and ships the configs and studies: a
short training by config name from another folder."""

import importlib.metadata
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.dataset=synthetic",
    "data.args.shape=[1, 12, 12]",
    "data.args.train=128",
    "data.args.test=32",
    "data.val_size=32",
    "data.train_subset=null",
    "model.args={width: 4, feature_dim: 16}",
    "attack.steps=1",
    "optim.epochs=1",
    "optim.batch_size=32",
    "validation.n=32",
    "validation.attack_steps=1",
    "evaluation.n=32",
    "evaluation.attacks=[pgd-2]",
    "runtime.progress=false",
]


def _venv_seeing_this_environment(venv: Path) -> Path:
    """A fresh virtual environment that sees this interpreter's packages (torch and the rest), so installing
    topoat into it needs no network: what a user gets from `pip install .` in a venv of their own."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # a path line in a .pth joins sys.path without running that folder's own .pth files, so an editable
    # topoat of this environment stays out of the new one
    (Path(site_packages) / "_this_environment.pth").write_text("\n".join(ours) + "\n")
    return Path(site_packages)


def test_pip_install_gives_the_topoat_command_and_its_configs_in_another_folder(tmp_path):
    pip_version = tuple(int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    if pip_version < (22, 3):
        pytest.skip("pip install --python needs pip 22.3 or later")
    venv = tmp_path / "venv"
    site_packages = _venv_seeing_this_environment(venv)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-index"]
    installed = subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", str(REPO)], capture_output=True, text=True, timeout=300
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    shipped = {p.relative_to(site_packages / "topoat").as_posix() for p in (site_packages / "topoat").rglob("*.yaml")}
    in_checkout = {
        p.relative_to(REPO / "src" / "topoat").as_posix() for p in (REPO / "src" / "topoat" / "presets").rglob("*.yaml")
    }
    assert shipped == in_checkout and "presets/configs/fashion-mnist/pgd-at.yaml" in shipped

    # as after `. venv/bin/activate`: the command is on PATH, nothing points at the checkout
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args):
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    version = run("topoat", "--version")
    assert version.returncode == 0 and version.stdout.startswith("topoat 0.1.0 (torch "), version.stderr
    which = run("python", "-c", "import topoat; print(topoat.__file__)")
    assert which.stdout.startswith(str(site_packages))  # the installed copy runs, not the checkout
    sets = [arg for item in TINY for arg in ("--set", item)]
    trained = run("topoat", "train", "--config", "fashion-mnist/pgd-at", *sets, "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert (work / "run" / "results.json").is_file() and "wrote run (" in trained.stdout
