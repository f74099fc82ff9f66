use crate::{StableHash, StableHasher};
use serde::Serialize;

/// What a vertex does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Op {
    Source(Source),
    Exec(Exec),
    /// File actions applied in order on input 0 (or on an empty tree when the op has no base input).
    File(FileOp),
    /// The union of all inputs, later inputs winning, as separate layers.
    Merge,
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Source(_) => "source",
            Op::Exec(_) => "exec",
            Op::File(_) => "file",
            Op::Merge => "merge",
        }
    }
}

impl StableHash for Op {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_tag(self.kind());
        match self {
            Op::Source(s) => s.stable_hash(h),
            Op::Exec(e) => e.stable_hash(h),
            Op::File(f) => f.stable_hash(h),
            Op::Merge => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    /// An image by reference; the solver resolves it to a manifest digest for the vertex's platform.
    Image { reference: String },
    /// Files from a directory the client provides: the build context or a named context.
    Local {
        name: String,
        /// Only these paths (patterns) are needed; empty means everything.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        include: Vec<String>,
        /// `.dockerignore` patterns.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
    /// A file fetched over http(s).
    Http {
        url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
    },
    /// A git repository at a ref.
    Git {
        remote: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        keep_git_dir: bool,
    },
    /// An OCI layout directory given as a named context, by tag or digest.
    OciLayout { path: String, reference: String },
    /// The empty filesystem.
    Scratch,
}

impl Source {
    /// The kind of content, which names the solver's source that provides it.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Image { .. } => "image",
            Source::Local { .. } => "local",
            Source::Http { .. } => "http",
            Source::Git { .. } => "git",
            Source::OciLayout { .. } => "oci-layout",
            Source::Scratch => "scratch",
        }
    }
}

impl StableHash for Source {
    fn stable_hash(&self, h: &mut StableHasher) {
        match self {
            Source::Image { reference } => {
                h.write_tag("image");
                reference.stable_hash(h);
            }
            Source::Local {
                name,
                include,
                exclude,
            } => {
                h.write_tag("local");
                name.stable_hash(h);
                include.stable_hash(h);
                exclude.stable_hash(h);
            }
            Source::Http {
                url,
                checksum,
                filename,
            } => {
                h.write_tag("http");
                url.stable_hash(h);
                checksum.stable_hash(h);
                filename.stable_hash(h);
            }
            Source::Git {
                remote,
                reference,
                keep_git_dir,
            } => {
                h.write_tag("git");
                remote.stable_hash(h);
                reference.stable_hash(h);
                keep_git_dir.stable_hash(h);
            }
            Source::OciLayout { path, reference } => {
                h.write_tag("oci-layout");
                path.stable_hash(h);
                reference.stable_hash(h);
            }
            Source::Scratch => h.write_tag("scratch"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A network namespace of the step's own with outbound access, as docker's bridge gives: the host's
    /// loopback services are out of reach.
    #[default]
    Default,
    /// The host's network namespace (`--network=host`, which needs the `network.host` entitlement).
    Host,
    /// An empty network namespace with only loopback.
    None,
}

/// How much of the sandbox a step keeps (`RUN --security=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    #[default]
    Sandbox,
    /// Every capability, no seccomp filter and no masked paths (needs the `security.insecure` entitlement).
    Insecure,
}

/// A privilege a build must be granted before any step uses it (`kiln build --allow`), as BuildKit's
/// entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entitlement {
    NetworkHost,
    SecurityInsecure,
}

impl Entitlement {
    pub const ALL: [Entitlement; 2] = [Entitlement::NetworkHost, Entitlement::SecurityInsecure];

    /// The name `--allow` takes.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }
}

impl std::str::FromStr for Entitlement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Entitlement::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                format!("unknown entitlement {s:?}: kiln knows network.host and security.insecure")
            })
    }
}

fn is_sandboxed(mode: &SecurityMode) -> bool {
    *mode == SecurityMode::Sandbox
}

/// A process run in a sandbox whose root filesystem is mount 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Exec {
    pub args: Vec<String>,
    /// `KEY=value` entries, in order.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` as the Dockerfile gave it; resolved against the rootfs when the op runs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    pub network: NetworkMode,
    #[serde(skip_serializing_if = "is_sandboxed")]
    pub security: SecurityMode,
    pub mounts: Vec<Mount>,
    /// Hostname inside the sandbox; empty means the default.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Extra `/etc/hosts` lines (`--add-host`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
}

impl StableHash for Exec {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.args.stable_hash(h);
        self.env.stable_hash(h);
        self.cwd.stable_hash(h);
        self.user.stable_hash(h);
        h.write_tag(match self.network {
            NetworkMode::Default => "default",
            NetworkMode::Host => "host",
            NetworkMode::None => "none",
        });
        self.mounts.stable_hash(h);
        self.hostname.stable_hash(h);
        self.extra_hosts.stable_hash(h);
        // Last and only when set, so that the digests of sandboxed steps stay what they were.
        if self.security == SecurityMode::Insecure {
            h.write_tag("security=insecure");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountKind {
    /// A filesystem from an input (or scratch) at `dest`; writes go to an output only when `output` is set.
    Bind,
    /// A persistent cache directory shared between builds.
    Cache { id: String, sharing: CacheSharing },
    /// A tmpfs.
    Tmpfs { size: Option<u64> },
    /// A secret; its contents never enter the graph, only its id. A file at `dest` unless `dest` is empty,
    /// and the environment variable `env` when set (`--mount=type=secret,env=`).
    Secret {
        id: String,
        required: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        env: Option<String>,
    },
    /// An SSH agent socket.
    Ssh { id: String, required: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Index into the vertex inputs; `None` mounts an empty tree.
    pub input: Option<u32>,
    /// Path inside the input to mount instead of its root.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selector: String,
    pub dest: String,
    #[serde(flatten)]
    pub kind: MountKind,
    pub readonly: bool,
    /// Whether the mount's changes are an output of the op (true for the rootfs).
    pub output: bool,
    /// Ownership and mode of a cache or secret mount: (uid, gid, mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_mode: Option<(u32, u32, u32)>,
}

impl StableHash for Mount {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.input.stable_hash(h);
        self.selector.stable_hash(h);
        self.dest.stable_hash(h);
        match &self.kind {
            MountKind::Bind => h.write_tag("bind"),
            MountKind::Cache { id, sharing } => {
                h.write_tag("cache");
                id.stable_hash(h);
                h.write_tag(match sharing {
                    CacheSharing::Shared => "shared",
                    CacheSharing::Private => "private",
                    CacheSharing::Locked => "locked",
                });
            }
            MountKind::Tmpfs { size } => {
                h.write_tag("tmpfs");
                size.stable_hash(h);
            }
            MountKind::Secret { id, required, env } => {
                h.write_tag("secret");
                id.stable_hash(h);
                required.stable_hash(h);
                // Only when set, so that file secrets keep the digests they had.
                if let Some(env) = env {
                    h.write_tag("env");
                    env.stable_hash(h);
                }
            }
            MountKind::Ssh { id, required } => {
                h.write_tag("ssh");
                id.stable_hash(h);
                required.stable_hash(h);
            }
        }
        self.readonly.stable_hash(h);
        self.output.stable_hash(h);
        match self.owner_mode {
            None => h.write_tag("none"),
            Some((uid, gid, mode)) => {
                h.write_tag("some");
                h.write_u64(u64::from(uid));
                h.write_u64(u64::from(gid));
                h.write_u64(u64::from(mode));
            }
        }
    }
}

/// File actions applied one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FileOp {
    /// Whether input 0 is the base the actions apply to; when false they start from an empty tree and every
    /// input is a copy source.
    pub has_base: bool,
    pub actions: Vec<FileAction>,
}

impl StableHash for FileOp {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.has_base.stable_hash(h);
        self.actions.stable_hash(h);
    }
}

/// Who owns a created file: names are resolved against the destination's /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl StableHash for Owner {
    fn stable_hash(&self, h: &mut StableHasher) {
        self.user.stable_hash(h);
        self.group.stable_hash(h);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum FileAction {
    Copy(Copy),
    Mkdir {
        path: String,
        mode: u32,
        make_parents: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    Rm {
        path: String,
        allow_not_found: bool,
        allow_wildcard: bool,
    },
    Symlink {
        target: String,
        path: String,
    },
}

/// A COPY/ADD of paths from one input into the tree.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Copy {
    /// Index into the vertex inputs of where the sources come from.
    pub src_input: u32,
    /// Source paths or wildcard patterns, relative to the source root.
    pub src: Vec<String>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// `--chmod`, as given (octal or symbolic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Follow a symlink named as a source (inside the source root).
    pub follow_symlinks: bool,
    /// Copy a directory's contents rather than the directory itself.
    pub dir_contents_only: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub create_dest_path: bool,
    /// Unpack local archives (ADD).
    pub auto_extract: bool,
    /// Keep source paths' parent directories (`--parents`).
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Clamp timestamps to this epoch (SOURCE_DATE_EPOCH), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

impl StableHash for FileAction {
    fn stable_hash(&self, h: &mut StableHasher) {
        match self {
            FileAction::Copy(c) => {
                h.write_tag("copy");
                c.src_input.stable_hash(h);
                c.src.stable_hash(h);
                c.dest.stable_hash(h);
                c.owner.stable_hash(h);
                c.mode.stable_hash(h);
                for flag in [
                    c.follow_symlinks,
                    c.dir_contents_only,
                    c.allow_wildcard,
                    c.allow_empty_wildcard,
                    c.create_dest_path,
                    c.auto_extract,
                    c.parents,
                ] {
                    flag.stable_hash(h);
                }
                c.exclude.stable_hash(h);
                c.timestamp.stable_hash(h);
            }
            FileAction::Mkdir {
                path,
                mode,
                make_parents,
                owner,
            } => {
                h.write_tag("mkdir");
                path.stable_hash(h);
                mode.stable_hash(h);
                make_parents.stable_hash(h);
                owner.stable_hash(h);
            }
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => {
                h.write_tag("mkfile");
                path.stable_hash(h);
                mode.stable_hash(h);
                data.stable_hash(h);
                owner.stable_hash(h);
            }
            FileAction::Rm {
                path,
                allow_not_found,
                allow_wildcard,
            } => {
                h.write_tag("rm");
                path.stable_hash(h);
                allow_not_found.stable_hash(h);
                allow_wildcard.stable_hash(h);
            }
            FileAction::Symlink { target, path } => {
                h.write_tag("symlink");
                target.stable_hash(h);
                path.stable_hash(h);
            }
        }
    }
}
