"""The benchmark reports (benches/report.py, ibkey_report.py, failing_requests.py) still run
end to end at tiny sizes: each measures every contender at every size asked for, writes its
Markdown, JSON and PNG plot, announces its steps on stderr and ends with the paths it wrote.
Figures are not checked (speed is measured in benchmarks, never asserted in tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))


def assert_plot(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= 800, width
    assert height >= 400, height


def assert_progress_then_wrote(stderr: str, out: Path, names: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) > len(names) + 1, lines
    assert all(line.startswith("[") and " s] " in line for line in lines), lines
    for line, name in zip(lines[-len(names) :], names, strict=True):
        assert line.endswith(f"] wrote {out / name}"), line


def test_the_throughput_report_measures_every_family_at_every_size_and_plots_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import report

    out = tmp_path / "out"
    assert (
        report.main(["--quick", "--sizes", "1", "2k", "--min-time", "0.002", "--out", str(out)])
        == 0
    )
    document = json.loads((out / "results.json").read_text())
    assert document["settings"]["sizes"] == [1, 2000]
    measured = {(m["family"], m["workload"], m["n"]) for m in document["measurements"]}
    for family, batch in (("ocra", report.OCRA_FRESH), ("hotp", report.OTP_BATCH)):
        assert {(family, batch, 1), (family, batch, 2000)} <= measured
    assert all(m["rate"] > 0 for m in document["measurements"])
    assert "## OCRA verify" in (out / "report.md").read_text()
    assert_plot(out / "throughput.png")
    stderr = capsys.readouterr().err
    assert "OCRA batch N=2k" in stderr
    assert "TOTP batch N=1:" in stderr
    assert_progress_then_wrote(stderr, out, ["report.md", "results.json", "throughput.png"])


def test_the_ibkey_report_measures_each_contender_at_each_batch_size_and_plots_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ibkey_report

    out = tmp_path / "out"
    args = ["--sizes", "50", "400", "--samples", "1", "--min-time", "0.002"]
    args += ["--single-max", "100", "--store-max", "50", "--out", str(out)]
    assert ibkey_report.main(args) == 0
    document = json.loads((out / "ibkey.json").read_text())
    assert document["settings"]["sizes"] == [50, 400]
    found = {(r["workload"], r["mode"], r["batch_size"]): r for r in document["rows"]}
    for workload in (ibkey_report.PAYLOADS, ibkey_report.APPROVALS):
        for n in (50, 400):
            assert found[workload, ibkey_report.BATCH, n]["items"] == n
            assert found[workload, ibkey_report.ONE_BY_ONE, n]["items"] == min(n, 100)
    # Store-backed answers only up to --store-max.
    assert (ibkey_report.STORE_ANSWERS, ibkey_report.BATCH, 50) in found
    assert (ibkey_report.STORE_ANSWERS, ibkey_report.BATCH, 400) not in found
    assert all(r["rate"] > 0 for r in document["rows"])
    assert "| push approval verify | batch | 400 | 400 |" in (out / "ibkey.md").read_text()
    assert_plot(out / "ibkey.png")
    stderr = capsys.readouterr().err
    assert "signing 400 activation payloads" in stderr
    assert "N=400:" in stderr
    assert_progress_then_wrote(stderr, out, ["ibkey.md", "ibkey.json", "ibkey.png"])


def test_the_failing_requests_report_runs_once_per_offered_rate_and_plots_the_percentiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import failing_requests

    out = tmp_path / "out"
    args = ["--devices", "300", "--seconds", "0.3", "--rates", "50", "200", "--out", str(out)]
    assert failing_requests.main(args) == 0
    document = json.loads((out / "failing_requests.json").read_text())
    # The quiet run is always added: it is the baseline of the ratio.
    assert [r["noise_rate_per_s"] for r in document["runs"]] == [0, 50, 200]
    for run in document["runs"]:
        assert run["logins"] > 0
        assert run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["p99_9_ms"] <= run["max_ms"]
    assert document["runs"][0]["noise_sent_per_s"] == 0
    assert all(r["noise_sent_per_s"] > 0 for r in document["runs"][1:])
    assert document["alone"] == document["runs"][0]
    assert document["with_failing_requests"] == document["runs"][-1]
    assert "| 0 (alone) |" in (out / "failing_requests.md").read_text()
    assert_plot(out / "failing_requests.png")
    stderr = capsys.readouterr().err
    assert "enrolling 300 DSC+ devices" in stderr
    assert "with 200 failing requests/s offered" in stderr
    names = ["failing_requests.md", "failing_requests.json", "failing_requests.png"]
    assert_progress_then_wrote(stderr, out, names)


def test_the_failing_requests_report_refuses_a_rate_that_is_not_a_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import failing_requests

    with pytest.raises(SystemExit):
        failing_requests.main(["--rates", "fast"])
    assert "a rate is a number of requests/s: 'fast'" in capsys.readouterr().err


def test_the_targets_table_reads_each_report_and_names_the_missing_ones(tmp_path: Path) -> None:
    import targets

    (tmp_path / "kernel.json").write_text(
        json.dumps(
            {
                "target": 0.9,
                "rows": [
                    {
                        "keys": "1k keys",
                        "mode": "fresh",
                        "ratio_min": 0.95,
                        "ratio_median": 1.0,
                        "met": True,
                    },
                    {
                        "keys": "1k keys",
                        "mode": "prepared",
                        "ratio_min": 0.7,
                        "ratio_median": 0.8,
                        "met": False,
                    },
                ],
            }
        )
    )
    assert targets.main(["--out", str(tmp_path)]) == 0
    table = (tmp_path / "targets.md").read_text()
    assert "| kernel / C loop, fresh (1k keys), 1 thread | ≥ 0.9 | 0.95 / 1.00 | met |" in table
    assert (
        "| kernel / C loop, prepared (1k keys), 1 thread | ≥ 0.9 | 0.70 / 0.80 | not met |" in table
    )
    assert "not run: no login.json" in table
    assert "not run: no cluster.json" in table
    assert "not run: no open-loop/open_loop_ab.json" in table

    def variant(name: str, p99: float, server: str, pin: list[list[int]] | None) -> dict:
        return {
            "variant": name,
            "offered": 5000.0,
            "rounds": 3,
            "server": server,
            "pin": pin,
            "p50_median": 1.0,
            "p99_min": p99 - 0.1,
            "p99_median": p99,
            "since_due_p99_median": p99 + 1,
        }

    (tmp_path / "open-loop").mkdir()
    (tmp_path / "open-loop" / "open_loop_ab.json").write_text(
        json.dumps(
            {
                "table": [
                    variant("pinned apart", 2.5, "sls-core", [[0], [1]]),
                    variant("slow pinned", 3.5, "sls-core", [[0], [1]]),
                    variant("not pinned", 3.2, "sls-core", None),
                    variant("floor", 1.7, "floor", [[0], [1]]),
                    {**variant("other rate", 9.0, "sls-core", [[0], [1]]), "offered": 1000.0},
                ]
            }
        )
    )
    assert targets.main(["--out", str(tmp_path)]) == 0
    table = (tmp_path / "targets.md").read_text()
    assert (
        "| open-loop gRPC p99 at 5,000 logins/s, pinned apart (generator on CPU 0, server on"
        " CPU 1) | < 3 ms | 2.40 / 2.50 ms over 3 rounds (p50 1.00; from when due: p99 3.50)"
        " | met |" in table
    )
    assert "slow pinned (generator on CPU 0, server on CPU 1) | < 3 ms | 3.40 / 3.50" in table
    assert "p99 4.50) | not met |" in table
    # Sharing the CPUs with the generator, or against the floor server: not judged.
    assert "not pinned (generator and server on any CPU) | < 3 ms | 3.10 / 3.20" in table
    assert "p99 4.20) | for comparison |" in table
    assert "floor (floor server, no domain work; generator on CPU 0" in table
    assert "p99 2.70) | for comparison |" in table
    assert "other rate" not in table
