//! ADD of a local archive: a regular source whose content is a tar — plain, gzip, bzip2, xz or zstd, told by
//! its first bytes, never by its name — is extracted into the destination instead of being copied, as
//! BuildKit's `unpack` does. Anything else (a `.tar.gz` that is not one included) is copied as a file.
//!
//! The destination directory is the root of the extraction: names are cleaned (one climbing above the root
//! is an error, an absolute one is taken relative to it), every entry's parent is resolved inside that root —
//! a symlink the archive made, even to `/` or `../..`, leads back inside it — and the entry itself is always
//! created fresh, so nothing is written through a symlink, and hardlinks can only point inside the root.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid, statat};
use rustix::io::Errno;

use super::root::{Owner, Rel, Root, remove_tree, seconds, set_meta_at};
use super::{FileOpError, io_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// The magic numbers moby's `DecompressStream` recognises.
fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn decompress(file: File) -> io::Result<Box<dyn Read>> {
    let mut reader = BufReader::new(file);
    Ok(match detect(reader.fill_buf()?) {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
    })
}

/// BuildKit's `isArchivePath`: the (decompressed) content starts with a valid tar header.
fn is_archive(file: File) -> bool {
    let Ok(reader) = decompress(file) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
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
    let failed = |entry: String| {
        move |e: io::Error| FileOpError::Archive {
            archive: shown_src.to_string(),
            entry,
            reason: e.to_string(),
        }
    };
    let mut archive = tar::Archive::new(decompress(open()?).map_err(failed(String::new()))?);
    let mut extractor = Extractor {
        root,
        owner,
        timestamp,
        dirs: Vec::new(),
    };
    for entry in archive.entries().map_err(failed(String::new()))? {
        let mut entry = entry.map_err(failed(String::new()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        extractor.entry(&mut entry).map_err(failed(name))?;
    }
    extractor.finish().map_err(failed(String::new()))?;
    Ok(true)
}

/// Ownership, permission bits and times of an entry, from its header and PAX records (as Go's archive/tar
/// applies them).
struct Meta {
    owner: Owner,
    mode: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
}

struct Extractor {
    root: Root,
    /// `ADD --chown` overrides the archive's owners (BuildKit since it extracts in-process).
    owner: Option<Owner>,
    timestamp: Option<i64>,
    /// Directories get their times last, after their contents stop changing them.
    dirs: Vec<(Rel, Meta)>,
}

impl Extractor {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        // The root itself is left as the destination made it.
        let Some(name) = clean_name(&entry.path_bytes())? else {
            return Ok(());
        };
        let meta = self.meta(entry)?;
        if kind == T::Directory {
            // A directory entry follows a symlink of the same name, as BuildKit's resolveRootPath does.
            let rel = self.root.resolve(&name, true)?;
            let Some((parent, leaf)) = self.slot(&rel)? else {
                return Ok(());
            };
            match statat(&parent, &leaf, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                Ok(_) => {
                    remove_tree(parent.as_fd(), &leaf)?;
                    rustix::fs::mkdirat(&parent, &leaf, Mode::from_raw_mode(0o700))?;
                }
                Err(Errno::NOENT) => rustix::fs::mkdirat(&parent, &leaf, Mode::from_raw_mode(0o700))?,
                Err(e) => return Err(e.into()),
            }
            set_meta_at(parent.as_fd(), &leaf, Some(meta.owner), Some(meta.mode), None)?;
            self.dirs.push((rel, meta));
            return Ok(());
        }

        let rel = self.root.resolve(&name, false)?;
        let Some((parent, leaf)) = self.slot(&rel)? else {
            return Err(invalid("a non-directory entry names the extraction root"));
        };
        let times = Some((meta.atime.0, meta.mtime.0));
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_tree(parent.as_fd(), &leaf)?;
                let flags =
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let mut file = File::from(rustix::fs::openat(
                    &parent,
                    &leaf,
                    flags,
                    Mode::from_raw_mode(0o600),
                )?);
                io::copy(entry, &mut file)?;
                let (uid, gid) = meta.owner;
                rustix::fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))?;
                let stamps = rustix::fs::Timestamps {
                    last_access: seconds(meta.atime.0, meta.atime.1),
                    last_modification: seconds(meta.mtime.0, meta.mtime.1),
                };
                rustix::fs::futimens(&file, &stamps)?;
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("symlink without a target"))?;
                remove_tree(parent.as_fd(), &leaf)?;
                // Stored verbatim: it is only ever followed by resolution inside a root.
                rustix::fs::symlinkat(OsStr::from_bytes(&link), &parent, &leaf)?;
                set_meta_at(parent.as_fd(), &leaf, Some(meta.owner), None, times)?;
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid("hardlink without a target"))?;
                let link = clean_name(&link)?.ok_or_else(|| invalid("hardlink to the extraction root"))?;
                let link_rel = self.root.resolve(&link, false)?;
                if link_rel == rel {
                    return Ok(());
                }
                let (link_parent, link_leaf) = self.root.parent(&link_rel)?;
                remove_tree(parent.as_fd(), &leaf)?;
                // Without AT_SYMLINK_FOLLOW a symlink is linked itself, never what it points to.
                rustix::fs::linkat(&link_parent, &link_leaf, &parent, &leaf, AtFlags::empty())?;
                let st = statat(&parent, &leaf, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    set_meta_at(parent.as_fd(), &leaf, Some(meta.owner), Some(meta.mode), times)?;
                }
            }
            T::Char | T::Block | T::Fifo => {
                let (file_type, dev) = match kind {
                    T::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let header = entry.header();
                        let major = header
                            .device_major()?
                            .ok_or_else(|| invalid("device without a major number"))?;
                        let minor = header
                            .device_minor()?
                            .ok_or_else(|| invalid("device without a minor number"))?;
                        let file_type = if kind == T::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (file_type, rustix::fs::makedev(major, minor))
                    }
                };
                remove_tree(parent.as_fd(), &leaf)?;
                rustix::fs::mknodat(&parent, &leaf, file_type, Mode::from_raw_mode(0o600), dev)?;
                set_meta_at(parent.as_fd(), &leaf, Some(meta.owner), Some(meta.mode), times)?;
            }
            other => return Err(invalid(&format!("unsupported tar entry type {other:?}"))),
        }
        Ok(())
    }

    /// The directory that will hold `rel` (its missing parents created as BuildKit does: 0755, root-owned)
    /// and `rel`'s name; `None` for the root itself.
    fn slot(&self, rel: &Path) -> io::Result<Option<(std::os::fd::OwnedFd, std::ffi::OsString)>> {
        if rel.as_os_str().is_empty() {
            return Ok(None);
        }
        self.root
            .mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755, None, None)?;
        self.root.parent(rel).map(Some)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let header = entry.header();
        let (mut uid, mut gid) = (header.uid()?, header.gid()?);
        let mut mtime = (
            i64::try_from(header.mtime()?).map_err(|_| invalid("mtime out of range"))?,
            0,
        );
        let mode = header.mode()? & 0o7777;
        let mut atime = None;
        if let Some(records) = entry.pax_extensions()? {
            for record in records {
                let record = record?;
                let value = std::str::from_utf8(record.value_bytes()).unwrap_or("");
                match record.key_bytes() {
                    b"uid" => uid = value.parse().map_err(|_| invalid("malformed PAX uid"))?,
                    b"gid" => gid = value.parse().map_err(|_| invalid("malformed PAX gid"))?,
                    b"mtime" => mtime = parse_pax_time(value).unwrap_or(mtime),
                    b"atime" => atime = parse_pax_time(value),
                    _ => {}
                }
            }
        }
        let id = |v: u64| u32::try_from(v).map_err(|_| invalid("owner id out of range"));
        let owner = match self.owner {
            Some(owner) => owner,
            None => (id(uid)?, id(gid)?),
        };
        let clamp = |t: (i64, i64)| match self.timestamp {
            Some(limit) if t.0 > limit => (limit, 0),
            _ => t,
        };
        Ok(Meta {
            owner,
            mode,
            atime: clamp(atime.unwrap_or(mtime)),
            mtime: clamp(mtime),
        })
    }

    fn finish(&self) -> io::Result<()> {
        for (rel, meta) in self.dirs.iter().rev() {
            let Some(name) = rel.file_name() else {
                continue;
            };
            // A later entry may have replaced the directory or a parent; then there is nothing to stamp.
            let Ok(parent) = self.root.open_dir(rel.parent().unwrap_or(Path::new(""))) else {
                continue;
            };
            match statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    set_meta_at(
                        parent.as_fd(),
                        name,
                        None,
                        None,
                        Some((meta.atime.0, meta.mtime.0)),
                    )?;
                }
                _ => continue,
            }
        }
        Ok(())
    }
}

/// Go's `filepath.Clean` then BuildKit's rule: a name that still climbs above the root is refused; a leading
/// `/` is dropped. `None` for the root itself.
fn clean_name(name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let absolute = name.starts_with(b"/");
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() && !absolute {
                    let shown = String::from_utf8_lossy(name);
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("archive path {shown:?} is outside the extraction root"),
                    ));
                }
            }
            _ => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join(&b'/')))
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.5").
fn parse_pax_time(value: &str) -> Option<(i64, i64)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = nanos.parse().ok()?;
    if !value.starts_with('-') || nanos == 0 {
        return Some((secs, nanos));
    }
    // "-1.5" is 2 seconds before the epoch plus half a second.
    Some((secs - 1, 1_000_000_000 - nanos))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok =
            |n: &str| clean_name(n.as_bytes()).map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()));
        assert_eq!(ok("a/b").ok(), Some(Some("a/b".into())));
        assert_eq!(ok("./a//b/").ok(), Some(Some("a/b".into())));
        assert_eq!(ok("/etc/passwd").ok(), Some(Some("etc/passwd".into())));
        assert_eq!(ok("/../x").ok(), Some(Some("x".into())));
        assert_eq!(ok("a/../b").ok(), Some(Some("b".into())));
        assert_eq!(ok("./").ok(), Some(None));
        assert!(ok("../escape").is_err());
        assert!(ok("a/../../escape").is_err());
    }

    #[test]
    fn magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 0x08, 0]), Compression::Gzip);
        assert_eq!(detect(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), Compression::Xz);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"ustar"), Compression::None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.25"),
            Some((1_700_000_000, 250_000_000))
        );
        assert_eq!(parse_pax_time("x"), None);
    }
}
