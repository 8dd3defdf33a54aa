//! File-system steps that survive power loss.
//!
//! `fsync` of a file makes its bytes durable, not its name: the directory
//! entry lives in the parent directory, which needs its own `fsync`. A
//! directory created just before a power loss can vanish with every file in
//! it, however well those files were synced.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Makes the entries of directory `dir` (the names of the files and
/// directories in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(non_empty(dir))?.sync_all()
}

/// Creates `path` and any missing parents (as `create_dir_all`) and makes
/// them durable: syncs every level that was created and the directory that
/// holds the topmost one. `path` and its parent are synced even when they
/// already exist, since an earlier process may have created them and died
/// before syncing.
pub fn create_dir_durable(path: &Path) -> io::Result<()> {
    // The levels that do not exist yet, deepest first.
    let mut missing = Vec::new();
    let mut level = Some(path);
    while let Some(p) = level.filter(|p| !p.as_os_str().is_empty()) {
        match fs::metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                level = p.parent();
            }
            Err(e) => return Err(e),
        }
    }
    fs::create_dir_all(path)?;
    sync_dir(path)?;
    for p in &missing {
        sync_dir(parent(p))?;
    }
    if missing.is_empty() {
        sync_dir(parent(path))?;
    }
    Ok(())
}

/// The directory holding `p` (`.` for a bare relative name).
fn parent(p: &Path) -> &Path {
    non_empty(p.parent().unwrap_or(Path::new(".")))
}

fn non_empty(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_existing_ones() {
        let t = tempfile::tempdir().expect("tempdir");
        let deep = t.path().join("a").join("b").join("c");
        create_dir_durable(&deep).expect("create");
        assert!(deep.is_dir());
        // Again, on what now exists.
        create_dir_durable(&deep).expect("again");
        create_dir_durable(t.path()).expect("existing root");
        // A file in the way is an error, not a silent success.
        let file = t.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(create_dir_durable(&file.join("sub")).is_err());
        assert!(create_dir_durable(&file).is_err());
    }
}
