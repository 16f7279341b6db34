//! The parts of the `oncelog` tool that are worth testing and fuzzing on their own: the
//! Redis protocol (RESP) parser, the `oncelog serve` server, and the progress line shown
//! while a large store opens. The command line itself is `src/main.rs`.

pub mod progress;
pub mod resp;
pub mod serve;
