//! The `ops_model` fuzz target's checks (`tests/common/opseq.rs`) without cargo-fuzz: every
//! input kept under `fuzz/regressions/ops_model/` (what fuzzing once found) and
//! `fuzz/seeds/ops_model/`, then pseudo-random inputs.
//!
//! `ONCELOG_OPSEQ_RUNS` sets how many random inputs (default 150), `ONCELOG_OPSEQ_SEED` the
//! first seed.

mod common;

use std::path::Path;

use common::env_u64;
use common::opseq::{self, Report};
use common::powercut::Rng;

fn kept_inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read(&p).expect("read input"),
            )
        })
        .collect();
    v.sort();
    v
}

fn add(total: &mut Report, r: Report) {
    total.steps += r.steps;
    total.reopens += r.reopens;
    total.cuts += r.cuts;
    total.cuts_in_recovery += r.cuts_in_recovery;
    total.compactions += r.compactions;
    total.checks += r.checks;
}

#[test]
fn kept_fuzz_inputs_still_pass() {
    let mut total = Report::default();
    let mut n = 0;
    for dir in ["fuzz/regressions/ops_model", "fuzz/seeds/ops_model"] {
        for (name, data) in kept_inputs(dir) {
            eprintln!("replaying {name}");
            add(&mut total, opseq::run(&data));
            n += 1;
        }
    }
    assert!(n > 0, "no kept inputs found");
    eprintln!("{n} kept inputs: {total:?}");
}

#[test]
fn random_operation_sequences_match_the_reference() {
    let runs = env_u64("ONCELOG_OPSEQ_RUNS", 150);
    let first = env_u64("ONCELOG_OPSEQ_SEED", 1);
    let mut total = Report::default();
    for seed in first..first + runs {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let len = 64 + rng.below(700) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let r = std::panic::catch_unwind(|| opseq::run(&data));
        match r {
            Ok(r) => add(&mut total, r),
            Err(e) => {
                eprintln!("seed {seed} failed; input: {data:?}");
                std::panic::resume_unwind(e);
            }
        }
    }
    assert!(total.cuts > 0 && total.reopens > 0 && total.compactions > 0);
    assert!(total.cuts_in_recovery > 0, "{total:?}");
    eprintln!("{runs} random inputs: {total:?}");
}
