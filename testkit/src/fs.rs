//! [`SimFs`]: an in-memory file system that can lose power, for [`CrashModel::LossyFs`].
//!
//! A store that does its file work through [`raftkit::fs::Fs`] runs on it unchanged. The file
//! system keeps, for every file and directory, what is durable next to what the page cache
//! holds, and a crash ([`SimFs::crash`]) keeps, from what was not synced, only what a real
//! disk might have kept — drawn from the file system's seed:
//!
//! - for each file, a prefix of the writes made since its last [`sync`](Fs::sync), the last of
//!   them possibly torn (only its first bytes kept);
//! - for each directory, a prefix of the name changes (creations, renames, removals) made since
//!   its last [`sync_dir`](Fs::sync_dir); a file whose name is lost is gone;
//! - directories themselves, once created, survive (a simplification).
//!
//! Faults ([`SimFs::inject`]) make a chosen operation fail: an I/O error, `ENOSPC`, a short
//! write (part of the data lands, then an error), or a power cut (that operation and every
//! later one fail until [`SimFs::crash`]). Operations are numbered across the file system's
//! life ([`SimFs::op_count`]), so a test can fail "the 3rd operation of this write".
//!
//! [`CrashModel::LossyFs`]: crate::CrashModel::LossyFs

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raftkit::fs::Fs;

use crate::rng::Rng;

/// A fault to inject at one operation of a [`SimFs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an I/O error and does nothing.
    Io,
    /// The operation fails with `ENOSPC` (`StorageFull`) and does nothing.
    NoSpace,
    /// A write keeps the first half of its data, then fails with an I/O error (other
    /// operations fail as with [`Fault::Io`]).
    ShortWrite,
    /// The power goes out: this operation and every later one fail until [`SimFs::crash`].
    PowerCut,
}

/// Counters of a [`SimFs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFsStats {
    /// Operations so far (reads and listings included).
    pub ops: u64,
    /// File and directory syncs.
    pub syncs: u64,
    /// Crashes.
    pub crashes: u64,
    /// Faults that fired.
    pub faults: u64,
}

#[derive(Clone, Debug)]
enum FileOp {
    /// Write at an offset (extending the file with zeros if needed).
    At(u64, Vec<u8>),
    /// Set the length (truncate or extend with zeros).
    Len(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    /// What the page cache holds.
    data: Vec<u8>,
    /// What is durable.
    synced: Vec<u8>,
    /// Writes since the last sync (applied to `synced` they give `data`).
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    /// A rename within the directory: one atomic change.
    Move(String, String, u64),
}

#[derive(Clone, Debug, Default)]
struct Dir {
    names: BTreeMap<String, u64>,
    synced: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

#[derive(Debug)]
struct Disk {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// The current life: handles of earlier lives are dead processes.
    life: u64,
    powered: bool,
    faults: BTreeMap<u64, Fault>,
    rng: Rng,
    stats: SimFsStats,
}

/// An in-memory file system that can lose power (see the [module docs](self)). Cheap to
/// clone; clones share the disk. Each handle belongs to one life of the node: after
/// [`crash`](SimFs::crash), the old handles fail every operation (the process that held them
/// is gone) and the returned handle serves the next life.
#[derive(Clone, Debug)]
pub struct SimFs {
    disk: Arc<Mutex<Disk>>,
    life: u64,
}

fn apply_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::At(offset, bytes) => {
            let start = *offset as usize;
            let end = start + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        FileOp::Len(n) => data.resize(*n as usize, 0),
    }
}

fn apply_dir(names: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(n, ino) => {
            names.insert(n.clone(), *ino);
        }
        DirOp::Unlink(n) => {
            names.remove(n);
        }
        DirOp::Move(from, to, ino) => {
            names.remove(from);
            names.insert(to.clone(), *ino);
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

/// `path` without `.` components and trailing slashes, so equal paths compare equal.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let p = normal(path);
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a path without a file name"))?
        .to_string();
    Ok((p.parent().map(Path::to_path_buf).unwrap_or_default(), name))
}

impl SimFs {
    /// A new, empty file system whose crashes are drawn from `seed`.
    pub fn new(seed: u64) -> SimFs {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), Dir::default());
        dirs.insert(PathBuf::new(), Dir::default());
        SimFs {
            disk: Arc::new(Mutex::new(Disk {
                dirs,
                inodes: BTreeMap::new(),
                next_inode: 1,
                life: 0,
                powered: true,
                faults: BTreeMap::new(),
                rng: Rng::new(seed),
                stats: SimFsStats::default(),
            })),
            life: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an operation: fails if this handle's life is over, the power is out or a fault
    /// is due; returns the short-write fault when one is due (the caller applies it).
    fn begin(&self, d: &mut Disk, what: &str) -> io::Result<Option<Fault>> {
        if d.life != self.life {
            return Err(io::Error::other(format!("{what}: the process of this handle crashed")));
        }
        if !d.powered {
            return Err(io::Error::other(format!("{what}: power lost")));
        }
        let n = d.stats.ops;
        d.stats.ops += 1;
        match d.faults.remove(&n) {
            None => Ok(None),
            Some(f) => {
                d.stats.faults += 1;
                match f {
                    Fault::Io => Err(io::Error::other(format!("{what}: injected I/O error"))),
                    Fault::NoSpace => Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!("{what}: injected ENOSPC"),
                    )),
                    Fault::PowerCut => {
                        d.powered = false;
                        Err(io::Error::other(format!("{what}: power lost")))
                    }
                    Fault::ShortWrite => Ok(Some(Fault::ShortWrite)),
                }
            }
        }
    }

    /// Makes the operation numbered `op_count() + after` fail with `fault`. A pending fault at
    /// the same point is replaced.
    pub fn inject(&self, after: u64, fault: Fault) {
        let mut d = self.lock();
        let at = d.stats.ops + after;
        d.faults.insert(at, fault);
    }

    /// Draws the outcome of later crashes from `seed` (suites reseed before each crash, so a
    /// failure replays from its printed seed).
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = Rng::new(seed);
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Operations so far, over every life (reads and listings included).
    pub fn op_count(&self) -> u64 {
        self.lock().stats.ops
    }

    /// Counters.
    pub fn stats(&self) -> SimFsStats {
        self.lock().stats
    }

    /// Whether an injected [`Fault::PowerCut`] has fired and no crash has followed yet.
    pub fn power_lost(&self) -> bool {
        !self.lock().powered
    }

    /// Power loss, now: every handle of this life dies, the unsynced state is reduced to what a
    /// disk might have kept (see the [module docs](self)), pending faults are cleared, and the
    /// returned handle serves the next life.
    pub fn crash(&self) -> SimFs {
        let mut guard = self.lock();
        let d = &mut *guard;
        for dir in d.dirs.values_mut() {
            let keep = pick_prefix(&mut d.rng, dir.pending.len());
            let mut names = dir.synced.clone();
            for op in &dir.pending[..keep] {
                apply_dir(&mut names, op);
            }
            dir.names = names.clone();
            dir.synced = names;
            dir.pending.clear();
        }
        let live: std::collections::BTreeSet<u64> =
            d.dirs.values().flat_map(|dir| dir.names.values().copied()).collect();
        d.inodes.retain(|ino, _| live.contains(ino));
        for inode in d.inodes.values_mut() {
            let n = inode.pending.len();
            let keep = pick_prefix(&mut d.rng, n);
            let mut data = inode.synced.clone();
            for op in &inode.pending[..keep] {
                apply_op(&mut data, op);
            }
            if keep < n && d.rng.chance(0.5) {
                // The next write landed in part: a torn write.
                if let FileOp::At(offset, bytes) = &inode.pending[keep] {
                    let part = d.rng.below(bytes.len() as u64 + 1) as usize;
                    apply_op(&mut data, &FileOp::At(*offset, bytes[..part].to_vec()));
                }
            }
            inode.data = data.clone();
            inode.synced = data;
            inode.pending.clear();
        }
        d.faults.clear();
        d.powered = true;
        d.life += 1;
        d.stats.crashes += 1;
        SimFs { disk: self.disk.clone(), life: d.life }
    }

    fn dir_mut<'a>(d: &'a mut Disk, dir: &Path) -> io::Result<&'a mut Dir> {
        d.dirs.get_mut(dir).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{}: no such directory", dir.display()))
        })
    }

    fn inode_of(d: &Disk, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        d.dirs.get(&dir).and_then(|x| x.names.get(&name)).copied().ok_or_else(|| not_found(path))
    }

    /// The length of the file at `path` (for block-device style backends).
    pub fn len(&self, path: &Path) -> io::Result<u64> {
        let mut d = self.lock();
        self.begin(&mut d, "len")?;
        let ino = Self::inode_of(&d, path)?;
        Ok(d.inodes[&ino].data.len() as u64)
    }

    /// Reads `out.len()` bytes at `offset` of the file at `path`.
    pub fn read_at(&self, path: &Path, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut d = self.lock();
        self.begin(&mut d, "read")?;
        let ino = Self::inode_of(&d, path)?;
        let data = &d.inodes[&ino].data;
        let start = offset as usize;
        let end = start + out.len();
        if end > data.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        out.copy_from_slice(&data[start..end]);
        Ok(())
    }

    /// Writes `data` at `offset` of the file at `path`, creating the file if needed (its name
    /// is durable only after a [`sync_dir`](Fs::sync_dir)).
    pub fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.lock();
        let fault = self.begin(&mut d, "write")?;
        let ino = self.create(&mut d, path)?;
        let data = match fault {
            Some(_) => &data[..data.len() / 2],
            None => data,
        };
        let inode = d.inodes.get_mut(&ino).expect("linked inode");
        let op = FileOp::At(offset, data.to_vec());
        apply_op(&mut inode.data, &op);
        inode.pending.push(op);
        match fault {
            Some(_) => Err(io::Error::other("write: injected short write")),
            None => Ok(()),
        }
    }

    /// Sets the length of the file at `path`.
    pub fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "set_len")?.is_some() {
            return Err(io::Error::other("set_len: injected I/O error"));
        }
        let ino = self.create(&mut d, path)?;
        let inode = d.inodes.get_mut(&ino).expect("linked inode");
        let op = FileOp::Len(len);
        apply_op(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }

    /// The inode named `path`, created (and linked, not durably) if there is none.
    fn create(&self, d: &mut Disk, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        if let Some(ino) = Self::dir_mut(d, &dir)?.names.get(&name) {
            return Ok(*ino);
        }
        let ino = d.next_inode;
        d.next_inode += 1;
        d.inodes.insert(ino, Inode::default());
        let dir = Self::dir_mut(d, &dir)?;
        dir.names.insert(name.clone(), ino);
        dir.pending.push(DirOp::Link(name, ino));
        Ok(ino)
    }
}

/// How many of `n` unsynced changes a crash keeps: none half the time, else any number.
fn pick_prefix(rng: &mut Rng, n: usize) -> usize {
    if n == 0 || rng.chance(0.5) { 0 } else { rng.below(n as u64 + 1) as usize }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "create_dir_all")?.is_some() {
            return Err(io::Error::other("create_dir_all: injected I/O error"));
        }
        let mut p = PathBuf::new();
        for c in normal(dir).components() {
            p.push(c);
            d.dirs.entry(p.clone()).or_default();
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut d = self.lock();
        if self.begin(&mut d, "list")?.is_some() {
            return Err(io::Error::other("list: injected I/O error"));
        }
        let dir = normal(dir);
        let mut out: Vec<String> = Self::dir_mut(&mut d, &dir)?.names.keys().cloned().collect();
        // Subdirectories are entries too.
        for p in d.dirs.keys() {
            if p.parent() == Some(dir.as_path()) && *p != dir {
                if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    out.push(n.to_string());
                }
            }
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut d = self.lock();
        if self.begin(&mut d, "read")?.is_some() {
            return Err(io::Error::other("read: injected I/O error"));
        }
        let ino = Self::inode_of(&d, path)?;
        Ok(d.inodes[&ino].data.clone())
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut d = self.lock();
        let fault = self.begin(&mut d, "write")?;
        let ino = self.create(&mut d, path)?;
        let inode = d.inodes.get_mut(&ino).expect("linked inode");
        for op in [
            FileOp::Len(0),
            FileOp::At(0, if fault.is_some() { &data[..data.len() / 2] } else { data }.to_vec()),
        ] {
            apply_op(&mut inode.data, &op);
            inode.pending.push(op);
        }
        match fault {
            Some(_) => Err(io::Error::other("write: injected short write")),
            None => Ok(()),
        }
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "sync")?.is_some() {
            return Err(io::Error::other("sync: injected I/O error"));
        }
        let ino = Self::inode_of(&d, path)?;
        d.stats.syncs += 1;
        let inode = d.inodes.get_mut(&ino).expect("linked inode");
        inode.synced = inode.data.clone();
        inode.pending.clear();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "rename")?.is_some() {
            return Err(io::Error::other("rename: injected I/O error"));
        }
        let ino = Self::inode_of(&d, from)?;
        let (fdir, fname) = split(from)?;
        let (tdir, tname) = split(to)?;
        Self::dir_mut(&mut d, &tdir)?;
        if fdir == tdir {
            let dir = Self::dir_mut(&mut d, &fdir)?;
            let op = DirOp::Move(fname, tname, ino);
            apply_dir(&mut dir.names, &op);
            dir.pending.push(op);
        } else {
            let src = Self::dir_mut(&mut d, &fdir)?;
            let op = DirOp::Unlink(fname);
            apply_dir(&mut src.names, &op);
            src.pending.push(op);
            let dst = Self::dir_mut(&mut d, &tdir)?;
            let op = DirOp::Link(tname, ino);
            apply_dir(&mut dst.names, &op);
            dst.pending.push(op);
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "remove")?.is_some() {
            return Err(io::Error::other("remove: injected I/O error"));
        }
        Self::inode_of(&d, path)?;
        let (dir, name) = split(path)?;
        let dir = Self::dir_mut(&mut d, &dir)?;
        let op = DirOp::Unlink(name);
        apply_dir(&mut dir.names, &op);
        dir.pending.push(op);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        if self.begin(&mut d, "sync_dir")?.is_some() {
            return Err(io::Error::other("sync_dir: injected I/O error"));
        }
        d.stats.syncs += 1;
        let dir = Self::dir_mut(&mut d, &normal(dir))?;
        dir.synced = dir.names.clone();
        dir.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn synced_data_and_names_survive_every_crash() {
        for seed in 0..50 {
            let fs = SimFs::new(seed);
            fs.create_dir_all(&p("/d")).unwrap();
            fs.write(&p("/d/a"), b"hello").unwrap();
            fs.sync(&p("/d/a")).unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            fs.write(&p("/d/a"), b"other bytes").unwrap();
            fs.write(&p("/d/b"), b"unsynced").unwrap();
            let fs2 = fs.crash();
            let a = fs2.read(&p("/d/a")).unwrap();
            // `write` truncates then writes: a crash may keep nothing, the truncation, or a
            // torn or whole new content — but never bytes no write produced.
            assert!(
                a == b"hello" || a.is_empty() || b"other bytes".starts_with(&a),
                "seed {seed}: {a:?}"
            );
            assert!(fs.read(&p("/d/a")).is_err(), "the old life's handle is dead");
        }
    }

    #[test]
    fn unsynced_names_and_data_are_lost_in_some_crashes() {
        let (mut lost_name, mut kept_name, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let fs = SimFs::new(seed);
            fs.create_dir_all(&p("/d")).unwrap();
            fs.write(&p("/d/x"), &[7u8; 100]).unwrap();
            fs.sync(&p("/d/x")).unwrap();
            let fs = fs.crash();
            match fs.read(&p("/d/x")) {
                Err(_) => lost_name += 1,
                Ok(data) => {
                    kept_name += 1;
                    assert_eq!(data, [7u8; 100], "seed {seed}: synced data must be whole");
                }
            }
            let fs = SimFs::new(seed);
            fs.create_dir_all(&p("/d")).unwrap();
            fs.write(&p("/d/y"), &[1u8; 100]).unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            let fs = fs.crash();
            let y = fs.read(&p("/d/y")).unwrap();
            if !y.is_empty() && y.len() < 100 {
                torn += 1;
            }
        }
        assert!(lost_name > 10 && kept_name > 10, "{lost_name} lost, {kept_name} kept");
        assert!(torn > 5, "{torn} torn writes");
    }

    #[test]
    fn rename_is_atomic_across_crashes() {
        for seed in 0..100 {
            let fs = SimFs::new(seed);
            fs.create_dir_all(&p("/d")).unwrap();
            fs.write(&p("/d/meta"), b"old").unwrap();
            fs.sync(&p("/d/meta")).unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            fs.write(&p("/d/meta.tmp"), b"new").unwrap();
            fs.sync(&p("/d/meta.tmp")).unwrap();
            fs.rename(&p("/d/meta.tmp"), &p("/d/meta")).unwrap();
            let fs = fs.crash();
            let m = fs.read(&p("/d/meta")).unwrap();
            assert!(m == b"old" || m == b"new", "seed {seed}: {m:?}");
        }
    }

    #[test]
    fn faults_fire_at_their_operation() {
        let fs = SimFs::new(1);
        fs.create_dir_all(&p("/d")).unwrap();
        fs.inject(1, Fault::NoSpace);
        fs.write(&p("/d/a"), b"1").unwrap();
        let e = fs.write(&p("/d/b"), b"2").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        fs.write(&p("/d/c"), b"3").unwrap();
        fs.inject(0, Fault::ShortWrite);
        assert!(fs.write(&p("/d/e"), b"abcd").is_err());
        assert_eq!(fs.read(&p("/d/e")).unwrap(), b"ab");
        fs.inject(0, Fault::PowerCut);
        assert!(fs.read(&p("/d/a")).is_err());
        assert!(fs.read(&p("/d/c")).is_err(), "everything fails after a power cut");
        assert!(fs.power_lost());
        let fs = fs.crash();
        assert!(!fs.power_lost());
        assert_eq!(fs.stats().faults, 3);
    }
}
