//! `kiln prune` and `kiln du`.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::bail;

use super::images::{human_age, human_size, open_store, print_table};
use crate::cli::{GlobalArgs, PruneArgs};

pub fn prune(global: &GlobalArgs, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let keep_storage = args.keep_storage.as_deref().map(parse_size).transpose()?;
    let mut only_cache_mounts = false;
    for filter in &args.filter {
        match filter.as_str() {
            "type=cache-mount" | "type=exec.cachemount" => only_cache_mounts = true,
            other => anyhow::bail!(
                "unsupported --filter {other:?}: kiln prune filters by type=cache-mount (or type=exec.cachemount)"
            ),
        }
    }
    let store = open_store(global)?;
    if !args.force {
        print!(
            "WARNING! This will remove {}. Are you sure you want to continue? [y/N] ",
            match (only_cache_mounts, args.all) {
                (true, _) => "all cache mounts no step uses",
                (false, true) => "all content no image refers to, and all build cache not in use",
                (false, false) => "all content no image refers to",
            }
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let report = match only_cache_mounts {
        true => store.prune_cache_mounts_only()?,
        false => store.prune(args.all, keep_storage)?,
    };
    for key in &report.cache_records {
        println!("Deleted cache record: {key}");
    }
    for blob in &report.blobs {
        println!("Deleted: {blob}");
    }
    for snapshot in &report.snapshots {
        println!("Deleted snapshot: {snapshot}");
    }
    for id in &report.cache_mounts {
        println!("Deleted cache mount: {id}");
    }
    println!("Total reclaimed space: {}", human_size(report.bytes_freed));
    Ok(ExitCode::SUCCESS)
}

pub fn du(global: &GlobalArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let usage = store.du()?;
    if verbose {
        let mut images = vec![vec!["IMAGE".to_owned(), "SIZE".into(), "UNIQUE SIZE".into()]];
        for image in &usage.images {
            images.push(vec![
                kiln_image::stored::familiar_name(&image.name),
                human_size(image.size),
                human_size(image.unique_size),
            ]);
        }
        print_table(&images);
        println!();
        let now = kiln_image::stored::now_secs();
        let mut records = vec![vec![
            "CACHE RECORD".to_owned(),
            "SIZE".into(),
            "UNIQUE SIZE".into(),
            "LAST USED".into(),
            "IN USE".into(),
            "FROM".into(),
        ]];
        let mut sorted: Vec<_> = usage.cache_records.iter().collect();
        sorted.sort_by(|a, b| b.last_used.cmp(&a.last_used).then_with(|| a.key.cmp(&b.key)));
        for record in sorted {
            records.push(vec![
                record.key.clone(),
                human_size(record.size),
                human_size(record.unique_size),
                human_age(record.last_used, now),
                if record.in_use { "yes".into() } else { "no".into() },
                record
                    .imported_from
                    .clone()
                    .unwrap_or_else(|| "built here".into()),
            ]);
        }
        print_table(&records);
        println!();
        print_cache_mounts(&usage, now);
    }
    let total =
        usage.blobs_bytes + usage.snapshots_bytes + usage.cache_mounts_bytes + usage.context_index_bytes;
    print_table(&[
        vec!["Images:".to_owned(), usage.images.len().to_string()],
        vec![
            "Cache records:".to_owned(),
            match usage
                .cache_records
                .iter()
                .filter(|r| r.imported_from.is_some())
                .count()
            {
                0 => usage.cache_records.len().to_string(),
                imported => format!("{} ({imported} imported)", usage.cache_records.len()),
            },
        ],
        vec!["Blobs:".to_owned(), human_size(usage.blobs_bytes)],
        vec!["Snapshots:".to_owned(), human_size(usage.snapshots_bytes)],
        vec![
            "Cache mounts:".to_owned(),
            format!(
                "{} ({})",
                usage.cache_mounts.len(),
                human_size(usage.cache_mounts_bytes)
            ),
        ],
        vec![
            "Context indexes:".to_owned(),
            human_size(usage.context_index_bytes),
        ],
        vec!["Reclaimable:".to_owned(), human_size(usage.reclaimable_bytes)],
        vec!["Total:".to_owned(), human_size(total)],
    ]);
    // Cache mounts are few and named by the Dockerfile: listed even without -v.
    if !verbose && !usage.cache_mounts.is_empty() {
        println!();
        print_cache_mounts(&usage, kiln_image::stored::now_secs());
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln store check`: one line per problem, errors (content referenced but missing or corrupt) first, then
/// leftovers a crash can leave (which `kiln prune` removes); sound only with neither.
pub fn check(global: &GlobalArgs, quick: bool, repair: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let report = if repair {
        let repaired = store.repair()?;
        for removed in &repaired.removed {
            println!("removed: {removed}");
        }
        repaired.after
    } else {
        store.check_with(!quick)?
    };
    for finding in &report.errors {
        println!("error: {finding}");
    }
    for finding in &report.warnings {
        println!("leftover: {finding}");
    }
    if report.errors.is_empty() && report.warnings.is_empty() {
        eprintln!("The store at {} is sound.", store.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} problem(s), {} leftover(s) in the store at {}{}",
        report.errors.len(),
        report.warnings.len(),
        store.root().display(),
        if report.errors.is_empty() {
            "; `kiln prune` removes the leftovers"
        } else {
            ""
        }
    );
    Ok(ExitCode::FAILURE)
}

fn print_cache_mounts(usage: &kiln_cache::DiskUsage, now: u64) {
    let mut mounts = vec![vec![
        "CACHE MOUNT".to_owned(),
        "SIZE".into(),
        "LAST USED".into(),
        "IN USE".into(),
    ]];
    for mount in &usage.cache_mounts {
        mounts.push(vec![
            mount.id.clone(),
            human_size(mount.size),
            human_age(mount.last_used, now),
            if mount.in_use { "yes".into() } else { "no".into() },
        ]);
    }
    print_table(&mounts);
    println!();
}

/// A size as docker's `--keep-storage` takes it: a number with an optional unit (`k`, `m`, `g`, `t`, `p`,
/// with optional `i` and `b`), in powers of 1024.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = match number.parse() {
        Ok(v) => v,
        Err(_) => bail!("invalid size {s:?}: expected a number with an optional unit, e.g. 10GB"),
    };
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches('b').trim_end_matches('i');
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => bail!("invalid size {s:?}: unknown unit"),
    };
    Ok((value * 1024f64.powi(power)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5x").is_err());
    }
}
