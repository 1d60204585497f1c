//! Finding the third-party files in `../shared` that tests and benches use.

use std::path::PathBuf;

/// `ENIGMA_SHARED`, or `../shared` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("ENIGMA_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// The path of a shared file, or `None` after printing a loud skip line when the shared folder is missing.
pub fn shared_file(rel: &str, test: &str) -> Option<PathBuf> {
    let p = shared_dir().join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "!!!!!!!! SKIPPED {test}: {} is missing (set ENIGMA_SHARED) !!!!!!!!",
            p.display()
        );
        None
    }
}
