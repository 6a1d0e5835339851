"""Inputs far outside any sensible range (huge numbers, absurd sizes, devices the machine lacks, deep or
endless YAML, overlong paths) end in one line, `topoat: error: ...`, and exit status 2: never a traceback,
a hang, a crash or an attempt to allocate terabytes. docs/RELIABILITY.md lists each with its test."""

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from topoat.cli import main
from topoat.config import dump_config, load_config
from topoat.errors import TopoatError
from topoat.runtime import resolve_device


def write_config(tmp_path, **overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(tiny_config(**overrides)))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("topoat: error: ") and "Traceback" not in err, err
    return lines[0]


def train(tmp_path, *sets: str) -> int:
    argv = ["train", "--config", str(write_config(tmp_path)), "--out", str(tmp_path / "run")]
    return main(argv + [f"--set={item}" for item in sets])


# -- config values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,message",
    [
        (f"seed={2**70}", "seed must be an integer between -2\\*\\*63 and 2\\*\\*63"),
        (f"data.val_seed={10**23}", "data.val_seed must be an integer between"),
        ("data.val_seed=1.0e+23", "data.val_seed must be an integer, got 1e\\+23"),
        (f"evaluation.seed={-(2**63)}", "evaluation.seed must be an integer between"),
    ],
)
def test_seeds_beyond_64_bits_are_refused(override, message):
    with pytest.raises(TopoatError, match=message):
        load_config(data={}, overrides=[override])


def test_the_largest_seeds_are_accepted():
    cfg = load_config(data={}, overrides=[f"seed={2**63 - 1}", f"data.val_seed={-(2**63) + 1}"])
    assert cfg.seed == 2**63 - 1


@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_a_huge_seed_on_the_command_line_is_one_line(command, capsys):
    extra = ["--reference", "t.pt"] if command == "analyze" else []
    assert main([command, "m.pt", *extra, "--seed", str(2**70)]) == 2
    assert "--seed: a seed must be an integer between" in one_line_error(capsys)


@pytest.mark.parametrize(
    "sets,message",
    [
        (["seed=1180591620717411303424"], "config: seed must be an integer between"),
        (["data.args.shape=[1, 100000, 100000]"], "would need 12,293 GiB to make; the limit is 8 GiB"),
        (["data.args.train=1000000000000"], "synthetic images of shape \\[1, 12, 12\\]"),
        (["data.augment.crop_padding=100000"], "crop_padding 100000 must be smaller than the images \\(12x12\\)"),
        (["data.augment.crop_padding=12"], "crop_padding 12 must be smaller than the images"),
        (["runtime.threads=100000"], "runtime.threads 100000 is more than 4 per CPU of this machine"),
        (["runtime.device=meta"], "device 'meta' is not supported"),
    ],
)
def test_absurd_config_values_are_one_line_before_anything_is_allocated(tmp_path, capsys, sets, message):
    threads = torch.get_num_threads()
    assert train(tmp_path, *sets) == 2
    assert re.search(message, one_line_error(capsys))
    assert torch.get_num_threads() == threads


def test_a_crop_padding_smaller_than_the_images_is_accepted(tmp_path):
    assert tiny_config(**{"data.augment.crop_padding": 11}).data.augment.crop_padding == 11


@pytest.mark.parametrize("device", ["mps", "cuda", "cuda:0"])
def test_a_device_the_machine_lacks_is_one_line_in_train_and_eval(tmp_path, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train(tmp_path, f"runtime.device={device}") == 2
    assert f"device '{device}' requested but" in one_line_error(capsys)
    assert not (tmp_path / "run" / "last.pt").exists()
    assert main(["eval", str(tmp_path / "none.pt"), "--device", device]) == 2  # before the checkpoint is read
    assert f"device '{device}' requested but" in one_line_error(capsys)


def test_a_gpu_index_beyond_the_machines_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TopoatError, match="'cuda:7' requested but this machine has 1 GPU"):
        resolve_device("cuda:7")


# -- YAML ---------------------------------------------------------------------------------------------

HUGE_INT = "9" * 5000
DEEP_FLOW = "[" * 5000 + "]" * 5000
DEEP_BLOCK = "".join(" " * i + "k:\n" for i in range(1000))  # 500 kB


@pytest.mark.parametrize(
    "text,message",
    [
        (f"seed: {HUGE_INT}\n", "holds a value YAML cannot read: Exceeds the limit \\(4300 digits\\)"),
        (f"model: {{args: {{width: {DEEP_FLOW}}}}}\n", "nests deeper than 32 levels"),
        (DEEP_BLOCK, "nests deeper than 32 levels"),
        ("model: {args: {width: " + "[" * 40 + "]" * 40 + "}}\n", "nests deeper than 32 levels"),  # parses fine
        ("a: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n", "nests deeper than 32"),
        ("name: 2024-13-45\n", "holds a value YAML cannot read: month must be in 1..12"),
    ],
)
def test_hostile_yaml_files_are_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert re.search(f"config file {re.escape(str(path))} {message}", one_line_error(capsys))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", [HUGE_INT, DEEP_FLOW])
def test_hostile_yaml_values_on_the_command_line_are_one_line(tmp_path, capsys, value):
    assert train(tmp_path, f"model.args.width={value}") == 2
    assert "--set model.args.width " in one_line_error(capsys)
    assert main(["eval", "m.pt", "--arch", "small-cnn", "--num-classes", "10", "--arch-args", value]) == 2
    assert "eval: --arch-args " in one_line_error(capsys)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_config_file_is_refused_after_a_bounded_read(capsys):
    assert main(["train", "--config", "/dev/zero", "--out", "never"]) == 2
    assert "config file /dev/zero is larger than 1 MiB" in one_line_error(capsys)


def test_a_huge_config_file_is_refused_and_a_piped_one_is_read(tmp_path, capsys):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(2**31)  # sparse: 2 GiB that take no disk
    assert main(["train", "--config", str(huge), "--out", str(tmp_path / "run")]) == 2
    assert "is larger than 1 MiB" in one_line_error(capsys)
    read_end, write_end = os.pipe()  # what `--config <(...)` hands over
    os.write(write_end, write_config(tmp_path).read_bytes())
    os.close(write_end)
    try:
        assert main(["train", "--config", f"/dev/fd/{read_end}", "--print-config"]) == 0
    finally:
        os.close(read_end)
    assert "name: tiny" in capsys.readouterr().out


def test_yaml_nested_exactly_as_deep_as_allowed_loads():
    from topoat.yamltext import MAX_DEPTH, safe_load

    assert safe_load("[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH, "x") is not None
    with pytest.raises(TopoatError, match="nests deeper"):
        safe_load("[" * (MAX_DEPTH + 1) + "1" + "]" * (MAX_DEPTH + 1), "x")


# -- paths the file system refuses --------------------------------------------------------------------

LONG_NAME = "a" * 300  # a path component over NAME_MAX (255 bytes)
LONG_PATH = "/".join(["b" * 200] * 25)  # 5,024 characters: over PATH_MAX (4096)


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["train", "--config", "{cfg}", "--out", f"{{tmp}}/{LONG_NAME}"],
            "(aaa|last\\.pt) \\(3.. characters\\): File name too long",
        ),
        (
            ["train", "--config", "{cfg}", "--out", LONG_PATH],
            "(bbb\\.\\.\\.|last\\.pt) \\(5\\d\\d\\d characters\\): File name too long",
        ),
        (["train", "--config", f"{{tmp}}/{LONG_NAME}.yaml", "--out", "{tmp}/run"], "File name too long"),
        (["train", "--config", LONG_PATH, "--out", "{tmp}/run"], "\\(5\\d\\d\\d characters\\): File name too long"),
        (["eval", f"{{tmp}}/{LONG_NAME}.pt"], "File name too long"),
        (["eval", "{tmp}/m.pt", "--json", f"{{tmp}}/{LONG_NAME}/e.json"], "File name too long"),
        (["study", "{study}", "--out", LONG_PATH], "\\(5\\d\\d\\d characters\\): File name too long"),
    ],
)
def test_paths_too_long_for_the_file_system_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text("runs:\n  - {name: a, config: cfg.yaml}\n")
    values = {"cfg": str(write_config(tmp_path)), "tmp": str(tmp_path), "study": str(study)}
    assert main([a.format(**values) for a in argv]) == 2
    line = one_line_error(capsys)
    assert re.search(message, line) and len(line) < 500, line


def test_a_study_run_name_too_long_for_a_folder_is_refused_before_anything_runs(tmp_path, capsys):
    write_config(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(f"seeds: [0]\nruns:\n  - {{name: {'r' * 253}, config: cfg.yaml}}\n")  # 253 bytes + "-s0"
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 2
    assert f"run name {'r' * 40}... is 256 bytes long; a folder name takes at most 255" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


# -- models that give NaN -----------------------------------------------------------------------------


def checkpoint(path, nan=False, image_size=(28, 28)):
    from topoat import build_model
    from topoat.runs.checkpoint import model_record, save_atomic

    model = build_model("small-cnn", 10, 1, [0.5], [0.25], width=4, feature_dim=16)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    save_atomic(model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, 10, 1, image_size), path)
    return str(path)


@pytest.mark.parametrize("nan_model", ["checkpoint", "reference"])
def test_analyze_of_a_model_with_nan_weights_is_one_line(tmp_path, capsys, nan_model):
    model = checkpoint(tmp_path / "m.pt", nan=nan_model == "checkpoint")
    reference = checkpoint(tmp_path / "r.pt", nan=nan_model == "reference")
    argv = ["analyze", model, "--reference", reference, "--dataset", "synthetic", "--eps", "0.1"]
    assert main(argv + ["--n", "16", "--k", "3", "--attack-steps", "1"]) == 2
    nan_path = model if nan_model == "checkpoint" else reference
    assert f"checkpoint {nan_path} gives non-finite (NaN or infinite) features for 16 of 16 images" in one_line_error(
        capsys
    )
