//! A small file-system interface for [`LogStore`](crate::LogStore) implementations that keep
//! their data in files.
//!
//! A store written against [`Fs`] instead of `std::fs` runs on the real file system in
//! production ([`StdFs`]) and, in its tests, on the testkit's simulated file system
//! (`raftkit_testkit::fs::SimFs`), which can lose power: every write not yet synced is lost or
//! torn, directory entries not synced in their directory vanish, and I/O errors, `ENOSPC` and
//! short writes are injected at chosen points. That is how the testkit checks that a store
//! survives power loss without pulling a plug.
//!
//! The operations are the ones crash-safe file work needs and nothing more: whole-file reads
//! and writes, `fsync` of a file and of a directory, atomic rename, removal and listing. Paths
//! are plain paths; [`StdFs`] uses them as they are.
//!
//! # Durability rules (the same as POSIX's)
//! - [`write`](Fs::write) puts data in the page cache only: a power loss may lose it, or keep
//!   part of it, until [`sync`](Fs::sync) of that file returns.
//! - A new name (a created file, the target of a rename) and a removal are durable only once
//!   [`sync_dir`](Fs::sync_dir) of the directory holding them returns.
//! - [`rename`](Fs::rename) replaces its target atomically: after a crash the name holds the
//!   old file or the new one, never a mix.

use std::io;
use std::path::Path;

/// File operations a store needs, with POSIX durability rules (see the [module docs](self)).
/// Every method may block the calling thread on I/O; call them from a blocking context
/// (`tokio::task::spawn_blocking`, or a store's own thread).
pub trait Fs: Send + Sync + 'static {
    /// Creates `dir` and any missing parents (not durable until each parent is synced).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// The names (not full paths) of the files and directories in `dir`, in no set order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// The whole content of the file at `path`. `NotFound` if there is none.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Creates the file at `path` (or truncates it) and writes `data` as its whole content.
    /// Not durable until [`sync`](Self::sync); a new file's name not until
    /// [`sync_dir`](Self::sync_dir) of its directory.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;

    /// Makes the content of the file at `path` durable (`fsync`).
    fn sync(&self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to` atomically, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`. `NotFound` if there is none.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Makes the entries of directory `dir` durable (names created, renamed or removed in it).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system (`std::fs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl Fs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new().write(true).open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl<F: Fs + ?Sized> Fs for std::sync::Arc<F> {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        (**self).create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        (**self).list(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        (**self).read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        (**self).write(path, data)
    }
    fn sync(&self, path: &Path) -> io::Result<()> {
        (**self).sync(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        (**self).remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        (**self).sync_dir(dir)
    }
}
