//! Outputs that appear whole or not at all: written under a temporary name beside the destination (same
//! directory, so same filesystem), synced, then renamed over it. A failed or interrupted write leaves the
//! destination as it was; the temporary is removed on failure, and a crash leaves only a dot-file named
//! after the process that wrote it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes the file `dest` with what `write` writes, atomically; missing parent directories are created.
pub(crate) fn write_file(dest: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let (dir, tmp) = temp_beside(dest)?;
    let guard = Temp {
        path: tmp.clone(),
        persisted: false,
    };
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(format!("write {}", tmp.display()))(e.into_error()))?;
    file.sync_all()
        .map_err(Error::io(format!("sync {}", tmp.display())))?;
    drop(file);
    guard.persist(dest, &dir)
}

/// A directory built beside `dest` and then renamed onto it; removed when dropped unpersisted.
pub(crate) struct TempDir {
    temp: Temp,
    /// The directory holding `dest` (and the temporary).
    parent: PathBuf,
}

impl TempDir {
    pub fn beside(dest: &Path) -> Result<TempDir> {
        let (parent, path) = temp_beside(dest)?;
        std::fs::create_dir(&path).map_err(Error::io(format!("create {}", path.display())))?;
        Ok(TempDir {
            temp: Temp {
                path,
                persisted: false,
            },
            parent,
        })
    }

    pub fn path(&self) -> &Path {
        &self.temp.path
    }

    /// Renames the directory onto `dest`, which must be missing or an empty directory.
    pub fn persist(self, dest: &Path) -> Result<()> {
        self.temp.persist(dest, &self.parent)
    }
}

/// A temporary file or directory, removed when dropped unless persisted.
struct Temp {
    path: PathBuf,
    persisted: bool,
}

impl Temp {
    fn persist(mut self, dest: &Path, parent: &Path) -> Result<()> {
        std::fs::rename(&self.path, dest).map_err(Error::io(format!(
            "rename {} to {}",
            self.path.display(),
            dest.display()
        )))?;
        self.persisted = true;
        // The rename is durable once the directory that records it is.
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(format!("sync directory {}", parent.display())))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.persisted {
            return;
        }
        let removed = kiln_fsutil::root::remove_path(&self.path);
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temporary output");
        }
    }
}

/// The directory of `dest` (created if missing) and a fresh temporary name in it.
fn temp_beside(dest: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = dest.file_name().ok_or_else(|| {
        Error::invalid(
            format!("destination {}", dest.display()),
            "it names no file (it ends in .. or is the root)",
        )
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io(format!("create directory {}", parent.display())))?;
    // The store's temp naming (pid, process start time, sequence): unique among concurrent writers, and a
    // leftover tells which process left it.
    let tmp = parent.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        kiln_cache::temp_name("kiln-tmp")
    ));
    Ok((parent, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_file_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("sub/out.tar");
        write_file(&dest, |w| w.write_all(b"one").map_err(Error::io("write"))).expect("write");
        assert_eq!(std::fs::read(&dest).expect("read"), b"one");
        let failed = write_file(&dest, |w| {
            w.write_all(b"half").map_err(Error::io("write"))?;
            Err(Error::invalid("the content", "failed half way"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&dest).expect("read"), b"one", "the old file stays");
        assert_eq!(names(&dir.path().join("sub")), ["out.tar"], "no temporary left");
        assert!(
            write_file(Path::new("/"), |_| Ok(())).is_err(),
            "the root names no file"
        );
    }

    #[test]
    fn a_directory_is_renamed_into_place_or_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("layout");
        let tmp = TempDir::beside(&dest).expect("temp dir");
        std::fs::write(tmp.path().join("f"), b"x").expect("write");
        drop(tmp);
        assert!(names(dir.path()).is_empty(), "dropped unpersisted: removed");
        std::fs::create_dir(&dest).expect("an empty directory to replace");
        let tmp = TempDir::beside(&dest).expect("temp dir");
        std::fs::write(tmp.path().join("f"), b"x").expect("write");
        tmp.persist(&dest).expect("persist");
        assert_eq!(names(&dest), ["f"]);
        assert_eq!(names(dir.path()), ["layout"]);
    }
}
