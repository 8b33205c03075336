//! The fuzz targets' checks without libFuzzer, bounded, on every `cargo test`:
//! the seeds, every saved regression (`regressions/<target>/`), and a few thousand
//! deterministic random and mutated inputs per target.
//!
//! `cargo test --no-default-features` (from `rust/fuzz`) skips compiling libFuzzer.
//! `SLS_FUZZ_SMOKE_ITERATIONS` raises the count for a longer run.

use std::path::Path;

use sls_kernel_fuzz::{activation_payload, manual_code, ocra_suite, seeds};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("activation_payload", activation_payload),
    ("manual_code", manual_code),
    ("ocra_suite", ocra_suite),
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One libFuzzer-like mutation: flip a bit, change, insert or delete a byte, truncate,
    /// or splice in a character a parser cares about.
    fn mutate(&mut self, input: &mut Vec<u8>) {
        let interesting = b"SLS1:-= \n0OIL1AZ27az\xff\x00";
        match self.below(6) {
            0 if !input.is_empty() => {
                let at = self.below(input.len());
                input[at] ^= 1 << self.below(8);
            }
            1 if !input.is_empty() => {
                let at = self.below(input.len());
                input[at] = self.next() as u8;
            }
            2 => {
                let at = self.below(input.len() + 1);
                input.insert(at, interesting[self.below(interesting.len())]);
            }
            3 if !input.is_empty() => {
                let at = self.below(input.len());
                input.remove(at);
            }
            4 => {
                let keep = self.below(input.len() + 1);
                input.truncate(keep);
            }
            _ => {
                let at = self.below(input.len() + 1);
                let byte = self.next() as u8;
                input.insert(at, byte);
            }
        }
    }
}

fn iterations() -> usize {
    std::env::var("SLS_FUZZ_SMOKE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn seeds_pass_every_check() {
    for (name, target) in TARGETS {
        let inputs = seeds(name);
        assert!(!inputs.is_empty(), "{name} has seeds");
        for input in inputs {
            target(&input);
        }
    }
}

#[test]
fn saved_regressions_pass_every_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable directory").path();
            target(&std::fs::read(&path).expect("readable regression file"));
        }
    }
}

#[test]
fn mutated_seeds_and_random_bytes_pass_every_check() {
    let mut rng = XorShift(0x5151_2026);
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        for i in 0..iterations() {
            let mut input = if i % 4 == 3 {
                let len = rng.below(400);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..1 + rng.below(4) {
                rng.mutate(&mut input);
            }
            target(&input);
        }
    }
}

/// Writes the seeds as files for `cargo fuzz run TARGET corpus/TARGET seeds/TARGET`.
#[test]
#[ignore = "writes files: run by hand after changing a seed"]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (name, _) in TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (i, input) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input).expect("write a seed");
        }
    }
}
