//! Operation sequences against a reference store, with reopens and simulated power cuts:
//! the input is a byte code (see `tests/common/opseq.rs`, shared with the main crate's
//! `tests/fuzz_regressions.rs`, which replays kept inputs). Any difference between the
//! store under test and the reference panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/common/powercut.rs"]
mod powercut;

#[allow(dead_code)]
#[path = "../../tests/common/opseq.rs"]
mod opseq;

fuzz_target!(|data: &[u8]| {
    opseq::run(data);
});
