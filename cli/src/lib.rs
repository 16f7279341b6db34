//! The parts of the `oncelog` tool that are worth testing and fuzzing on their own: the
//! Redis protocol (RESP) parser and the `oncelog serve` server. The command line itself is
//! `src/main.rs`.

pub mod resp;
pub mod serve;
