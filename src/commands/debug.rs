//! `kiln debug`: what the frontend makes of a Dockerfile, without building anything.

use super::dockerfile;
use crate::cli::{DebugCommand, GraphFormat};
use anyhow::bail;
use kiln_frontend::parser;
use std::io::Write;
use std::process::ExitCode;

pub fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::Parse { dump, file, path } => {
            let Some(path) = file.or(path) else {
                bail!("no Dockerfile given: write `kiln debug parse --dump FILE`");
            };
            let loaded = dockerfile::load(&path)?;
            let text = if dump {
                parser::dump(&loaded.ast)
            } else {
                format!("{:#?}\n", loaded.ast)
            };
            std::io::stdout().write_all(text.as_bytes())?;
        }
        DebugCommand::Llb {
            dockerfile: args,
            format,
        } => {
            let req = dockerfile::request(&args)?;
            let definitions = super::images::runtime()?.block_on(kiln_build::definitions(&req))?;
            let mut out = std::io::stdout().lock();
            for definition in &definitions {
                match format {
                    GraphFormat::Json => {
                        serde_json::to_writer_pretty(&mut out, definition)?;
                        writeln!(out)?;
                    }
                    GraphFormat::Dot => out.write_all(definition.to_dot().as_bytes())?,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
