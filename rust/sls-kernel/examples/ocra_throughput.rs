//! Single-thread OCRA verification throughput of the kernel alone (no Python), for
//! profiling: `cargo run --release -p sls-kernel --example ocra_throughput [N]`.
//!
//! Three key sources: raw keys (fresh HMAC pads per item), a prepared table in row order,
//! and the same table addressed through a random permutation (`key_index`), as a server
//! holding every device's key would: there each item's pads are a cache miss.

use std::time::Instant;

use sls_kernel::batch::{KeyColumn, KeyTable, OcraBatch};
use sls_kernel::{ByteColumn, Execution, OcraSuite};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("N must be a whole number"))
        .unwrap_or(1_000_000);
    let suite = OcraSuite::parse("OCRA-1:HOTP-SHA1-8:QN06-PSHA1").unwrap();
    // Deterministic pseudo-random keys and questions (xorshift), no extra crates.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let keys: Vec<u8> = (0..n * 20).map(|_| next() as u8).collect();
    let questions: Vec<u8> = (0..n)
        .flat_map(|_| format!("{:06}", next() % 1_000_000).into_bytes())
        .collect();
    // Fisher-Yates: item i uses key row permutation[i].
    let mut permutation: Vec<u64> = (0..n as u64).collect();
    for i in (1..n).rev() {
        permutation.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    let pin = suite.hash_pin(b"1234").unwrap();
    let pins: Vec<u8> = (0..n).flat_map(|_| pin.as_bytes().to_vec()).collect();
    let raw = ByteColumn::Fixed {
        data: &keys,
        width: 20,
        nul_padded: false,
    };
    let batch = |keys| OcraBatch {
        keys,
        questions: ByteColumn::Fixed {
            data: &questions,
            width: 6,
            nul_padded: true,
        },
        pin_hashes: Some(ByteColumn::Fixed {
            data: &pins,
            width: 20,
            nul_padded: false,
        }),
        counters: None,
        timestamps: None,
        sessions: None,
    };
    let table = KeyTable::new(suite.algorithm(), &raw, Execution::Sequential).unwrap();
    let mut outcomes = vec![9u8; n];
    for (name, keys) in [
        ("fresh key", KeyColumn::Raw(raw.clone())),
        (
            "prepared, row order",
            KeyColumn::Prepared {
                table: &table,
                index: None,
            },
        ),
        (
            "prepared, random order",
            KeyColumn::Prepared {
                table: &table,
                index: Some(&permutation),
            },
        ),
    ] {
        let batch = batch(keys);
        let mut codes = vec![0u8; n * 8];
        suite
            .compute_batch(&batch, &mut codes, Execution::Sequential)
            .unwrap();
        let responses = ByteColumn::Fixed {
            data: &codes,
            width: 8,
            nul_padded: true,
        };
        let mut verify = || {
            suite
                .verify_batch(&batch, &responses, &mut outcomes, Execution::Sequential)
                .unwrap();
        };
        // Best of 5 samples, each repeating the batch for at least 0.2 s.
        let start = Instant::now();
        verify();
        let calls = (0.2 / start.elapsed().as_secs_f64()).ceil().max(1.0) as usize;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..calls {
                verify();
            }
            best = best.min(start.elapsed().as_secs_f64() / calls as f64);
        }
        assert!(outcomes.iter().all(|&o| o == 0));
        println!(
            "{name}: {:.2} M verifications/s on one thread (N = {n})",
            n as f64 / best / 1e6
        );
    }
}
