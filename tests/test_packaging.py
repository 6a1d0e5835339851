"""`pip install .` ships the configs and studies: a short training by config name from another folder."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.dataset=synthetic",
    "data.synthetic_shape=[1, 12, 12]",
    "data.synthetic_train=128",
    "data.synthetic_test=32",
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


def test_installed_package_trains_from_a_packaged_config_in_another_folder(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (site / "topoat" / "presets" / "configs" / "fashion-mnist" / "pgd-at.yaml").is_file()
    assert (site / "topoat" / "presets" / "studies" / "frontier.yaml").is_file()
    shipped = {p.relative_to(site / "topoat").as_posix() for p in (site / "topoat" / "presets").rglob("*.yaml")}
    in_checkout = {
        p.relative_to(REPO / "src" / "topoat").as_posix() for p in (REPO / "src" / "topoat" / "presets").rglob("*.yaml")
    }
    assert shipped == in_checkout
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def topoat(*args):
        return subprocess.run(
            [sys.executable, "-m", "topoat", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )

    listed = topoat("configs")
    assert listed.returncode == 0 and "fashion-mnist/pgd-at\n" in listed.stdout and "frontier" in listed.stdout
    sets = [arg for item in TINY for arg in ("--set", item)]
    run = topoat("train", "--config", "fashion-mnist/pgd-at", *sets, "--out", "run")
    assert run.returncode == 0, run.stderr
    which = subprocess.run(
        [sys.executable, "-c", "import topoat; print(topoat.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert which.stdout.startswith(str(site))  # the installed copy ran, not the checkout
    assert (work / "run" / "results.json").is_file()
