//! The tree a stack of overlay diff directories shows, walked in one fixed order: depth first, each
//! directory's names sorted by their bytes, a directory before its contents.
//!
//! One walk serves two views. A layer tar reads one diff as it is ([`Tree::diff`]): its whiteouts and opaque
//! directories are reported, since the layer must carry them. The filesystem outputs read the stack merged
//! as overlayfs merges it ([`Tree::merged`]): for each name the topmost layer that has it decides; a whiteout
//! there deletes it, a non-directory hides everything below, and a directory merges with the same directory
//! of the layers below until one of them is opaque or is not a directory.
//!
//! Either way, a file with several names is reported in full under the first name the walk meets and as a
//! link to that name afterwards, and sockets are left out (a live endpoint is not content; docker and
//! BuildKit leave them out too).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlay xattrs that move content elsewhere: the diff directory alone would be wrong. kiln mounts with
/// `redirect_dir=off,metacopy=off`, so meeting one means the directory was not made by kiln's overlay.
const CONTENT_ELSEWHERE_XATTRS: &[&str] = &["trusted.overlay.redirect", "trusted.overlay.metacopy"];

/// A stack of diff directories to walk.
pub(crate) struct Tree {
    /// Top first.
    layers: Vec<PathBuf>,
    /// Apply whiteouts and opacity (several layers) rather than report them (one layer's diff).
    merge: bool,
}

/// What a reported name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An overlay whiteout (a character device 0/0); only a diff reports them.
    Whiteout,
    /// `opaque`: the directory hides the lower layers' content; only a diff reports it.
    Dir { opaque: bool },
    /// Another name of a file already reported, under `first`.
    Link { first: Vec<u8> },
    /// A regular file, symlink, fifo or device.
    Other,
}

/// One name of the tree.
pub(crate) struct Node {
    /// Relative to the root, `/`-separated, without a leading or trailing slash; empty for the root.
    pub name: Vec<u8>,
    /// The file that holds it: in the topmost layer that has the name.
    pub path: PathBuf,
    pub meta: Metadata,
    pub kind: Kind,
    /// Of directories and [`Kind::Other`], sorted by name; overlay's own and other bookkeeping included
    /// (see [`content_xattrs`]).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Node {
    /// The last component of the name.
    pub fn base(&self) -> &[u8] {
        self.name.rsplit(|b| *b == b'/').next().unwrap_or(&self.name)
    }
}

/// A reported directory and the same directory in the layers below it that merge into it, top first.
type Pending = (Node, Vec<PathBuf>);

impl Tree {
    /// One diff directory as it is.
    pub fn diff(dir: &Path) -> Tree {
        Tree {
            layers: vec![dir.to_owned()],
            merge: false,
        }
    }

    /// The merged view of diff directories given bottom first (the order of a layer chain).
    pub fn merged(layers: &[PathBuf]) -> Tree {
        Tree {
            layers: layers.iter().rev().cloned().collect(),
            merge: true,
        }
    }

    /// Calls `visit` with every name of the tree in walk order, the root (empty name) first. An empty stack
    /// is an empty tree: nothing is visited.
    pub fn walk(&self, mut visit: impl FnMut(&Node) -> Result<()>) -> Result<()> {
        let Some(top) = self.layers.first() else {
            return Ok(());
        };
        let mut root_dirs = Vec::new();
        let mut root = None;
        for layer in &self.layers {
            let meta = lstat(layer)?;
            if !meta.is_dir() {
                return Err(Error::invalid(
                    format!("layer directory {}", layer.display()),
                    "not a directory",
                ));
            }
            let xattrs = xattrs(layer)?;
            let opaque = is_opaque(&xattrs);
            root_dirs.push(layer.clone());
            if root.is_none() {
                root = Some(Node {
                    name: Vec::new(),
                    path: top.clone(),
                    meta,
                    kind: Kind::Dir {
                        opaque: opaque && !self.merge,
                    },
                    xattrs,
                });
            }
            if opaque {
                break;
            }
        }
        let Some(root) = root else {
            return Ok(());
        };
        let mut first_names: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        // An explicit stack, not recursion: a build can create directories deeper than any thread stack.
        let mut stack: Vec<Pending> = vec![(root, root_dirs)];
        while let Some((mut node, dirs)) = stack.pop() {
            // Links are decided in visit order, not listing order: the first name a reader meets must be the
            // one with the content. Whiteouts are never links, though overlayfs gives them one shared inode.
            if node.kind == Kind::Other && node.meta.nlink() > 1 {
                let key = (node.meta.dev(), node.meta.ino());
                match first_names.get(&key) {
                    Some(first) => node.kind = Kind::Link { first: first.clone() },
                    None => {
                        first_names.insert(key, node.name.clone());
                    }
                }
            }
            if node.kind == Kind::Other {
                node.xattrs = xattrs(&node.path)?;
            }
            visit(&node)?;
            if matches!(node.kind, Kind::Dir { .. }) {
                let children = self.children(&node.name, &dirs)?;
                stack.extend(children.into_iter().rev());
            }
        }
        Ok(())
    }

    /// The names of a directory (the same directory in each of `dirs`, top first), in ascending byte order.
    fn children(&self, prefix: &[u8], dirs: &[PathBuf]) -> Result<Vec<Pending>> {
        // Name → the indexes in `dirs` of the layers that have it, top first.
        let mut names: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
        for (i, dir) in dirs.iter().enumerate() {
            let list_err = || Error::io(format!("list {}", dir.display()));
            for entry in std::fs::read_dir(dir).map_err(list_err())? {
                let name = entry.map_err(list_err())?.file_name();
                names.entry(name.as_bytes().to_vec()).or_default().push(i);
            }
        }
        let mut out = Vec::new();
        for (name, layers) in names {
            let mut full = prefix.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&name);
            let name = std::ffi::OsStr::from_bytes(&name);
            if let Some(pending) = self.resolve(full, name, dirs, &layers)? {
                out.push(pending);
            }
        }
        Ok(out)
    }

    /// What `name` is in the view, from the layers (indexes into `dirs`, top first) that have it; `None`
    /// when the view does not show it.
    fn resolve(
        &self,
        full: Vec<u8>,
        name: &std::ffi::OsStr,
        dirs: &[PathBuf],
        layers: &[usize],
    ) -> Result<Option<Pending>> {
        let mut found: Option<Node> = None;
        let mut merged = Vec::new();
        for &i in layers {
            let path = dirs[i].join(name);
            let meta = lstat(&path)?;
            if found.is_some() {
                // Below a directory only directories merge into it; anything else (a whiteout included)
                // ends the merge, and is hidden with everything below it.
                if !meta.is_dir() {
                    break;
                }
                let opaque = is_opaque(&xattrs(&path)?);
                merged.push(path);
                if opaque {
                    break;
                }
                continue;
            }
            let ft = meta.file_type();
            if is_whiteout(&meta) {
                if self.merge {
                    return Ok(None);
                }
                let node = Node {
                    name: full,
                    path,
                    meta,
                    kind: Kind::Whiteout,
                    xattrs: Vec::new(),
                };
                return Ok(Some((node, Vec::new())));
            }
            if ft.is_socket() {
                return Ok(None);
            }
            if !ft.is_dir() {
                // Xattrs are read when the node is visited, once it is known not to be a link.
                let node = Node {
                    name: full,
                    path,
                    meta,
                    kind: Kind::Other,
                    xattrs: Vec::new(),
                };
                return Ok(Some((node, Vec::new())));
            }
            let xattrs = xattrs(&path)?;
            let opaque = is_opaque(&xattrs);
            merged.push(path.clone());
            found = Some(Node {
                name: full.clone(),
                path,
                meta,
                kind: Kind::Dir {
                    opaque: opaque && !self.merge,
                },
                xattrs,
            });
            if opaque || !self.merge {
                break;
            }
        }
        Ok(found.map(|node| (node, merged)))
    }
}

/// An overlay whiteout: a character device 0/0.
fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(xattrs: &[(String, Vec<u8>)]) -> bool {
    xattrs.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y")
}

/// The xattrs of `path` that are its content, to carry into a layer or an output; refuses the ones that say
/// the content is elsewhere.
pub(crate) fn content_xattrs<'a>(
    xattrs: &'a [(String, Vec<u8>)],
    path: &Path,
) -> Result<Vec<&'a (String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in xattrs {
        let key = entry.0.as_str();
        if CONTENT_ELSEWHERE_XATTRS.contains(&key) {
            return Err(Error::invalid(
                format!("file {}", path.display()),
                format!(
                    "has overlayfs xattr {key}: its content lives in a lower layer (mounted with redirect_dir or metacopy on)"
                ),
            ));
        }
        // Overlay's bookkeeping is expressed by whiteouts or means nothing outside the overlay; an SELinux
        // label is the building host's, and would make the output differ between machines.
        if key.starts_with("trusted.overlay.") || key == "security.selinux" {
            continue;
        }
        out.push(entry);
    }
    Ok(out)
}

pub(crate) fn lstat(path: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(path).map_err(Error::io(format!("stat {}", path.display())))
}

/// The content of a regular file of the tree: exactly as many bytes as the walk measured. The file is
/// opened without following symlinks, so one swapped in since the walk is refused.
pub(crate) fn content(node: &Node) -> Result<impl Read + use<>> {
    let path = &node.path;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open {}", path.display()))(e.into()))?;
    let len = node.meta.len();
    Ok(Exact {
        inner: File::from(fd).take(len),
        left: len,
    })
}

/// Reads exactly `left` bytes: a file that shrank since it was measured would otherwise leave an archive
/// short of what its header promised, or an output silently short.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file shrank while being read ({} bytes missing)", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The extended attributes of `path` itself (not a symlink's target), sorted by name.
pub(crate) fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let err = |what: &str, e: Errno| Error::io(format!("{what} of {}", path.display()))(e.into());
    let names = match read_sized(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
    ) {
        Ok(names) => names,
        // A filesystem without xattrs has none to carry.
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err("list xattrs", e)),
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| {
            Error::invalid(
                format!("file {}", path.display()),
                format!("xattr name {:?} is not UTF-8", String::from_utf8_lossy(raw)),
            )
        })?;
        match read_sized(
            || rustix::fs::lgetxattr_query(path, name),
            |buf| rustix::fs::lgetxattr(path, name, buf),
        ) {
            Ok(value) => out.push((name.to_owned(), value)),
            // Removed between the listing and the read.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(err(&format!("read xattr {name}"), e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Asks a value's size, then reads it (listxattr, getxattr), again if it grew in between.
fn read_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let mut buf = vec![0u8; query()?];
        if buf.is_empty() {
            return Ok(buf);
        }
        match fill(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}
