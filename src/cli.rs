use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Build container images from Dockerfiles — no daemon, BuildKit semantics"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Where kiln keeps images, layers and cache [default: $KILN_ROOT, else /var/lib/kiln as root, else
    /// $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Verbose logs (also: KILN_LOG=filter)
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,
    /// Registries to reach over plain http (localhost and 127.0.0.0/8 always are)
    #[arg(
        long = "insecure-registry",
        global = true,
        value_name = "HOST[:PORT]",
        env = "KILN_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a Dockerfile
    Build(Box<BuildArgs>),
    /// Run a command in an image, in the same sandbox builds use
    Run(RunArgs),
    /// Inspect kiln's view of a Dockerfile
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Download an image from a registry
    Pull(PullArgs),
    /// Upload an image to a registry
    Push(PushArgs),
    /// List images
    Images(ImagesArgs),
    /// Create a name TARGET that refers to the image SOURCE (a name or image ID)
    Tag {
        #[arg(value_name = "SOURCE")]
        source: String,
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Remove image names (the content goes with the next `kiln prune`)
    Rmi(RmiArgs),
    /// Show images' manifests and configs as JSON
    Inspect {
        #[arg(value_name = "IMAGE", required = true)]
        images: Vec<String>,
    },
    /// Load images from a docker or OCI archive, or an OCI layout directory
    Load(LoadArgs),
    /// Save images to an OCI or docker archive
    Save(SaveArgs),
    /// Remove unused blobs and snapshots (and, with --all, build cache)
    Prune(PruneArgs),
    /// Say why each step the last build ran missed the cache (as `build --explain-cache` does)
    Explain,
    /// Check the store: every blob's digest, and that everything recorded refers to what exists
    #[command(subcommand)]
    Store(StoreCommand),
    /// Show disk use
    Du {
        /// Per image and cache record
        #[arg(short, long)]
        verbose: bool,
    },
    /// Log in to a registry (credentials go to the docker config)
    Login(LoginArgs),
    /// Log out from a registry
    Logout {
        /// Registry [default: docker.io]
        #[arg(value_name = "SERVER")]
        server: Option<String>,
    },
}

/// What every command that reads a Dockerfile takes.
#[derive(Args, Debug, Clone)]
pub struct DockerfileArgs {
    /// Name of the Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Set the target build stage to build
    #[arg(long)]
    pub target: Option<String>,
    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// Target platform(s), e.g. linux/amd64,linux/arm64
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Additional build contexts (NAME=PATH|docker-image://REF|oci-layout://DIR[:TAG])
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// Build context directory
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pub dockerfile: DockerfileArgs,
    /// Name and optionally tag the image (name:tag); may be given several times
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// Run the lint checks and exit without building
    #[arg(long)]
    pub check: bool,
    /// Do not use the cache when building
    #[arg(long)]
    pub no_cache: bool,
    /// Do not use the cache for these stages
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Always look up base images in their registry, even when the store has them
    #[arg(long)]
    pub pull: bool,
    /// Export the build cache: type=registry,ref=REF | type=local,dest=DIR | type=inline, with mode=min|max,
    /// compression=, compression-level=, ignore-error=, image-manifest=, oci-mediatypes= (buildx's options)
    #[arg(long = "cache-to", value_name = "OPTS")]
    pub cache_to: Vec<String>,
    /// Use a build cache from elsewhere, tried in order: type=registry,ref=REF (or just REF, also an image
    /// with an inline cache) | type=local,src=DIR[,digest=...]
    #[arg(long = "cache-from", value_name = "OPTS")]
    pub cache_from: Vec<String>,
    /// Say for every step that misses the cache why: what changed against the nearest record of that step
    #[arg(long = "explain-cache")]
    pub explain_cache: bool,
    /// Write the image ID to this file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write build result metadata (image digest, config digest, names) to this file as JSON
    #[arg(long = "metadata-file", value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Set a label on the image (KEY=VALUE)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// How to show progress
    #[arg(long, value_enum, default_value_t = crate::progress::ProgressMode::Auto)]
    pub progress: crate::progress::ProgressMode,
    /// How many steps may run at once [default: the number of CPU cores]
    #[arg(long = "max-parallelism", value_name = "N")]
    pub max_parallelism: Option<usize>,
    /// Grant an entitlement to RUN steps: network.host (RUN --network=host) or security.insecure
    /// (RUN --security=insecure); may repeat or be comma-separated
    #[arg(long = "allow", value_name = "ENTITLEMENT", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: default (= $SSH_AUTH_SOCK), ID=SOCKET or ID=KEYFILE[,KEYFILE...]
    #[arg(long = "ssh", value_name = "ID[=SOCKET|KEY[,KEY...]]")]
    pub ssh: Vec<String>,
    /// A secret for RUN --mount=type=secret: id=ID[,src=FILE|,env=VAR]
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    pub secrets: Vec<String>,
    /// Print only the image ID
    #[arg(short, long)]
    pub quiet: bool,
    /// Output destination: type=image|oci|docker|local|tar with options (buildx syntax), DIR, or - ; may repeat
    #[arg(short = 'o', long = "output", value_name = "type=TYPE[,KEY=VALUE...]")]
    pub outputs: Vec<String>,
    /// Push the image to its registry (shorthand for --output=type=image,push=true)
    #[arg(long)]
    pub push: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The image to run (a name or image ID)
    pub image: String,
    /// The command and its arguments [default: the image's ENTRYPOINT and CMD]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Set an environment variable (KEY=VALUE)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User to run as (name|uid[:group|gid])
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Network: default (a namespace of its own with outbound access), host or none
    #[arg(long, default_value = "default")]
    pub network: String,
    /// Platform of the image to run
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Parse a Dockerfile and print its syntax tree
    Parse {
        /// Print the tree in BuildKit's dump format
        #[arg(long)]
        dump: bool,
        /// The Dockerfile
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: Option<PathBuf>,
        /// The Dockerfile (alternative to -f)
        #[arg(value_name = "FILE", conflicts_with = "file")]
        path: Option<PathBuf>,
    },
    /// Convert a Dockerfile into its LLB graph and print it
    Llb {
        #[command(flatten)]
        dockerfile: DockerfileArgs,
        #[arg(long, value_enum, default_value_t = GraphFormat::Json)]
        format: GraphFormat,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Json,
    Dot,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Platform(s) to pull, e.g. linux/arm64 [default: the host's]
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Print only the image name
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Print only the pushed digest
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(value_name = "NAME[:TAG]")]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Print image IDs only
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = ImagesFormat::Table)]
    pub format: ImagesFormat,
    /// Show full image IDs
    #[arg(long)]
    pub no_trunc: bool,
    /// Only images of this repository (and tag)
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub repository: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagesFormat {
    Table,
    /// One JSON object per line, with docker's keys
    Json,
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Remove an image ID even if several names refer to it
    #[arg(short, long)]
    pub force: bool,
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from this archive file or OCI layout directory instead of standard input
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print nothing
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to this file instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Archive format
    #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
    pub format: SaveFormat,
    #[arg(value_name = "IMAGE", required = true)]
    pub images: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// OCI image layout (several platforms per image)
    Oci,
    /// docker archive (`docker load`; one platform per image)
    Docker,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove all build cache not in use, not only unreferenced content
    #[arg(short, long)]
    pub all: bool,
    /// Keep this much build cache (e.g. 10GB), dropping the least recently used beyond it
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub force: bool,
    /// Prune only what matches: type=cache-mount (buildx: type=exec.cachemount) drops the RUN cache mounts
    /// no step uses, and nothing else
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin)
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    /// Registry [default: docker.io]
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Verify the store; exits 0 only when it is sound, with one line per problem otherwise
    Check {
        /// Do not read every blob again to check its digest (presence only)
        #[arg(long, conflicts_with = "repair")]
        quick: bool,
        /// Remove what is broken (corrupt blobs, names and records that refer to what is gone) and what is
        /// orphaned or left over, say what went, and check again
        #[arg(long)]
        repair: bool,
    },
}
