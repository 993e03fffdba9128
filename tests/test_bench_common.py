"""benchmarks/common.py: the results writer keeps what it does not replace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from common import machine, parse_rows, rows_label, update_section  # noqa: E402


def test_update_section_replaces_one_subsection_and_keeps_the_rest(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# Benchmark results\n\n## A\n\nold intro\n\n### 1\n\none\n\n### 2\n\ntwo\n\n## B\n\nb\n"
    )
    update_section(path, "## A", "## A\n\nnew intro\n", "### 2", "TWO")
    update_section(path, "## A", "## A\n\nnew intro\n", "### 0", "zero")
    text = path.read_text()
    assert text == (
        "# Benchmark results\n\n## A\n\nnew intro\n\n### 0\n\nzero\n\n### 1\n\none\n\n"
        "### 2\n\nTWO\n\n## B\n\nb\n"
    )
    update_section(tmp_path / "new.md", "## C", "## C\n", "### x", "y")
    assert (tmp_path / "new.md").read_text() == "# Benchmark results\n\n## C\n\n### x\n\ny\n"


def test_row_counts_and_the_machine_line():
    assert parse_rows("20M") == 20_000_000 and parse_rows("1e6") == 10**6
    assert parse_rows("3_000") == 3000 and rows_label(20_000_000) == "20M"
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        parse_rows("0.5")
    line = machine({"numpy": "1.0"}, ", no GPU")
    assert "CPUs (nproc)" in line and line.endswith("numpy 1.0") and ", no GPU;" in line


def test_section_rows_keeps_only_its_own_subsections_rows():
    from common import section_rows

    text = (
        "## A\n\n### x\n\n| loss | f1 |\n|---|--:|\n| ce | 0.1 |\n\n"
        "## B\n\n### x\n\n| code | s |\n|---|--:|\n| before | 9 |\n| after | 3 |\n\nnote\n\n"
        "### y\n\n| code | s |\n|---|--:|\n| other | 1 |\n"
    )
    assert section_rows(text, "## B", "### x") == ["| before | 9 |", "| after | 3 |"]
    assert section_rows(text, "## B", "### z") == [] and section_rows(text, "## C", "### x") == []
