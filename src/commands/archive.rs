//! `kiln load` and `kiln save`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use kiln_exporter::ArchiveFormat;
use kiln_exporter::output::{self, Dest};
use kiln_image as images;
use kiln_image::stored;

use super::images::open_store;
use crate::cli::{GlobalArgs, LoadArgs, SaveArgs, SaveFormat};

pub fn load(global: &GlobalArgs, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let loaded = match &args.input {
        Some(path) => images::load_archive(&store, path)?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("requested load from stdin, but stdin is a terminal: use -i FILE or redirect");
            }
            images::load_archive_from(&store, stdin, "standard input")?
        }
    };
    if !args.quiet {
        for image in &loaded {
            if image.names.is_empty() {
                println!("Loaded image ID: {}", image.id);
            }
            for name in &image.names {
                println!("Loaded image: {}", stored::familiar_name(name));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn save(global: &GlobalArgs, args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let format = match args.format {
        SaveFormat::Oci => ArchiveFormat::Oci,
        SaveFormat::Docker => ArchiveFormat::Docker,
    };
    let dest = match &args.output {
        Some(path) => Dest::Path(path.clone()),
        None => Dest::Stdout,
    };
    // Through the build outputs' writer: a file appears whole or not at all, and a terminal is refused.
    output::write_stream(&dest, |out| {
        kiln_exporter::save(&store, &args.images, out, format)
    })?;
    Ok(ExitCode::SUCCESS)
}
