import pickle

import pytest
import torch

from topoat import build_model, load_model
from topoat.config import load_config
from topoat.errors import TopoatError
from topoat.runs.checkpoint import load_checkpoint, model_record, save_atomic


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(TopoatError, match="unknown key 'optim.lrate'"):
        load_config(data={"optim": {"lrate": 0.1}})
    with pytest.raises(TopoatError, match="optim.epochs must be an integer"):
        load_config(data={"optim": {"epochs": "ten"}})
    with pytest.raises(TopoatError, match="topology.kernel must be one of"):
        load_config(data={}, overrides=["topology.kernel=rbf"])
    with pytest.raises(TopoatError, match="attack: eps must be a finite number >= 0"):
        load_config(data={}, overrides=["attack.eps=-1"])
    with pytest.raises(TopoatError, match="key=value"):
        load_config(data={}, overrides=["nonsense"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(TopoatError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(TopoatError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_create_sections():
    cfg = load_config(data={}, overrides=["topology.lambda_nat=5", "optim.milestones=[1, 2]", "attack.eps=0.25"])
    assert cfg.topology.lambda_nat == 5.0 and cfg.topology.lambda_adv == 10.0
    assert cfg.optim.milestones == [1.0, 2.0] and cfg.attack.eps == 0.25
    assert load_config(data={"topology": {}}, overrides=["topology=null"]).topology is None


def make_checkpoint(path):
    model = build_model("small-cnn", 10, 1, [0.3], [0.4], width=4)
    save_atomic(model_record(model, "small-cnn", {"width": 4}, 10, 1), path)
    return model


def test_checkpoint_roundtrip(tmp_path):
    path = tmp_path / "m.pt"
    model = make_checkpoint(path)
    loaded = load_model(path)
    assert not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(loaded(x), model.eval()(x))
    assert loaded.mean.item() == pytest.approx(0.3)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary files left


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_hostile_and_broken_checkpoints_are_refused(tmp_path):
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": "topoat-checkpoint", "payload": Exploit()}, hostile)
    with pytest.raises(TopoatError, match="refusing"):
        load_checkpoint(hostile)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(TopoatError):
        load_checkpoint(raw)
    good = tmp_path / "good.pt"
    make_checkpoint(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(TopoatError, match="corrupt"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(TopoatError, match="not a topoat checkpoint"):
        load_checkpoint(other)
    with pytest.raises(TopoatError, match="not found"):
        load_model(tmp_path / "none.pt")


def test_documented_off_values_can_be_written_bare(tmp_path):
    # YAML 1.1 reads a bare `off` as False: the documented value must still be accepted
    path = tmp_path / "c.yaml"
    path.write_text(
        "runtime: {amp: off, channels_last: on}\ntopology: {class_aware: off}\ndata: {augment: {flip: 'on'}}\n"
    )
    cfg = load_config(path)
    assert cfg.runtime.amp == "off" and cfg.runtime.channels_last == "on"
    assert cfg.topology.class_aware == "off" and cfg.data.augment.flip is True
    with pytest.raises(TopoatError, match="runtime.amp must be one of 'auto', 'off', 'bf16', got True"):
        load_config(data={"runtime": {"amp": True}})  # `on` is not one of amp's values


@pytest.mark.parametrize(
    "override,message",
    [
        ("attack.eps=.nan", "attack.eps must be a number, got nan"),
        ("attack.eps=.inf", "attack: eps must be a finite number >= 0, got inf"),
        ("attack.eps=8", r"attack: Linf eps must be <= 1 \(images are in \[0, 1\]\), got 8"),
        ("attack.step_size=.inf", "attack.step_size must be > 0 and finite"),
        ("evaluation.step_size=.nan", "evaluation.step_size must be a number"),
        ("optim.momentum=-0.9", "optim.momentum must be >= 0 and finite"),
        ("optim.weight_decay=-0.0001", "optim.weight_decay must be >= 0 and finite"),
        ("optim.lr=.inf", "optim.lr must be > 0 and finite"),
        ("runtime.threads=-2", "runtime.threads must be >= 1"),
        ("runtime.threads=0", "runtime.threads must be >= 1"),
        ("validation.n=0", "validation.n must be >= 1"),
        ("data.augment.crop_padding=-2", "data.augment.crop_padding must be >= 0"),
        ("topology.kernel=perplexity", "perplexity 30 needs a graph of more than 31 samples"),
        ("topology.lambda_adv=.inf", "topology.lambda_nat and lambda_adv must be >= 0 and finite"),
    ],
)
def test_meaningless_numbers_are_refused(override, message):
    with pytest.raises(TopoatError, match=message):
        load_config(data={}, overrides=[override, "optim.batch_size=16"])


def test_l2_eps_above_one_is_allowed():
    assert load_config(data={}, overrides=["attack.norm=L2", "attack.eps=1.5"]).attack.eps == 1.5


def test_bytes_that_are_no_torch_file_are_called_so(tmp_path):
    for name, data in (("random.pt", bytes(range(7, 256)) * 8), ("text.pt", b"hello world"), ("empty.pt", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(TopoatError, match="not a torch checkpoint"):
            load_checkpoint(path)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("normalization", None, "'normalization' is missing"),
        ("normalization", "x", "'normalization' must be a mapping of mean and std lists"),
        ("model_state", None, "'model_state' is missing"),
        ("model_state", [1, 2], "'model_state' must be a mapping of names to tensors"),
        ("num_classes", None, "'num_classes' is missing"),
        ("num_classes", "ten", "'num_classes' must be an integer >= 1"),
        ("num_classes", 0, "'num_classes' must be an integer >= 1"),
        ("in_channels", 1.0, "'in_channels' must be an integer >= 1"),
        ("arch", None, "'arch' is missing"),
        ("arch_args", "x", "'arch_args' must be a mapping"),
        ("image_size", [28], "'image_size' must be \\[height, width\\]"),
    ],
)
def test_damaged_checkpoint_records_name_the_key(tmp_path, key, value, message):
    good = tmp_path / "good.pt"
    make_checkpoint(good)
    record = load_checkpoint(good)
    if value is None:
        del record[key]
    else:
        record[key] = value
    bad = tmp_path / "bad.pt"
    save_atomic(record, bad)
    with pytest.raises(TopoatError, match=message):
        load_model(bad)


def test_wrong_shape_weights_name_the_first_mismatching_key(tmp_path):
    path = tmp_path / "m.pt"
    make_checkpoint(path)
    record = load_checkpoint(path)
    record["model_state"]["body.0.weight"] = torch.zeros(8, 1, 3, 3)
    save_atomic(record, path)
    with pytest.raises(
        TopoatError,
        match=r"'body.0.weight' has shape \[8, 1, 3, 3\] in the checkpoint, "
        r"\[4, 1, 3, 3\] in the model",
    ):
        load_model(path)
    del record["model_state"]["head.bias"]
    record["model_state"]["body.0.weight"] = torch.zeros(4, 1, 3, 3)
    save_atomic(record, path)
    with pytest.raises(TopoatError, match="'head.bias' is missing"):
        load_model(path)


def test_a_config_can_start_from_a_base_config(tmp_path):
    from topoat.config import load_config

    (tmp_path / "base.yaml").write_text("name: base\nmethod: {name: trades, beta: 6.0}\noptim: {lr: 0.2, epochs: 7}\n")
    (tmp_path / "child.yaml").write_text(
        "base: base.yaml\nname: child\noptim: {lr: 0.05}\ntopology: {lambda_nat: 3.0, lambda_adv: 3.0}\n"
    )
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.name == "child" and cfg.method.name == "trades" and cfg.method.beta == 6.0
    assert cfg.optim.lr == 0.05 and cfg.optim.epochs == 7 and cfg.topology.lambda_nat == 3.0
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(TopoatError, match="comes back to it"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("base: [1]\n")
    with pytest.raises(TopoatError, match="base must be the path"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(TopoatError, match="not found"):
        load_config(tmp_path / "orphan.yaml")


def test_floats_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    # YAML 1.1 reads 5e-4 as a string: `must be a number, got '5e-4'`
    cfg = load_config(data={}, overrides=["optim.weight_decay=5e-4", "optim.lr=1e-3", "attack.eps=8e-2"])
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.attack.eps) == (5e-4, 1e-3, 8e-2)
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 2E-3\n  weight_decay: +1e-5\nname: 1e3x\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.name) == (2e-3, 1e-5, "1e3x")


def test_a_key_given_twice_is_refused_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  epochs: 3\n  lr: 0.01\n")
    with pytest.raises(TopoatError, match=r"c.yaml: key 'lr' appears twice \(the second at line 4\)"):
        load_config(path)
    path.write_text("optim: {lr: 0.1}\nseed: 1\noptim: {epochs: 2}\n")
    with pytest.raises(TopoatError, match="key 'optim' appears twice"):
        load_config(path)
    with pytest.raises(TopoatError, match="--set optim: key 'lr' appears twice"):
        load_config(data={}, overrides=["optim={lr: 0.1, lr: 0.2}"])


@pytest.mark.parametrize("section", ["optim", "topology"])
def test_an_empty_section_in_a_child_config_is_refused(tmp_path, section):
    (tmp_path / "base.yaml").write_text("optim: {epochs: 3, lr: 0.05}\ntopology: {lambda_nat: 5}\n")
    child = tmp_path / "child.yaml"
    child.write_text(f"base: base.yaml\n{section}:\nseed: 2\n")  # its keys lost: it dropped TRAIN or the optimiser
    with pytest.raises(TopoatError, match=f"child.yaml: '{section}:' is empty, which would drop the {section} section"):
        load_config(child)
    child.write_text("base: base.yaml\nseed: 2\n")
    assert load_config(child).optim.epochs == 3
    assert load_config(child, ["topology=null"]).topology is None  # dropping it on purpose


def test_damaged_pickle_bytes_give_one_line_and_no_torch_warning(tmp_path, recwarn):
    path = tmp_path / "r.pt"
    path.write_bytes(b"\x80" + bytes(range(256)) * 2)  # a pickle's first byte, then garbage
    with pytest.raises(TopoatError, match="r.pt"):
        load_checkpoint(path)
    assert not recwarn.list
