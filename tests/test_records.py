"""Typed records: results.json entries and checkpoints read into dataclasses and written back unchanged."""

import copy
import json

import pytest
import torch
from conftest import tiny_config

from topoat import build_model
from topoat.errors import TopoatError
from topoat.runs.checkpoint import (
    CheckpointRecord,
    load_checkpoint,
    model_record,
    read_checkpoint,
    write_checkpoint,
)
from topoat.runs.results import (
    CheckpointScores,
    ResultEntry,
    ResultsFile,
    added_term,
    format_table,
    read_results,
    weights_label,
    write_results,
)
from topoat.training.loop import Trainer

TOPOLOGY = {
    "teacher": "std/last.pt",
    "lambda_nat": 1.0,
    "lambda_adv": 1.0,
    "kernel": "softmax-cosine",
    "temperature": 0.1,
    "perplexity": 30.0,
    "layer": "features",
    "teacher_layer": None,
    "class_aware": "off",
    "memory_bank": 0,
    "global_graph": False,
    "attack_uses_topology": False,
    "divergence": "forward",
    "entropy_weight": 0.0,
    "center": "none",
    "clean_batchnorm": "train",
    "warmup_epochs": 1.0,
    "balance": False,
    "teacher_perplexity": None,
    "diagnose_every": 0,
    "projection": 0,
}

# A run's results.json as `topoat train` wrote it before the records were typed (provenance shortened).
WRITTEN = {
    "dataset": "synthetic",
    "threat": {"norm": "Linf", "eps": 0.1},
    "runs": {
        "tiny": {
            "method": "pgd-at",
            "topology": TOPOLOGY,
            "method_config": {"beta": 6.0, "natural_weight": 0.0, "awp": None},
            "distillation": None,
            "checkpoint": "last.pt",
            "natural_acc": 0.15625,
            "robust_acc": {"pgd-3": 0.15625},
            "train_seconds": 4.053,
            "n_eval": 64,
            "eval_seconds": {"pgd-3": 0.01},
            "best": {
                "checkpoint": "best.pt",
                "epoch": 1,
                "natural_acc": 0.09375,
                "robust_acc": {"pgd-3": 0.078125},
                "eval_seconds": {"pgd-3": 0.01},
            },
        }
    },
    "provenance": {"topoat": "0.x"},
}

# A study's, with every optional key: AutoAttack on fewer images, a best.pt that is the last checkpoint,
# a sanity report merged in by `topoat eval --results`, distillation, and a failed run.
STUDY = {
    "dataset": "synthetic",
    "threat": {"norm": "L2", "eps": 0.5},
    "runs": {
        "kd": {
            "method": "awp-trades",
            "topology": None,
            "method_config": {"beta": 6.0},
            "distillation": {"teacher": "t.pt", "lambda": 2.0, "temperature": 4.0},
            "checkpoint": "kd/last.pt",
            "natural_acc": 0.5,
            "robust_acc": {"aa:apgd-ce+apgd-t": 0.25, "worst": 0.25},
            "train_seconds": 10.0,
            "n_eval": 64,
            "n_by_attack": {"aa:apgd-ce+apgd-t": 32},
            "autoattack_subset": {"n": 32, "natural_acc": 0.5},
            "eval_seconds": {"aa:apgd-ce+apgd-t": 3.0},
            "best": {
                "checkpoint": "kd/best.pt",
                "epoch": 2,
                "natural_acc": 0.5,
                "robust_acc": {"aa:apgd-ce+apgd-t": 0.25, "worst": 0.25},
                "n_by_attack": {"aa:apgd-ce+apgd-t": 32},
                "autoattack_subset": {"n": 32, "natural_acc": 0.5},
                "eval_seconds": {"aa:apgd-ce+apgd-t": 3.0},
                "same_as_last": True,
                "sanity": {"passed": True, "failed": []},
            },
            "sanity": {"passed": False, "failed": ["transfer"]},
        }
    },
    "provenance": {"topoat": "0.x"},
    "failed": {"diverges": "training diverged in epoch 1"},
}


@pytest.mark.parametrize("document", [WRITTEN, STUDY])
def test_a_results_json_reads_into_records_and_writes_back_unchanged(tmp_path, document):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    results = read_results(path)
    assert results.to_dict() == document
    write_results(results, tmp_path / "again.json")
    if document is WRITTEN:  # as training writes it, key order as well (a merge appends its keys)
        assert (tmp_path / "again.json").read_text() == path.read_text()


def test_an_old_results_entry_without_the_later_keys_still_reads():
    old = {"method": "pgd-at", "topology": None, "checkpoint": "last.pt", "natural_acc": 0.5, "robust_acc": {}}
    entry = ResultEntry.from_dict(dict(old, future_key=[1]))
    assert entry.method_config is None and entry.n_eval is None and entry.best is None
    assert entry.to_dict()["future_key"] == [1]  # a key of a later version is kept


def test_the_scores_of_last_and_best_come_from_one_place():
    entry = ResultsFile.from_dict(copy.deepcopy(WRITTEN)).runs["tiny"]
    assert entry.scores("last") is entry.last and entry.last.natural_acc == 0.15625
    best = entry.scores("best")
    assert isinstance(best, CheckpointScores) and best.epoch == 1 and best.robust_acc == {"pgd-3": 0.078125}
    assert list(entry.checkpoints) == ["last", "best"]
    alone = ResultEntry("standard", CheckpointScores("last.pt", 0.9))
    assert alone.scores("best") is None and alone.scores_or_last("best") is alone.last
    with pytest.raises(ValueError, match="'last' or 'best'"):
        entry.scores("final")


def test_what_a_run_adds_to_its_base_method_is_one_label():
    train = ResultEntry.from_dict(WRITTEN["runs"]["tiny"])
    assert added_term(train) == "TRAIN softmax-cosine T=0.1, λ=1"
    kd = ResultEntry.from_dict(STUDY["runs"]["kd"])
    assert added_term(kd) == "distillation T=4, λ=2"
    assert added_term(ResultEntry("pgd-at", CheckpointScores())) == ""
    assert weights_label({"lambda_nat": 1, "lambda_adv": 6}) == "λnat=1, λadv=6" and weights_label(None) == "λ=0"
    table = format_table({"tiny": train, "kd": STUDY["runs"]["kd"]})
    assert "TRAIN softmax-cosine T=0.1, λ=1" in table and "tiny (best@1)" in table
    assert "aa:apgd-ce+apgd-t: on a fixed 32 of the 64 test images" in table


@pytest.mark.parametrize(
    "change,says",
    [
        ({"natural_acc": "high"}, "'natural_acc' must be a number"),
        ({"best": {"robust_acc": {"pgd": "x"}}}, "'best.robust_acc' must be a mapping"),
        ({"topology": 3}, "'topology' must be a mapping or null"),
    ],
)
def test_a_damaged_entry_is_one_line_naming_the_key(tmp_path, change, says):
    document = copy.deepcopy(WRITTEN)
    document["runs"]["tiny"].update(change)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TopoatError, match=says):
        read_results(path)


def test_checkpoints_written_by_training_read_into_records_and_write_back_unchanged(tmp_path):
    run = tmp_path / "run"
    Trainer.from_config(tiny_config(**{"optim.epochs": 1}), run).run()
    for name, kind in (("last.pt", "resume"), ("best.pt", "validation")):
        written = load_checkpoint(run / name)
        record = read_checkpoint(run / name)
        assert getattr(record, kind) is not None and record.epoch == 1 and record.dataset == "synthetic"
        again = record.to_dict()
        assert list(again) == list(written)  # the same keys in the same order
        assert all(torch.equal(v, written["model_state"][k]) for k, v in again["model_state"].items())
        write_checkpoint(record, tmp_path / name)
        assert read_checkpoint(tmp_path / name).to_dict().keys() == written.keys()
    last = read_checkpoint(run / "last.pt")
    assert last.resume is not None and last.resume.step == 0 and last.resume.best["epoch"] == 1
    assert last.is_training_checkpoint and not read_checkpoint(run / "best.pt").is_training_checkpoint


def test_a_last_checkpoint_as_training_wrote_it_before_the_records_were_typed_round_trips():
    model = build_model("small-cnn", 10, 1, [0.5], [0.25], width=4, feature_dim=16)
    state = model_record(model, "small-cnn", {"width": 4, "feature_dim": 16}, 10, 1, (12, 12))
    state.update(  # the keys and order of the training loop's checkpoint dict
        {
            "config": {"name": "tiny"},
            "dataset": "synthetic",
            "optimizer": {"state": {}, "param_groups": []},
            "objective": {},
            "epoch": 1,
            "step": 3,
            "perm": torch.arange(8),
            "rng": {"torch": torch.get_rng_state()},
            "data_rng": torch.Generator().get_state(),
            "best": {"metric": 0.25, "epoch": 1},
            "train_seconds": 1.5,
            "epoch_totals": {"sums": {"loss": torch.tensor(2.0)}, "n_seen": torch.tensor(8.0), "seconds": 0.5},
            "last_record": {"epoch": 1, "loss": 0.5},
        }
    )
    record = CheckpointRecord.from_dict(state)
    assert record.resume is not None and record.resume.step == 3 and record.step == 3 and record.extra == {}
    again = record.to_dict()
    assert list(again) == list(state)
    for key, value in state.items():
        assert again[key] is value or again[key] == value, key  # nothing converted on the way


def test_a_hand_made_checkpoint_keeps_its_own_keys():
    model = {"format": "topoat-checkpoint", "version": 1, "arch": "small-cnn", "arch_args": {}}
    d = {**model, "epoch": "three", "notes": ["made by hand"]}
    record = CheckpointRecord.from_dict(d)
    assert record.epoch is None and record.resume is None and record.arch == "small-cnn"
    assert record.to_dict() == d
    damaged = CheckpointRecord.from_dict({**model, "optimizer": {}, "epoch": 1})  # a last.pt without the rest
    assert damaged.resume is None and damaged.is_training_checkpoint and damaged.to_dict()["optimizer"] == {}
