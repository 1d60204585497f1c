//! One writer per model folder, enforced by the OS.
//!
//! Training, serving, converting, renaming and deleting a model each hold the folder's lock for as long as
//! they work on it. The lock is an advisory OS file lock (`flock` on Unix, `LockFileEx` on Windows) on
//! `FOLDER/.lock`: the OS drops it when the holder exits or crashes, so a stale lock cannot outlive its
//! process. The holder writes its pid and purpose into the file so that the process refused can say who
//! holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a model folder.
pub const LOCK_FILE: &str = ".lock";
/// The model file's name inside a model folder (the model store's and a training run's).
pub const MODEL_FILE: &str = "model.enigma";

/// Test hook: after taking a model folder's lock (a writer's or a reader's), hold it this many milliseconds
/// before working, so that a test can make two processes meet on one folder. Documented in docs/MODELS.md;
/// never set it otherwise.
pub const HOLD_LOCK_ENV: &str = "ENIGMA_TEST_HOLD_LOCK_MS";

/// The pause [`HOLD_LOCK_ENV`] asks for, if any.
pub fn hold_for_tests() {
    if let Some(ms) = std::env::var(HOLD_LOCK_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The reader's lock that using the model file `file` needs: its folder's shared lock when the file is a
/// model folder's (named [`MODEL_FILE`], or beside a [`LOCK_FILE`]), else none (a loose `.enigma` file has
/// no folder owner to coordinate with). A folder this process may not write, and so cannot hold a lock
/// file for, is read without one.
pub fn reader_lock_for(file: &Path, purpose: &str) -> Result<Option<ModelLock>, LockError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let has_lock_file = dir.join(LOCK_FILE).exists();
    if !has_lock_file && file.file_name().is_none_or(|n| n != MODEL_FILE) {
        return Ok(None);
    }
    match ModelLock::acquire_shared(dir, purpose) {
        Ok(lock) => {
            hold_for_tests();
            Ok(Some(lock))
        }
        Err(LockError::Io { source, .. }) if !has_lock_file && read_only(&source) => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_only(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder (this process or another) has the lock.
    #[error("{} is locked by {holder}; try again when it finishes", dir.display())]
    Held { dir: PathBuf, holder: String },
    #[error("{}: cannot lock: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds a folder's lock until dropped.
#[derive(Debug)]
pub struct ModelLock {
    file: File,
    dir: PathBuf,
    purpose: String,
    shared: bool,
}

impl ModelLock {
    /// Takes the lock of the model folder `dir` for `purpose` ("training", "serving", "delete", ...),
    /// or says who holds it. Never waits.
    pub fn acquire(dir: impl AsRef<Path>, purpose: &str) -> Result<ModelLock, LockError> {
        let dir = dir.as_ref();
        Self::acquire_file(&dir.join(LOCK_FILE), dir, purpose)
    }

    /// Takes a lock held on the file `path`, naming `what` in errors. For locks that guard something
    /// other than one model folder (the models registry, the module state).
    pub fn acquire_file(path: &Path, what: &Path, purpose: &str) -> Result<ModelLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Not truncated on open: until the lock is ours, the contents name the current holder.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        lock_patiently(&file, what, path, fs4::fs_std::FileExt::try_lock_exclusive)?;
        let mut lock = ModelLock {
            file,
            dir: what.to_path_buf(),
            purpose: purpose.to_string(),
            shared: false,
        };
        lock.record().map_err(io)?;
        Ok(lock)
    }

    /// A reader's lock on a model folder (`run`, `chat`, `serve`): any number of readers share it, and
    /// while one holds it a writer (`train`, the model manager) is refused, and the other way round.
    pub fn acquire_shared(dir: impl AsRef<Path>, purpose: &str) -> Result<ModelLock, LockError> {
        let dir = dir.as_ref();
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            // A reader never writes the file: an existing one it may only read locks as well.
            Err(e) if read_only(&e) => File::open(&path).map_err(|_| io(e))?,
            other => other.map_err(io)?,
        };
        lock_patiently(&file, dir, &path, fs4::fs_std::FileExt::try_lock_shared)?;
        // Readers leave the note alone: it names a writer, and several readers would overwrite each other.
        Ok(ModelLock {
            file,
            dir: dir.to_path_buf(),
            purpose: purpose.to_string(),
            shared: true,
        })
    }

    fn record(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        writeln!(self.file, "{} {}", std::process::id(), self.purpose)?;
        self.file.flush()
    }

    /// Who holds the lock of model folder `dir` right now, or `None` when nobody does (or the folder has
    /// never been locked). Probes with a shared lock held for an instant, so it is exact at the moment of
    /// the call and never makes a real holder fail.
    pub fn holder(dir: impl AsRef<Path>) -> Result<Option<String>, LockError> {
        let path = dir.as_ref().join(LOCK_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LockError::Io { path, source }),
        };
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        if fs4::fs_std::FileExt::try_lock_shared(&file).map_err(io)? {
            // Closing the file drops the shared lock.
            Ok(None)
        } else {
            Ok(Some(describe_holder(&read_note(&file))))
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn purpose(&self) -> &str {
        &self.purpose
    }
}

impl Drop for ModelLock {
    fn drop(&mut self) {
        // Clearing the note is cosmetic; the OS releases the lock itself when the file is closed. The file
        // stays: removing it would let a process that opened it a moment ago lock an orphaned inode. A reader
        // never wrote the note, so it leaves it alone.
        if !self.shared {
            let _ = self.file.set_len(0);
        }
    }
}

/// Takes `file`'s lock with `try_lock`, or says who holds it. A holder writes its note right after locking,
/// and a probe (`holder`, or a test waiting for a reader) holds a lock for an instant and writes nothing: a
/// refusal with an empty note is retried for a moment, so neither a probe nor a holder caught between lock
/// and note makes this fail.
fn lock_patiently(
    file: &File,
    what: &Path,
    path: &Path,
    try_lock: fn(&File) -> std::io::Result<bool>,
) -> Result<(), LockError> {
    let mut tries = 0;
    while !try_lock(file).map_err(|source| LockError::Io {
        path: path.to_path_buf(),
        source,
    })? {
        let note = read_note(file);
        tries += 1;
        if !note.trim().is_empty() || tries > 40 {
            return Err(LockError::Held {
                dir: what.to_path_buf(),
                holder: describe_holder(&note),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

fn read_note(mut file: &File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    text
}

/// "process 1234 (training)" from the holder's note, or a plain phrase when the note is unreadable (a holder
/// that is still writing it, or one from an older version).
fn describe_holder(note: &str) -> String {
    let mut parts = note.trim().splitn(2, ' ');
    match (parts.next().map(str::parse::<u32>), parts.next()) {
        (Some(Ok(pid)), Some(purpose)) if pid == std::process::id() => {
            format!("this process ({purpose})")
        }
        (Some(Ok(pid)), Some(purpose)) => format!("process {pid} ({purpose})"),
        (Some(Ok(pid)), None) => format!("process {pid}"),
        _ => "another process".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid_and_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let first = ModelLock::acquire(dir.path(), "training").unwrap();
        let err = ModelLock::acquire(dir.path(), "serving").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(msg.contains("this process (training)"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert_eq!(
            ModelLock::holder(dir.path()).unwrap().as_deref(),
            Some("this process (training)")
        );
        drop(first);
        assert_eq!(ModelLock::holder(dir.path()).unwrap(), None);
        let again = ModelLock::acquire(dir.path(), "serving").unwrap();
        assert_eq!(again.purpose(), "serving");
    }

    #[test]
    fn a_missing_folder_is_an_io_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelLock::acquire(dir.path().join("nope"), "training").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
    }

    #[test]
    fn another_processes_note_is_quoted() {
        assert_eq!(describe_holder("4242 convert\n"), "process 4242 (convert)");
        assert_eq!(describe_holder("4242"), "process 4242");
        assert_eq!(describe_holder("garbage"), "another process");
    }

    #[test]
    fn a_probe_never_makes_a_real_holder_fail() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ModelLock::holder(dir.path()).unwrap(), None, "never locked");
        drop(ModelLock::acquire(dir.path(), "x").unwrap());
        // A probe's shared lock held while the holder arrives: the holder waits it out.
        let probe = File::open(dir.path().join(LOCK_FILE)).unwrap();
        assert!(fs4::fs_std::FileExt::try_lock_shared(&probe).unwrap());
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(probe);
        });
        let lock = ModelLock::acquire(dir.path(), "training").unwrap();
        t.join().unwrap();
        assert_eq!(lock.purpose(), "training");
    }
}
