//! Crash points for the crash tests: with `ONCELOG_CRASH_AT=<name>` in its environment, a
//! process aborts (no destructors, no syncs: what a `kill -9` leaves) when it reaches the
//! step of that name. The names are listed in docs/FORMAT.md §9. Only maintenance steps
//! have crash points; the variable is read once.

use std::sync::OnceLock;

/// Aborts the process if `ONCELOG_CRASH_AT` names this step.
pub(crate) fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("ONCELOG_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        std::process::abort();
    }
}
