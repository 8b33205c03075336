//! Records sealed by the Python path (pyca/cryptography), opened by the kernel: the
//! self-made vectors of `tests/vectors/sealed-records-python.json`, which pytest also reads.

use std::path::PathBuf;

use serde_json::Value;
use sls_kernel::sealing::{device_aad, DataKeys, SealingError};
use sls_kernel::Execution;

fn document() -> Value {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "tests",
        "vectors",
        "sealed-records-python.json",
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn keys(doc: &Value) -> DataKeys {
    let mut keys = DataKeys::new();
    for (key_id, key) in doc["keys_hex"].as_object().unwrap() {
        keys.insert(key_id, &bytes(key)).unwrap();
    }
    keys
}

fn aad(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    device_aad(
        v["device_id"].as_i64().unwrap(),
        v["what"].as_str().unwrap(),
        &mut out,
    );
    out
}

#[test]
fn every_record_sealed_by_python_opens_to_its_plaintext() {
    let doc = document();
    let keys = keys(&doc);
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 7);
    for v in vectors {
        let opened = keys.open(&bytes(&v["sealed_hex"]), &aad(v)).unwrap();
        assert_eq!(*opened, bytes(&v["plaintext_hex"]), "{v}");
    }
}

#[test]
fn a_column_opens_like_one_record_at_a_time_sequential_and_parallel() {
    let doc = document();
    let keys = keys(&doc);
    let vectors = doc["vectors"].as_array().unwrap();
    // Many rows (several parallel tasks), with gaps.
    let sealed: Vec<Vec<u8>> = vectors.iter().map(|v| bytes(&v["sealed_hex"])).collect();
    let rows: Vec<Option<&[u8]>> = (0..20_000)
        .map(|i| (i % 9 != 8).then(|| sealed[i % vectors.len()].as_slice()))
        .collect();
    for execution in [Execution::Sequential, Execution::Parallel] {
        let opened = keys
            .open_column(
                &rows,
                |i, out| out.extend(aad(&vectors[i % vectors.len()])),
                execution,
            )
            .unwrap();
        assert_eq!(opened.len(), rows.len());
        for (i, row) in rows.iter().enumerate() {
            let expected = row.map(|_| bytes(&vectors[i % vectors.len()]["plaintext_hex"]));
            assert_eq!(opened.get(i).map(<[u8]>::to_vec), expected, "row {i}");
        }
        let padded = opened.padded(32);
        for i in 0..rows.len() {
            let cell = &padded[i * 32..(i + 1) * 32];
            match opened.get(i) {
                Some(v) if v.len() <= 32 => {
                    assert_eq!(&cell[..v.len()], v);
                    assert!(cell[v.len()..].iter().all(|&b| b == 0));
                }
                _ => assert!(cell.iter().all(|&b| b == 0)),
            }
        }
    }
}

#[test]
fn records_that_must_not_open_fail_with_the_python_paths_words() {
    let doc = document();
    let keys = keys(&doc);
    let failures = doc["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 15);
    for f in failures {
        let sealed = bytes(&f["sealed_hex"]);
        let error = keys.open(&sealed, &aad(f)).unwrap_err();
        assert_eq!(error.key_id(), f["key_id"].as_str(), "{}", f["name"]);
        assert_eq!(error.rule(), f["rule"].as_str().unwrap(), "{}", f["name"]);
    }
}

#[test]
fn a_column_names_its_first_failing_row_and_nothing_else() {
    let doc = document();
    let keys = keys(&doc);
    let good = bytes(&doc["vectors"][0]["sealed_hex"]);
    let good_aad = aad(&doc["vectors"][0]);
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut rows: Vec<Option<&[u8]>> = vec![Some(good.as_slice()); 10_000];
    rows[7_000] = Some(tampered.as_slice());
    rows[9_000] = Some(&good[..3]);
    for execution in [Execution::Sequential, Execution::Parallel] {
        // The lowest failing row is reported, whatever the kind of failure.
        let (row, error) = keys
            .open_column(&rows, |_, out| out.extend(&good_aad), execution)
            .unwrap_err();
        assert_eq!(row, 7_000);
        assert_eq!(error.key_id(), Some("k1"));
        rows[7_000] = Some(good.as_slice());
        let (row, error) = keys
            .open_column(&rows, |_, out| out.extend(&good_aad), execution)
            .unwrap_err();
        assert_eq!(row, 9_000);
        assert_eq!(
            error,
            SealingError::Header("truncated: 3 bytes, the header says 4".into())
        );
        rows[7_000] = Some(tampered.as_slice());
    }
}

#[test]
fn keys_are_checked_and_never_shown() {
    let mut keys = DataKeys::new();
    assert!(keys.insert("k1", &[7u8; 31]).is_err());
    assert!(keys.insert("bad id", &[7u8; 32]).is_err());
    assert!(keys.insert(&"k".repeat(33), &[7u8; 32]).is_err());
    keys.insert("k1", &[7u8; 32]).unwrap();
    keys.insert("k0", &[8u8; 32]).unwrap();
    assert_eq!(keys.key_ids(), vec!["k0", "k1"]);
    let shown = format!("{keys:?}");
    assert!(shown.contains("k0") && !shown.contains("7, 7"), "{shown}");
}

#[test]
fn the_device_place_is_the_stores_rule() {
    let mut out = Vec::new();
    device_aad(42, "pin_hash", &mut out);
    assert_eq!(out, b"device:42:pin_hash");
}
