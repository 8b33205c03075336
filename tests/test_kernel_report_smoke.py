"""The C reference benchmark (benches/kernel_report.py with benches/ocra_ref.c) still builds
and runs end to end on a tiny workload: the C loop and ``ocra.verify_batch`` give the same
verdicts (OK, WRONG and MALFORMED items alike) and the report is written. No time is
asserted: the ratio is the benchmark's to report."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import kernel_report


def test_the_c_reference_agrees_with_the_kernel_and_reports_a_ratio(tmp_path: Path) -> None:
    if not shutil.which("cc") or not Path("/usr/include/openssl/sha.h").exists():
        pytest.fail("cc or libssl-dev is missing: run scripts/system-packages.sh (make check does)")
    out = tmp_path / "out"
    args = ["--quick", "--items", "3000", "--rounds", "2", "--repeats", "1", "--out", str(out)]
    assert kernel_report.main(args) == 0
    report = json.loads((out / "kernel.json").read_text())
    assert [(row["keys"], row["mode"]) for row in report["rows"]] == [
        ("1k keys", "fresh"),
        ("1k keys", "prepared"),
    ]
    for row in report["rows"]:
        assert len(row["ratios"]) == 2
        assert all(ratio > 0 for ratio in row["ratios"])
    assert "sls_core / C" in (out / "kernel.md").read_text()


def test_a_workload_has_wrong_and_malformed_answers_where_it_says() -> None:
    work = kernel_report.make_workload(200, 10, ("fresh",), seed=1)
    assert work.expected.tolist().count(1) == 3  # items 62, 126, 190
    assert work.expected.tolist().count(2) == 3  # items 63, 127, 191
    assert int(work.key_index.max()) < 10
