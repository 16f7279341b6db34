//! The parts of the `oncelog` tool that are worth testing and fuzzing on their own. The
//! command line itself is `src/main.rs`.

pub mod progress;
