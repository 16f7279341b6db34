//! Running the `oncelog` tool or one of the `examples/` servers as a real process: building
//! it, starting it on a free loopback port, killing it with SIGKILL, and reading its
//! fulfilment ledger.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary of `examples/<name>.rs` (which needs the `http` feature), built first when
/// the test runs under cargo: `cargo test --test X` alone does not build examples, and
/// building a fresh one is a no-op.
pub fn example_binary(name: &str) -> PathBuf {
    let profile_dir = profile_dir();
    build(&["--features", "http", "--example", name]);
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.is_file(), "no example binary at {}", bin.display());
    bin
}

/// The `oncelog` tool's binary (the `oncelog-cli` crate in `cli/`), built first when the
/// test runs under cargo: the root package's tests cannot name another crate's binary with
/// `CARGO_BIN_EXE_*`.
/// Built once per test binary.
pub fn oncelog_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        build(&["-p", "oncelog-cli", "--bin", "oncelog"]);
        let bin = profile_dir().join("oncelog");
        assert!(bin.is_file(), "no oncelog binary at {}", bin.display());
        bin
    })
    .clone()
}

/// `target/<profile>`, where this test binary was built (it is in `target/<profile>/deps`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// `cargo build ARGS` into this test binary's target directory and profile, when the test
/// runs under cargo (building what is fresh is a no-op).
fn build(args: &[&str]) {
    let Ok(cargo) = std::env::var("CARGO") else {
        return;
    };
    let profile_dir = profile_dir();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let status = Command::new(cargo)
        .args(["build", "--quiet"])
        .args(args)
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("target directory"))
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .status()
        .unwrap_or_else(|e| panic!("run cargo build {args:?}: {e}"));
    assert!(status.success(), "cargo build {args:?} failed");
}

/// An example server process; killed with SIGKILL when dropped, so that a failing test
/// leaves none behind.
pub struct ExampleServer {
    child: Child,
    /// Where it listens, from its `listening on ADDR` line.
    pub addr: String,
}

impl ExampleServer {
    /// Starts `cmd` (the example with its arguments; `--addr 127.0.0.1:0` is added) and
    /// waits up to `wait` for its `listening on ADDR` line.
    pub fn start(mut cmd: Command, wait: Duration) -> ExampleServer {
        let mut child = cmd
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the example");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the address line, then drains stdout so that the server never writes to a
        // closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(wait)
            .expect("server printed no address line (see its stderr above)");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ExampleServer { child, addr }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines of an example's fulfilment ledger (none if it does not exist yet).
pub fn ledger_lines(ledger: &Path) -> Vec<String> {
    match std::fs::read_to_string(ledger) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read ledger {}: {e}", ledger.display()),
    }
}
