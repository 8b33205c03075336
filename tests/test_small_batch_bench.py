"""benches/small_batch.py still runs end to end at a tiny size: both workers start, each
(kind, size) is measured every round, both copies give the same verdicts, and the report
files are written. Figures are not checked (speed is measured in benchmarks, never
asserted in tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))


def test_the_small_batch_bench_compares_two_copies_and_finds_the_same_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import small_batch

    out = tmp_path / "out"
    argv = ["--old", str(small_batch.INSTALLED), "--sizes", "1,3", "--batches", "4"]
    argv += ["--rounds", "2", "--users", "60", "--out", str(out)]
    assert small_batch.main(argv) == 0
    document = json.loads((out / "small_batch.json").read_text())
    assert document["verdicts_equal"] is True
    rows = {(r["kind"], r["size"]): r for r in document["rows"]}
    assert set(rows) == {(k, n) for k in ("store", "server") for n in (1, 3)}
    for row in rows.values():
        assert len(row["rounds"]["old_us"]) == len(row["rounds"]["new_us"]) == 2
        assert all(t > 0 for t in row["rounds"]["old_us"] + row["rounds"]["new_us"])
    assert "| store | 1 |" in (out / "small_batch.md").read_text()
    stderr = capsys.readouterr().err
    assert "round 2/2 server x3" in stderr
    assert stderr.strip().splitlines()[-1].endswith(f"wrote {out / 'small_batch.json'}")


def test_the_small_batch_bench_runs_cold_and_says_so(tmp_path: Path) -> None:
    """--cold flushes the caches between batches (untimed): same verdicts, recorded."""
    import small_batch

    out = tmp_path / "out"
    argv = ["--old", str(small_batch.INSTALLED), "--sizes", "2", "--batches", "3", "--rounds", "1"]
    argv += ["--users", "60", "--kinds", "store", "--cold", "--out", str(out)]
    assert small_batch.main(argv) == 0
    document = json.loads((out / "small_batch.json").read_text())
    assert document["settings"]["cold"] is True
    assert document["verdicts_equal"] is True


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_copy_that_cannot_start_is_named_and_leaves_nothing_open(tmp_path: Path) -> None:
    """--old pointing at a folder without a working sls_core: the run stops naming that
    contender, and neither worker's pipes are left for the collector to find."""
    import gc

    import small_batch

    empty = tmp_path / "empty"
    (empty / "sls_core").mkdir(parents=True)
    (empty / "sls_core" / "__init__.py").write_text("raise ImportError('not built')\n")
    argv = ["--old", str(empty), "--sizes", "1", "--batches", "1", "--rounds", "1"]
    with pytest.raises(RuntimeError, match=r"^old: the worker ended"):
        small_batch.main([*argv, "--users", "10", "--out", str(tmp_path / "out")])
    gc.collect()  # an unclosed pipe would warn here, and the warning is an error
