//! `kiln load` and `kiln save`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_exporter::ArchiveFormat;
use kiln_exporter::stored;
use kiln_solver::images;

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
    match &args.output {
        Some(path) => {
            // Written beside the target and renamed over it, so FILE is never seen half-written.
            let tmp = temp_beside(path);
            let result = File::create(&tmp)
                .with_context(|| format!("create {}", tmp.display()))
                .and_then(|file| {
                    let mut out = BufWriter::new(file);
                    kiln_exporter::save(&store, &args.images, &mut out, format)?;
                    let file = out.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write an archive to a terminal: use -o FILE or redirect");
            }
            let mut out = stdout.lock();
            kiln_exporter::save(&store, &args.images, &mut out, format)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.kiln-{}.tmp", std::process::id()))
}
