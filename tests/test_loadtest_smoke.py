"""The gateway load test (benches/loadtest.py) still runs end to end, briefly, on a tiny
workload: every mode (gRPC and HTTP/JSON) answers every attempt with the outcomes its
answers deserve, and the reports write their plots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import loadtest


def test_the_load_test_runs_every_mode_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "--seconds", "1", "--users", "300", "--rate", "400", "--gateways", "4",
        "--async-gateways", "4", "--http-clients", "4", "--batch", "400", "--batches", "6",
        "--rounds", "2", "--out", str(out),
    ]  # fmt: skip
    assert loadtest.main(args) == 0
    report = json.loads((out / "loadtest.json").read_text())
    modes = [row["mode"] for row in report["rows"]]
    assert [m.split(",")[0].split(" (")[0] for m in modes] == [
        "single Verify",
        "single Verify",
        "single Verify",
        "HTTP POST /v1/verify",
        "VerifyBatch",
        "in-process SecureLogin.verify_batch",
    ]
    for row in report["rows"]:
        assert row["rate"] > 0, row["mode"]
        if "ok_share" in row:  # 1% wrong and 1% malformed: the rest verify
            assert 0.9 <= row["ok_share"] < 1.0, row
    opened = report["rows"][0]
    assert opened["requests"] == 400  # every offered login was answered
    assert set(opened["cores_busy"]) >= {"load generator", "server process 0"}
    (http,) = [row for row in report["rows"] if row.get("transport") == "HTTP"]
    assert http["concurrency"] == 4
    assert http["http_statuses"] == {"200": http["requests"]}  # wrong answers are 200 too
    text = (out / "loadtest.md").read_text()
    assert "VerifyBatch end to end is" in text
    assert "Single Verify, open loop at 400 logins/s offered" in text
    assert "Single verify over HTTP/JSON, closed loop, 4 clients" in text
    assert (out / "loadtest.png").stat().st_size > 0


def test_the_load_test_runs_one_server_process_per_cpu_the_server_may_use() -> None:
    assert loadtest.default_workers(({0}, {1})) == 1
    assert loadtest.default_workers(({0}, {1, 2, 3})) == 3
    assert loadtest.default_workers(None) == (os.cpu_count() or 1)


def test_the_failing_requests_benchmark_runs_and_reports_both_runs(tmp_path: Path) -> None:
    import failing_requests

    out = tmp_path / "out"
    args = ["--devices", "300", "--seconds", "0.3", "--rate", "50", "--out", str(out)]
    assert failing_requests.main(args) == 0
    report = json.loads((out / "failing_requests.json").read_text())
    assert report["alone"]["logins"] > 0
    assert report["with_failing_requests"]["logins"] > 0
    assert report["p99_ratio"] > 0


def test_the_cluster_benchmark_runs_on_a_private_postgres_and_reports_every_part(
    tmp_path: Path,
) -> None:
    """benches/cluster_report.py --smoke: the raw consume-once rates, 1 to 3 nodes on one
    PostgreSQL, and the cold start on both stores, at tiny sizes."""
    import cluster_report

    out = tmp_path / "out"
    assert cluster_report.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "cluster.json").read_text())
    assert report["raw"]["rows"]
    for row in report["raw"]["rows"]:
        assert row["copy_ids_per_s"] > 0, row
        assert row["unnest_ids_per_s"] > 0, row
    assert {row["nodes"] for row in report["store_backed"]} >= {1}
    for row in report["store_backed"]:
        assert row["attempts_per_s"] > 0, row
        assert row["ok_share"] == 1.0, row  # right answers, each verified once
    assert {row["store"] for row in report["cold_start"]} == {"PostgreSQL", "SQLite"}
    for row in report["cold_start"]:
        assert row["ready_s"] > 0, row
        assert row["target_s_per_million"] == cluster_report.COLD_TARGET_S_PER_MILLION
        assert isinstance(row["target_met"], bool)
    text = (out / "cluster.md").read_text()
    assert "attempts/s" in text
    assert f"≤ {cluster_report.COLD_TARGET_S_PER_MILLION:g} s per million" in text
    assert (out / "cluster.png").stat().st_size > 0


def test_the_open_loop_pinned_apart_reports_where_the_time_goes(tmp_path: Path) -> None:
    """--pin puts the generator and the server on disjoint CPUs (when there are two);
    --debug-phases has the server time its batches, and the report breaks the latency
    down, says how long each process waited for a CPU and marks issue 14's target."""
    import os

    out = tmp_path / "out"
    cpus = sorted(os.sched_getaffinity(0))
    pin = ["--pin", f"{cpus[0]}/{cpus[1]}"] if len(cpus) >= 2 else []
    args = [
        "--seconds", "1", "--users", "300", "--rate", "400", "--modes", "open",
        "--workers", "1", "--debug-phases", *pin, "--out", str(out),
    ]  # fmt: skip
    assert loadtest.main(args) == 0
    assert sorted(os.sched_getaffinity(0)) == cpus  # this process runs anywhere again
    (opened,) = json.loads((out / "loadtest.json").read_text())["rows"]
    assert opened["requests"] == 400
    assert set(opened["run_queue_wait"]) >= {"load generator", "server process 0"}
    assert opened["gateway_wait"]["p50"] >= 0
    assert opened["batch_round_trip"]["p50"] > 0
    timed = opened["server_phases"]
    assert timed["processes"] == 1
    assert {"batch run (inline)", "audit append", "event loop lag"} <= set(timed["phases"])
    text = (out / "loadtest.md").read_text()
    assert "Where the time goes at 400/s offered" in text
    assert ("pinned to CPU" in text) == bool(pin)


def test_the_open_loop_comparison_alternates_its_variants(tmp_path: Path) -> None:
    import open_loop_ab

    out = tmp_path / "ab"
    args = [
        "--rounds", "1", "--seconds", "0.5", "--rate", "300", "--users", "300",
        "--variant", "one=--workers 1", "--variant", "two=SLS_CORE_SERVER_THREADS=2 --workers 1",
        "--out", str(out),
    ]  # fmt: skip
    assert open_loop_ab.main(args) == 0
    table = json.loads((out / "open_loop_ab.json").read_text())["table"]
    assert [(e["variant"], e["offered"], e["rounds"]) for e in table] == [
        ("one", 300.0, 1),
        ("two", 300.0, 1),
    ]
    # The targets table judges only sls-core runs pinned apart from the generator.
    assert [(e["server"], e["pin"]) for e in table] == [("sls-core", None)] * 2
    assert "| one | 300 |" in (out / "open_loop_ab.md").read_text()


def test_the_open_loop_against_the_floor_server_answers_every_login(tmp_path: Path) -> None:
    """--server floor: the same generator and gateway client against a server that answers
    at once without domain work (every attempt OK), reported as such; it runs the open loop
    only."""
    out = tmp_path / "out"
    args = [
        "--seconds", "0.5", "--users", "300", "--rate", "400", "--modes", "open",
        "--server", "floor", "--floor-work-us", "50", "--out", str(out),
    ]  # fmt: skip
    assert loadtest.main(args) == 0
    (opened,) = json.loads((out / "loadtest.json").read_text())["rows"]
    assert opened["server"] == "floor"
    assert opened["requests"] == 200
    assert opened["ok_share"] == 1.0
    assert opened["since_due"]["p99"] >= opened["p50"] > 0
    assert "floor server: no domain work, 50 µs busy per message" in opened["mode"]
    with pytest.raises(SystemExit) as refused:
        loadtest.main([*args, "--modes", "open,batch"])
    assert refused.value.code == 2
    with pytest.raises(SystemExit) as refused:
        loadtest.main([*args, "--floor-work-us", "-1"])
    assert refused.value.code == 2
