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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a Dockerfile
    Build(BuildArgs),
    /// Inspect kiln's view of a Dockerfile
    #[command(subcommand)]
    Debug(DebugCommand),
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
    /// Run the lint checks and exit without building
    #[arg(long)]
    pub check: bool,
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
