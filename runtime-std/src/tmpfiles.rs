//! Temporary files of atomic writers (`.NAME.tmp-PID` beside `NAME`): a writer killed between creating one
//! and renaming it leaves it behind, and nothing else would ever remove it.

use std::ffi::OsStr;
use std::path::Path;

/// Removes the temporary files of `name` in `dir` whose writer process is gone. Called by a writer before
/// it writes there, so the folder it writes to does not fill up with the leftovers of killed runs. A file
/// whose process still runs (or whose process cannot be checked on this OS) is left alone; failures are
/// ignored, as the write itself does not depend on them.
pub fn remove_stale(dir: &Path, name: &OsStr) {
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in entries.flatten() {
        let file = ent.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            // `PID` or `PID-N` (one process may have several writes going).
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if process_is_gone(pid) {
            let _ = std::fs::remove_file(ent.path());
        }
    }
}

/// Whether no process `pid` exists. Only where /proc tells (Linux); elsewhere every process counts as
/// running, so nothing is removed.
fn process_is_gone(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid != std::process::id() && proc.join("self").exists() && !proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_tmp_files_of_killed_writers_are_removed_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // pid_max is at most 2^22 on Linux: this process cannot exist. Process 1 always does.
        let dead = d.join(".m.enigma.tmp-999999999");
        let dead_numbered = d.join(".m.enigma.tmp-999999998-3");
        let alive = d.join(".m.enigma.tmp-1");
        let other = d.join(".n.enigma.tmp-999999999");
        for p in [&dead, &dead_numbered, &alive, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        crate::writer::atomic_write(&d.join("m.enigma"), b"whole").unwrap();
        assert_eq!(std::fs::read(d.join("m.enigma")).unwrap(), b"whole");
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "the dead writer's file is gone");
            assert!(
                !dead_numbered.exists(),
                "and so is one of its numbered writes"
            );
        }
        assert!(alive.exists(), "a running writer's file stays");
        assert!(other.exists(), "another file's temporaries stay");
    }
}
