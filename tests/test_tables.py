"""The shared table helpers: aligned text tables and markdown tables."""

import pytest

from topoat.table_format import markdown_table, text_table


def test_text_table_pads_columns_and_rules_the_header():
    lines = text_table(["run", "natural"], [["standard", 91.5], ["at", "-"]]).splitlines()
    assert lines == [
        "run       natural",
        "--------  -------",
        "standard  91.5",  # the last column is padded, but no line ends in spaces
        "at        -",
    ]


def test_text_table_right_aligns_numbers_without_a_rule():
    header = ["attack", "images", "accuracy %"]
    lines = text_table(
        header,
        [["natural", "1000", "91.20"], ["pgd-20", "1000", "5.10"]],
        align="l" + "r" * (len(header) - 1),
        rule=False,
    ).splitlines()
    assert lines == ["attack   images  accuracy %", "natural    1000       91.20", "pgd-20     1000        5.10"]
    assert text_table(["a", "b"], [["xx", "y"]], align="r", gap=" | ").splitlines() == [" a | b", "-- | -", "xx | y"]


def test_markdown_table_and_its_alignment_row():
    assert markdown_table(["a", "b"], [["1", 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert markdown_table(["a", "b"], [], align="lr").splitlines()[1] == "|:--|--:|"


@pytest.mark.parametrize("align", ["lrr", "x", "lx"])
def test_alignment_must_name_each_column_or_all(align):
    with pytest.raises(ValueError, match="align"):
        text_table(["a", "b"], [], align=align)
