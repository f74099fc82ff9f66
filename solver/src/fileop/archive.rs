//! ADD of a local archive: a regular source whose content is a tar — plain, gzip, bzip2, xz or zstd, told by
//! its first bytes, never by its name — is extracted into the destination instead of being copied, as
//! BuildKit's `unpack` does. Anything else (a `.tar.gz` that is not one included) is copied as a file.
//!
//! The destination directory is the root of the extraction; `kiln_fsutil::tar` keeps every entry inside it.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use kiln_fsutil::compress;
use kiln_fsutil::root::{Owner, Root};
use kiln_fsutil::tar::{self, Flavor};
use rustix::fs::OFlags;

use super::{FileOpError, io_error};

/// BuildKit's `isArchivePath`: the (decompressed) content starts with a valid tar header.
fn is_archive(file: File) -> bool {
    let Ok((_, reader)) = compress::decompress(BufReader::new(file)) else {
        return false;
    };
    let mut archive = ::tar::Archive::new(reader);
    matches!(
        archive.entries().map(|mut entries| entries.next()),
        Ok(Some(Ok(_)))
    )
}

/// Extracts `src` of `source` into `dest` of `target` if it is an archive; false (nothing done) if it is not.
pub(super) fn extract_if_archive(
    source: &Root,
    src: &Path,
    target: &Root,
    dest: &[u8],
    owner: Option<Owner>,
    timestamp: Option<i64>,
    shown_src: &str,
) -> Result<bool, FileOpError> {
    let open = || {
        source
            .open(src, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, 0)
            .map(File::from)
            .map_err(io_error("open", shown_src))
    };
    if !is_archive(open()?) {
        return Ok(false);
    }
    let dest_shown = format!("/{}", String::from_utf8_lossy(dest));
    let rel = target
        .resolve(dest, true)
        .map_err(io_error("resolve", &dest_shown))?;
    target
        .mkdir_all(&rel, 0o755, owner, timestamp)
        .map_err(io_error("mkdir", &dest_shown))?;
    let root = target.sub(&rel).map_err(io_error("open", &dest_shown))?;
    let failed = |entry: Option<String>, e: std::io::Error| FileOpError::Archive {
        archive: shown_src.to_string(),
        entry: entry.unwrap_or_default(),
        reason: e.to_string(),
    };
    let (_, reader) = compress::decompress(BufReader::new(open()?)).map_err(|e| failed(None, e))?;
    let mut archive = ::tar::Archive::new(reader);
    tar::extract(&mut archive, &root, Flavor::Archive { owner, timestamp })
        .map_err(|e| failed(e.entry, e.error))?;
    Ok(true)
}
