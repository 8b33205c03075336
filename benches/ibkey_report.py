"""IB Key activation payloads and push approvals: items per second, one by one and in
batches, measured side by side in one run.

Run it from the project root with the virtualenv's Python (``make bench`` does)::

    python benches/ibkey_report.py [--out DIR] [--batch 100k] [--quick]

Rows: activation payload verification (Ed25519 signature, expiry, fields), one call per
payload from Python vs one batch call; push approval verification (Ed25519, strict), one
call per signature vs ``verify_approvals_batch`` (ed25519-dalek batch verification per
chunk, all cores); and the store-backed ``IbKey.answer_pushes`` (signatures, once-only and
expiry checks, one transaction). Best of k samples. Writes ``DIR/ibkey.md`` and
``DIR/ibkey.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sls_core import activation, default_threads, push
from sls_core.clock import ManualClock
from sls_core.login import SecureLogin
from sls_core.simulator import SimulatedApp


def best_rate(items: int, run: Callable[[], Any], samples: int) -> float:
    best = float("inf")
    for _ in range(samples):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return items / best


def payload_rows(n: int, single: int, samples: int) -> list[dict[str, Any]]:
    seed = secrets.token_bytes(32)
    signer = activation.ActivationSigner({1: seed}, active=1)
    verifier = activation.ActivationVerifier(signer.public_keys())
    now = 1_800_000_000
    payloads = [
        signer.sign(
            session_id=secrets.token_bytes(16),
            username=f"user{i}",
            issued_at=now,
            expires_at=now + 600,
            server_public=secrets.token_bytes(32),
        )
        for i in range(n)
    ]
    column = np.array([p.encode() for p in payloads], dtype=f"S{max(map(len, payloads))}")

    def one_by_one() -> None:
        for p in payloads[:single]:
            status, _ = verifier.verify(p, now)
            assert status == 0

    def batch() -> None:
        assert (verifier.verify_batch(column, now)["status"] == 0).all()

    return [
        {
            "workload": "activation payload verify",
            "mode": "one call each",
            "items": single,
            "rate": best_rate(single, one_by_one, samples),
        },
        {
            "workload": "activation payload verify",
            "mode": "batch",
            "items": n,
            "rate": best_rate(n, batch, samples),
        },
    ]


def approval_rows(n: int, single: int, samples: int) -> list[dict[str, Any]]:
    keys = [push.push_keypair() for _ in range(min(n, 1000))]
    publics, messages, signatures = [], [], []
    for i in range(n):
        seed, public = keys[i % len(keys)]
        message = bytes(push.approval_message(i, i, i, 1_800_000_120, 1))
        publics.append(bytes(public))
        messages.append(message)
        signatures.append(bytes(push.sign_approval(seed, message)))

    def one_by_one() -> None:
        for k in range(single):
            assert push.verify_approval(publics[k], messages[k], signatures[k])

    def batch() -> None:
        assert (push.verify_approvals_batch(publics, messages, signatures) == 0).all()

    return [
        {
            "workload": "push approval verify",
            "mode": "one call each",
            "items": single,
            "rate": best_rate(single, one_by_one, samples),
        },
        {
            "workload": "push approval verify",
            "mode": "batch",
            "items": n,
            "rate": best_rate(n, batch, samples),
        },
    ]


def store_row(n: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sls-bench-") as tmp:
        clock = ManualClock()
        sls = SecureLogin.open(Path(tmp) / "data", clock=clock)
        sls.create_user("bench")
        app = SimulatedApp(None)
        app.activate(sls.ibkey, payload=sls.ibkey.create_activation("bench").payload)
        times = []
        for _ in range(samples):
            pushes = [sls.ibkey.create_push("bench") for _ in range(n)]
            signatures = [app.sign(p.message(1)) for p in pushes]
            started = time.perf_counter()
            out = sls.ibkey.answer_pushes([p.challenge_id for p in pushes], [1] * n, signatures)
            times.append(time.perf_counter() - started)
            assert (out == 0).all()
    return {
        "workload": "push answers, store-backed",
        "mode": "batch",
        "items": n,
        "rate": n / min(times),
    }


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "## IB Key: activation payloads and push approvals",
        "",
        f"{default_threads()} threads for batches; best of k samples.",
        "",
        "| workload | mode | items | items/s |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['mode']} | {r['items']:,} | {r['rate']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 5_000 if args.quick else args.batch
    single = min(n, 5_000)
    rows = [
        *payload_rows(n, single, args.samples),
        *approval_rows(n, single, args.samples),
        store_row(1_000 if args.quick else 10_000, args.samples),
    ]
    text = render(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ibkey.md").write_text(text)
    (args.out / "ibkey.json").write_text(
        json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
