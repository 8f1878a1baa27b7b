"""The shared table helpers, and the published figures the paper table prints."""

from __future__ import annotations

import pytest

from ddb import tables

# Test worst-group accuracy (%) as published: Waterbirds, CelebA, MetaShift (None: not
# published). DDB paper, arXiv:2503.17226, Table 1 (and its pruning ablation for DDB without
# pruning); GroupDRO from its own paper, Sagawa et al., ICLR 2020 (arXiv:1911.08731).
PAPER = {
    "erm": (74.6, 42.2, 67.0),
    "jtt": (86.7, 81.1, 64.6),
    "dfr": (92.9, 88.3, 72.8),
    "dac": (92.3, 81.9, 78.3),
    "lisa": (89.2, 89.3, 59.8),
    "disc": (88.7, None, 73.5),
    "group_dro": (91.4, 88.9, None),
    "ddb": (93.0, 85.8, 81.2),
    "ddb_no_prune": (91.28, 81.7, 80.6),
}


def test_the_shipped_file_holds_every_row_of_the_papers_table_with_its_source():
    published = tables.published()
    assert set(published) == set(PAPER)
    for method, figures in PAPER.items():
        expected = {
            d: v for d, v in zip(("waterbirds", "celeba", "metashift"), figures) if v is not None
        }
        assert published[method].wga == pytest.approx(expected, abs=1e-9), method
        cited = "arXiv:1911.08731" if method == "group_dro" else "arXiv:2503.17226"
        assert cited in published[method].source, method
    assert "pruning ablation" in published["ddb_no_prune"].source


def test_a_malformed_entry_names_the_file_and_the_method(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text("erm:\n  wga: {waterbirds: 74.6}\n")  # no source
    with pytest.raises(ValueError, match=rf"{path}: 'erm' needs 'source'"):
        tables.published(path)
    path.write_text("erm:\n  source: x\n  wga: {waterbirds: 74.6%}\n")
    with pytest.raises(ValueError, match=r"'erm.wga' has non-numbers \{'waterbirds': '74.6%'\}"):
        tables.published(path)


def test_cells_round_once_to_one_decimal():
    assert tables.mean_std([]) == tables.NONE
    assert tables.mean_std([91.28]) == "91.3 ± 0.0"
    assert tables.mean_std([10.0, 20.0]) == "15.0 ± 7.1"  # sample std: sqrt(50)
    assert tables.interval_cell(0.7123, [0.66, 0.7649]) == "71.2 [66.0, 76.5]"


def test_markdown_table_has_a_separator_per_column():
    text = tables.markdown_table(["a", "b"], [["1", "2"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
