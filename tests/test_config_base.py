"""`base:` in a config file: one path or a list of them, relative to the file, merged left to right and then
the file's own keys; a cycle, a missing or malformed base is one line naming the file."""

from pathlib import Path

import pytest

from topoat.config import PRESETS, load_config, preset_names, read_config_yaml
from topoat.errors import TopoatError


def write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        path = folder / f"{name.replace('__', '/')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_bases_merge_left_to_right_section_by_section_then_the_file_own_keys(tmp_path):
    write(
        tmp_path,
        protocol="optim: {lr: 0.1, epochs: 7, milestones: [5, 6]}\nattack: {steps: 10}\nname: protocol\n",
        method="method: {name: trades, beta: 6.0}\noptim: {lr: 0.05, milestones: [3]}\nname: trades\n",
        child="base: [protocol.yaml, method.yaml]\nmethod: {beta: 2.0}\n",
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.method.name, cfg.method.beta) == ("trades", "trades", 2.0)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.milestones, cfg.attack.steps) == (0.05, 7, [3], 10)
    write(tmp_path, child="base: [method.yaml, protocol.yaml]\n")  # the other order: the protocol's keys win
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.method.name, cfg.optim.lr, cfg.optim.milestones) == ("protocol", "trades", 0.1, [5, 6])


def test_a_single_base_and_a_list_of_one_are_the_same(tmp_path):
    write(
        tmp_path,
        parent="optim: {lr: 0.2}\n",
        one="base: parent.yaml\nseed: 3\n",
        listed="base: [parent.yaml]\nseed: 3\n",
    )
    assert read_config_yaml(tmp_path / "one.yaml") == read_config_yaml(tmp_path / "listed.yaml")


def test_bases_nest_each_relative_to_its_own_file(tmp_path):
    write(
        tmp_path,
        root="optim: {epochs: 9}\nseed: 1\n",
        layers__method="base: ../root.yaml\nmethod: {name: mart}\n",
        layers__deep__extra="base: [../method.yaml]\nseed: 2\n",
        runs__child="base: [../layers/deep/extra.yaml, ../root.yaml]\nname: child\n",
    )
    cfg = load_config(tmp_path / "runs" / "child.yaml")
    # root.yaml comes in twice (through extra.yaml and directly): not a cycle, and the later one wins
    assert (cfg.name, cfg.method.name, cfg.optim.epochs, cfg.seed) == ("child", "mart", 9, 1)


def test_a_base_cycle_is_one_line(tmp_path):
    write(tmp_path, a="base: [ok.yaml, b.yaml]\n", b="base: [c.yaml]\n", c="base: a.yaml\n", ok="seed: 1\n")
    with pytest.raises(
        TopoatError, match=r"a.yaml: its base: chain comes back to it \(a.yaml -> b.yaml -> c.yaml -> a.yaml\)"
    ):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, itself="base: [itself.yaml]\n")
    with pytest.raises(TopoatError, match="comes back to it"):
        load_config(tmp_path / "itself.yaml")


def test_a_missing_base_names_the_file_that_asks_for_it(tmp_path):
    write(tmp_path, ok="seed: 1\n", child="base: [ok.yaml, layers/nowhere.yaml]\n")
    with pytest.raises(TopoatError, match=r"config file .*child.yaml: its base layers/nowhere.yaml is not found"):
        load_config(tmp_path / "child.yaml")


@pytest.mark.parametrize("base", ["[]", "[1]", "[ok.yaml, '']", "{a: ok.yaml}", "''", "[[ok.yaml]]"])
def test_a_malformed_base_is_one_line(tmp_path, base):
    write(tmp_path, ok="seed: 1\n", child=f"base: {base}\n")
    with pytest.raises(TopoatError, match="child.yaml: base must be the path of another config file or a list"):
        load_config(tmp_path / "child.yaml")


def test_an_empty_section_in_a_later_base_is_refused_naming_that_base(tmp_path):
    write(tmp_path, full="optim: {epochs: 3}\n", empty="optim:\nseed: 2\n", child="base: [full.yaml, empty.yaml]\n")
    with pytest.raises(TopoatError, match="empty.yaml: 'optim:' is empty, which would drop the optim section"):
        load_config(tmp_path / "child.yaml")


def test_layers_are_not_listed_as_configs_but_every_listed_config_loads_by_name():
    layers = sorted(p.relative_to(PRESETS / "configs") for p in (PRESETS / "configs").rglob("_*.yaml"))
    layers += sorted(p.relative_to(PRESETS / "configs") for p in (PRESETS / "configs" / "_methods").glob("*.yaml"))
    assert layers and not any(str(p.with_suffix("")) in preset_names("configs") for p in layers)
    assert "fashion-mnist/pgd-at" in preset_names("configs")
    assert load_config("fashion-mnist/pgd-at").method.name == "pgd-at"
    assert load_config("configs/fashion-mnist/pgd-at.yaml").name == "pgd-at"
