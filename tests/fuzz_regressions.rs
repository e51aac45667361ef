//! The fuzz targets' entry points in the normal suite: every saved input under
//! `fuzz/regressions/<target>/` (seeds and whatever a fuzzing run found) is replayed, and
//! proptest throws arbitrary and near-valid bytes at each.

use logferry::fuzzing::TARGETS;
use proptest::prelude::*;
use std::path::Path;

#[test]
fn saved_inputs_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} fails again", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "only {replayed} saved inputs");
}

/// Bytes that look like what each target reads, then mutated.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    let seeds = prop_oneof![
        Just(&b"2026-11-30T10:00:00.123456789Z stdout P part\n2026-11-30T10:00:00.2Z stdout F end\n"[..]),
        Just(&br#"{"log":"a\n","stream":"stderr","time":"2019-01-01T11:11:11Z"}"#[..]),
        Just(&b"2026-11-30T10:00:00Z stderr F Exception in thread \"main\" java.lang.X\n2026-11-30T10:00:00Z stderr F \tat a.b(C.java:1)\n"[..]),
        Just(&br#"{"level":"warn","msg":"x","n":[1,{"a":null}]}"#[..]),
        Just(&br#"{"errors":true,"items":[{"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"q"}}}]}"#[..]),
        Just(&b"[source]\ninclude = [\"/x/*.log\"]\nmax_line_bytes = \"1MiB\"\n"[..]),
    ];
    (
        seeds,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    )
        .prop_map(|(seed, flips)| {
            let mut v = seed.to_vec();
            for (i, b) in flips {
                let i = i.index(v.len());
                v[i] = b;
            }
            v
        })
}

proptest! {
    #[test]
    fn no_target_breaks_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        for (_, target) in TARGETS {
            target(&data);
        }
    }

    #[test]
    fn no_target_breaks_on_near_valid_input(data in near_valid()) {
        for (_, target) in TARGETS {
            target(&data);
        }
    }
}
