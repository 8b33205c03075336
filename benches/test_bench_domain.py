"""pytest-benchmark forms of ``login_report.py`` and ``ibkey_report.py``: store-backed login
batches (replay and lockout durable), push approvals and activation payloads.

Each round gets fresh challenges (a challenge verifies once), made in the untimed setup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import ibkey_report
import login_report
from sls_core.outcome import LoginOutcome


def test_store_backed_login_batch(
    benchmark: Any, batch_items: Callable[[int], int], tmp_path: Path
) -> None:
    scenario = login_report.Scenario(tmp_path, devices=1_000, batch=batch_items(100_000))

    def fresh() -> tuple[tuple[Any, ...], dict[str, Any]]:
        users, tokens, responses, _, _ = scenario.attempts()
        return (users, tokens, responses), {}

    benchmark.group = "login: store-backed batch"
    benchmark.extra_info["items"] = scenario.batch
    result = benchmark.pedantic(scenario.sls.verify_batch, setup=fresh, rounds=3)
    counts = np.bincount(result.outcomes, minlength=3)
    assert counts[LoginOutcome.OK] >= 0.95 * scenario.batch
    assert counts[LoginOutcome.WRONG] + counts[LoginOutcome.MALFORMED] > 0


def test_ibkey_report_quick_run(tmp_path: Path) -> None:
    assert ibkey_report.main(["--quick", "--samples", "1", "--out", str(tmp_path)]) == 0
    assert "push approval verify" in (tmp_path / "ibkey.md").read_text()


def test_login_report_quick_run(tmp_path: Path) -> None:
    assert login_report.main(["--quick", "--samples", "1", "--out", str(tmp_path)]) == 0
    assert "store-backed" in (tmp_path / "login.md").read_text()
