//! A power-loss simulator: an `IoHook` that keeps what the store's files hold apart from
//! what has been made durable, and on request builds the directory a power cut at that
//! instant could leave behind.
//!
//! The model (the pessimistic side of what Linux file systems promise):
//!
//! - File contents are durable only as far as a sync made them: `SyncFile` makes the whole
//!   file (and its length) durable, `SyncRange` the range (and the length). Everything else
//!   written since — through the file API or a shared mapping — is volatile. At a cut, each
//!   file's volatile bytes are, at random: all dropped, all kept, torn at an arbitrary byte
//!   (kept before it, dropped after), or kept page by page at random (4 KiB pages written
//!   back in any order).
//! - Names are durable only once their directory was synced. Creates, renames and removes
//!   since the last directory sync are pending, in order; at a cut a random prefix of them
//!   has reached the disk (a journal commits metadata in order), the rest vanish.
//! - A file's content follows its inode, not its name: a rename carries it, and a file
//!   removed or replaced while its old name is still durable keeps what it last held.
//!
//! Only files directly in the store directory are tracked (`LOCK` is not: it holds no data).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use oncelog::{IoHook, IoOp};

/// What a cut does with one file's volatile bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Drop,
    Keep,
    /// Kept before this byte, dropped from it on.
    Torn(usize),
    /// Each 4 KiB page kept or dropped on a coin flip, from this seed.
    Pages(u64),
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(String, usize),
    Rename(String, String, usize),
    Unlink(String),
}

#[derive(Debug, Default)]
struct Inode {
    /// What a cut keeps for certain.
    durable: Vec<u8>,
    /// The content when the inode lost its last volatile name (removed or replaced), so a
    /// cut that brings that name back can still see what was written but not synced.
    orphaned: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    volatile: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    pending: Vec<DirOp>,
    events: u64,
}

/// The simulator. Use it as the store's hook, or call its `before`/`after` from a hook of
/// your own that also decides when to cut (a cut taken in `before` is a power loss just
/// before that operation).
pub struct PowerSim {
    dir: PathBuf,
    state: Mutex<State>,
    /// Operations between their `before` and `after` (the system call runs in between,
    /// so the model lags the files), and whether a cut is being taken. A cut waits for
    /// the first to drain and holds new operations back, so it sees files and model agree.
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

#[derive(Default)]
struct Gate {
    in_flight: usize,
    cutting: bool,
}

/// A small deterministic generator for the cut choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// What one cut left: a directory, and what was chosen.
#[derive(Debug)]
pub struct Cut {
    pub event: u64,
    pub dir_ops_kept: usize,
    pub dir_ops_pending: usize,
    /// The pending directory operations, those kept first.
    pub pending: Vec<String>,
    /// Each file of the cut, with its inode number and what became of its volatile bytes.
    pub fates: Vec<(String, usize, Fate)>,
}

impl PowerSim {
    /// A simulator for the store directory `dir`, which must be empty or not exist yet.
    pub fn new(dir: &Path) -> Arc<PowerSim> {
        Arc::new(PowerSim {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            gate: Mutex::new(Gate::default()),
            gate_changed: Condvar::new(),
        })
    }

    /// A simulator for the store directory `dir` as it is now, every file in it taken as
    /// durable (as after a reboot): for going on with the directory a cut left.
    pub fn adopt(dir: &Path) -> Arc<PowerSim> {
        let sim = PowerSim::new(dir);
        {
            let mut st = sim.state.lock().unwrap();
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .expect("read dir")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "LOCK")
                .collect();
            names.sort();
            for name in names {
                let durable = sim.read(&name);
                st.inodes.push(Inode {
                    durable,
                    orphaned: None,
                });
                let ino = st.inodes.len() - 1;
                st.volatile.insert(name.clone(), ino);
                st.durable.insert(name, ino);
            }
        }
        sim
    }

    pub fn events(&self) -> u64 {
        self.state.lock().unwrap().events
    }

    /// The file name of `path` if it is directly in the store directory.
    fn name(&self, path: &Path) -> Option<String> {
        (path.parent()? == self.dir.as_path())
            .then(|| path.file_name()?.to_str().map(str::to_string))
            .flatten()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap_or_default()
    }

    /// Writes into `out` (which must not exist) the directory a power cut now could leave,
    /// choosing with `rng`. Waits for operations under way in other threads to finish, and
    /// holds new ones back meanwhile. The calling thread must not be inside an operation
    /// (call it from a hook's `before`, before passing the operation to the simulator).
    pub fn cut(&self, out: &Path, rng: &mut Rng) -> Cut {
        {
            let mut g = self.gate.lock().unwrap();
            while g.cutting {
                g = self.gate_changed.wait(g).unwrap();
            }
            g.cutting = true;
            while g.in_flight > 0 {
                g = self.gate_changed.wait(g).unwrap();
            }
        }
        let cut = self.cut_now(out, rng);
        self.gate.lock().unwrap().cutting = false;
        self.gate_changed.notify_all();
        cut
    }

    fn cut_now(&self, out: &Path, rng: &mut Rng) -> Cut {
        let st = self.state.lock().unwrap();
        let keep = rng.below(st.pending.len() as u64 + 1) as usize;
        let mut names = st.durable.clone();
        for op in st.pending.iter().take(keep) {
            apply(&mut names, op);
        }
        std::fs::create_dir_all(out).expect("create cut dir");
        let mut fates = Vec::new();
        for (name, &ino) in &names {
            let inode = &st.inodes[ino];
            let current = match st.volatile.iter().find(|(_, &i)| i == ino) {
                Some((live, _)) => self.read(live),
                None => inode
                    .orphaned
                    .clone()
                    .unwrap_or_else(|| inode.durable.clone()),
            };
            let fate = match rng.below(4) {
                0 => Fate::Drop,
                1 => Fate::Keep,
                2 => {
                    Fate::Torn(rng.below(current.len().max(inode.durable.len()) as u64 + 1) as usize)
                }
                _ => Fate::Pages(rng.next()),
            };
            let bytes = apply_fate(&inode.durable, &current, fate);
            std::fs::write(out.join(name), bytes).expect("write cut file");
            fates.push((name.clone(), ino, fate));
        }
        Cut {
            event: st.events,
            dir_ops_kept: keep,
            dir_ops_pending: st.pending.len(),
            pending: st.pending.iter().map(|op| format!("{op:?}")).collect(),
            fates,
        }
    }
}

fn apply(names: &mut BTreeMap<String, usize>, op: &DirOp) {
    match op {
        DirOp::Link(n, ino) => {
            names.insert(n.clone(), *ino);
        }
        DirOp::Rename(from, to, ino) => {
            names.remove(from);
            names.insert(to.clone(), *ino);
        }
        DirOp::Unlink(n) => {
            names.remove(n);
        }
    }
}

/// The bytes a file holds after a cut: `durable` for certain, and of what `current` holds
/// beyond it, what `fate` keeps. The length is the current one if any volatile byte past
/// the durable length is kept, else the durable one.
fn apply_fate(durable: &[u8], current: &[u8], fate: Fate) -> Vec<u8> {
    let len = durable.len().max(current.len());
    let at = |v: &[u8], i: usize| v.get(i).copied().unwrap_or(0);
    let mut out: Vec<u8> = (0..len)
        .map(|i| {
            let kept = match fate {
                Fate::Drop => false,
                Fate::Keep => true,
                Fate::Torn(p) => i < p,
                Fate::Pages(seed) => {
                    let page = (i / 4096) as u64;
                    (seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                        .count_ones()
                        .is_multiple_of(2)
                }
            };
            if kept {
                at(current, i)
            } else {
                at(durable, i)
            }
        })
        .collect();
    // Length: the durable one, unless a kept byte lies beyond it.
    let kept_len = match fate {
        Fate::Drop => durable.len(),
        Fate::Keep => current.len(),
        Fate::Torn(p) => durable.len().max(p.min(current.len())),
        Fate::Pages(_) => current.len().max(durable.len()),
    };
    out.truncate(kept_len);
    out
}

impl IoHook for PowerSim {
    fn before(&self, op: &IoOp<'_>) -> io::Result<()> {
        {
            let mut g = self.gate.lock().unwrap();
            while g.cutting {
                g = self.gate_changed.wait(g).unwrap();
            }
            g.in_flight += 1;
        }
        {
            let mut st = self.state.lock().unwrap();
            st.events += 1;
            // Capture what a file being removed or replaced holds, before it is gone.
            let victim = match *op {
                IoOp::Remove { path } => self.name(path),
                IoOp::Rename { to, .. } => self.name(to),
                IoOp::Create { path } => self.name(path),
                _ => None,
            };
            if let Some(n) = victim {
                if let Some(&ino) = st.volatile.get(&n) {
                    let bytes = self.read(&n);
                    st.inodes[ino].orphaned = Some(bytes);
                }
            }
        }
        Ok(())
    }

    /// A failed operation changed nothing the model tracks (a failed sync may have lost
    /// pages, which the model treats as volatile anyway).
    fn after(&self, op: &IoOp<'_>, outcome: Result<(), &io::Error>) {
        if outcome.is_ok() {
            self.apply(op);
        }
        self.gate.lock().unwrap().in_flight -= 1;
        self.gate_changed.notify_all();
    }
}

impl PowerSim {
    fn apply(&self, op: &IoOp<'_>) {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        match *op {
            IoOp::Create { path } => {
                if let Some(n) = self.name(path) {
                    st.inodes.push(Inode::default());
                    let ino = st.inodes.len() - 1;
                    st.volatile.insert(n.clone(), ino);
                    st.pending.push(DirOp::Link(n, ino));
                }
            }
            IoOp::Rename { from, to } => {
                if let (Some(f), Some(t)) = (self.name(from), self.name(to)) {
                    if let Some(ino) = st.volatile.remove(&f) {
                        st.volatile.insert(t.clone(), ino);
                        st.pending.push(DirOp::Rename(f, t, ino));
                    }
                }
            }
            IoOp::Remove { path } => {
                if let Some(n) = self.name(path) {
                    if st.volatile.remove(&n).is_some() {
                        st.pending.push(DirOp::Unlink(n));
                    }
                }
            }
            IoOp::SyncFile { path } => {
                if let Some(n) = self.name(path) {
                    if let Some(&ino) = st.volatile.get(&n) {
                        st.inodes[ino].durable = self.read(&n);
                    }
                }
            }
            IoOp::SyncRange { path, offset, len } => {
                if let Some(n) = self.name(path) {
                    if let Some(&ino) = st.volatile.get(&n) {
                        let cur = self.read(&n);
                        let d = &mut st.inodes[ino].durable;
                        d.resize(cur.len(), 0);
                        let from = (offset as usize).min(cur.len());
                        let to = (offset.saturating_add(len) as usize).min(cur.len());
                        d[from..to].copy_from_slice(&cur[from..to]);
                    }
                }
            }
            IoOp::SyncDir { path } if path == self.dir.as_path() => {
                for op in std::mem::take(&mut st.pending) {
                    apply(&mut st.durable, &op);
                }
            }
            // Allocations and writes change only volatile state, read at the next sync.
            _ => {}
        }
    }
}
