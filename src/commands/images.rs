//! `kiln images`, `kiln tag`, `kiln rmi`, `kiln inspect`, and what the other image commands share: opening
//! the store, a tokio runtime and a registry client, and docker's way of printing sizes and ages.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_cache::{Digest, Store};
use kiln_image::stored::{self, Found, StoredImage};
use kiln_registry::{Platform, Reference, RegistryClient, RegistryConfig};

use crate::cli::{GlobalArgs, ImagesArgs, ImagesFormat, RmiArgs};

pub fn open_store(global: &GlobalArgs) -> anyhow::Result<Store> {
    let root = super::store_root(global);
    Store::open(&root).with_context(|| format!("open the store at {}", root.display()))
}

/// The runtime for a command that talks to registries. Built here, not in `main`, because `main` must stay
/// single-threaded until it has dispatched (the sandbox re-executes the binary).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

pub fn registry_client(global: &GlobalArgs) -> anyhow::Result<RegistryClient> {
    Ok(RegistryClient::new(RegistryConfig {
        insecure_registries: global.insecure_registries.clone(),
        ..RegistryConfig::default()
    })?)
}

/// The 12 hex digits docker shows of an ID.
pub fn short_id(digest: &Digest) -> String {
    digest.hex()[..12].to_owned()
}

/// docker's sizes: decimal units, three significant digits (`4.26MB`, `512B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut s = format!("{value:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{s}{}", UNITS[unit])
}

/// docker's ages (go-units `HumanDuration`) with " ago".
pub fn human_age(then: u64, now: u64) -> String {
    let secs = now.saturating_sub(then);
    let minutes = secs / 60;
    let hours = (secs as f64 / 3600.0 + 0.5) as u64;
    let age = if secs < 1 {
        "Less than a second".to_owned()
    } else if secs == 1 {
        "1 second".to_owned()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".to_owned()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_owned()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", secs / 3600 / 24 / 365)
    };
    format!("{age} ago")
}

/// One line of `kiln images`.
struct Row {
    repository: String,
    tag: String,
    digest: String,
    id: Digest,
    created: u64,
    size: u64,
    platforms: Vec<Platform>,
    name: String,
}

pub fn images(global: &GlobalArgs, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let filter = args
        .repository
        .as_deref()
        .map(|r| -> anyhow::Result<(String, Option<String>)> {
            let has_tag = r.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/'));
            let parsed = Reference::parse(r)?;
            let repo = stored::familiar_name(&format!("{}/{}", parsed.registry(), parsed.repository()));
            Ok((repo, has_tag.then(|| parsed.tag().unwrap_or("latest").to_owned())))
        })
        .transpose()?;
    let mut rows: Vec<Row> = stored::list(&store)?
        .into_iter()
        .map(|image| {
            let parts = stored::name_parts(&image.name);
            Row {
                repository: parts.as_ref().map_or("<none>".into(), |p| p.repository.clone()),
                tag: parts
                    .as_ref()
                    .and_then(|p| p.tag.clone())
                    .unwrap_or_else(|| "<none>".into()),
                digest: parts
                    .as_ref()
                    .and_then(|p| p.digest.clone())
                    .unwrap_or_else(|| "<none>".into()),
                id: image.id(),
                created: image.created(),
                size: image.size(),
                platforms: image.platforms(),
                name: image.name.clone(),
            }
        })
        .filter(|row| match &filter {
            None => true,
            Some((repo, tag)) => row.repository == *repo && tag.as_ref().is_none_or(|t| row.tag == *t),
        })
        .collect();
    // Newest first, then by name, as docker lists them.
    rows.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
    let id_text = |id: &Digest| {
        if args.no_trunc {
            id.to_string()
        } else {
            short_id(id)
        }
    };
    if args.quiet {
        for row in &rows {
            println!("{}", id_text(&row.id));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = stored::now_secs();
    match args.format {
        ImagesFormat::Json => {
            for row in &rows {
                let created_at = chrono::DateTime::from_timestamp(row.created as i64, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
                    .unwrap_or_default();
                let line = serde_json::json!({
                    "Containers": "N/A",
                    "CreatedAt": created_at,
                    "CreatedSince": human_age(row.created, now),
                    "Digest": row.digest,
                    "ID": id_text(&row.id),
                    "Repository": row.repository,
                    "SharedSize": "N/A",
                    "Size": human_size(row.size),
                    "Tag": row.tag,
                    "UniqueSize": "N/A",
                    "VirtualSize": human_size(row.size),
                    "Name": row.name,
                    "Platforms": row.platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                });
                println!("{line}");
            }
        }
        ImagesFormat::Table => {
            // The PLATFORMS column appears only when a multi-platform image is listed, so the common table
            // stays exactly docker's.
            let multi = rows.iter().any(|r| r.platforms.len() > 1);
            let mut table = vec![vec![
                "REPOSITORY".to_owned(),
                "TAG".into(),
                "IMAGE ID".into(),
                "CREATED".into(),
                "SIZE".into(),
            ]];
            if multi {
                table[0].push("PLATFORMS".into());
            }
            for row in &rows {
                let mut line = vec![
                    row.repository.clone(),
                    row.tag.clone(),
                    id_text(&row.id),
                    human_age(row.created, now),
                    human_size(row.size),
                ];
                if multi {
                    let platforms: Vec<String> = row.platforms.iter().map(|p| p.to_string()).collect();
                    line.push(platforms.join(","));
                }
                table.push(line);
            }
            print_table(&table);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell plus three spaces, as docker's tabwriter does.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

pub fn tag(global: &GlobalArgs, source: &str, target: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let target_ref = Reference::parse(target)?;
    if target_ref.digest().is_some() {
        bail!("refusing to create a tag with a digest reference: {target}");
    }
    let found = stored::find(&store, source)?;
    let image = found.image();
    stored::record_image(
        &store,
        &stored::image_name(&target_ref),
        image.record.digest,
        &image.record.media_type,
        &image.platforms(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Every name of images with this ID.
fn names_with_id(store: &Store, id: &Digest) -> anyhow::Result<Vec<String>> {
    Ok(stored::list(store)?
        .into_iter()
        .filter(|i| i.id() == *id)
        .map(|i| i.name)
        .collect())
}

pub fn rmi(global: &GlobalArgs, args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let mut failed = false;
    for arg in &args.images {
        if let Err(e) = rmi_one(&store, arg, args.force) {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes names as docker does: a name removes that name; an ID removes its one name, or all of them with
/// `force`. "Deleted" reports an image that no name refers to anymore; its content stays until a prune.
fn rmi_one(store: &Store, arg: &str, force: bool) -> anyhow::Result<()> {
    let found = stored::find(store, arg)?;
    let (id, names): (Digest, Vec<String>) = match &found {
        Found::Name(image) => (image.id(), vec![image.name.clone()]),
        Found::Id { id, images } => {
            let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
            let named: Vec<String> = names
                .iter()
                .filter(|n| !stored::is_unnamed(n))
                .map(|n| stored::familiar_name(n))
                .collect();
            if named.len() > 1 && !force {
                bail!(
                    "conflict: unable to delete {} (must be forced) - image is referenced by several names: {}",
                    short_id(id),
                    named.join(", ")
                );
            }
            (*id, names)
        }
    };
    for name in &names {
        store.untag(name)?;
        if !stored::is_unnamed(name) {
            println!("Untagged: {}", stored::familiar_name(name));
        }
    }
    if names_with_id(store, &id)?.is_empty() {
        println!("Deleted: {id}");
    }
    Ok(())
}

pub fn inspect(global: &GlobalArgs, images: &[String]) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let mut out = Vec::new();
    let mut failed = false;
    for arg in images {
        match stored::find(&store, arg) {
            Ok(found) => {
                let all_names: Vec<String> = match &found {
                    Found::Name(image) => names_with_id(&store, &image.id())?,
                    Found::Id { images, .. } => images.iter().map(|i| i.name.clone()).collect(),
                };
                out.push(inspect_json(found.image(), &all_names)?);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// docker inspect's fields for the host's platform (or the first), plus the manifest, the config and, for
/// an index, every platform present.
fn inspect_json(image: &StoredImage, names: &[String]) -> anyhow::Result<serde_json::Value> {
    let host = Platform::host();
    let main = image.select(&host).or(image.manifests.first()).with_context(|| {
        format!(
            "image {}: none of its platforms is complete in the store",
            image.name
        )
    })?;
    let config: serde_json::Value = serde_json::from_slice(&main.config_bytes)?;
    let manifest: serde_json::Value = serde_json::from_slice(&main.bytes)?;
    let mut tags = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for name in names {
        if let Some(parts) = stored::name_parts(name) {
            if let Some(tag) = &parts.tag {
                tags.insert(format!("{}:{tag}", parts.repository));
            }
            digests.insert(format!(
                "{}@{}",
                parts.repository,
                parts
                    .digest
                    .clone()
                    .unwrap_or_else(|| image.record.digest.to_string())
            ));
        }
    }
    let mut json = serde_json::json!({
        "Id": image.id().to_string(),
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": config.get("created").cloned().unwrap_or(serde_json::Value::Null),
        "Architecture": main.platform.architecture,
        "Os": main.platform.os,
        "Config": config.get("config").cloned().unwrap_or(serde_json::Value::Null),
        "RootFS": {
            "Type": "layers",
            "Layers": main.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        },
        "Size": image.size(),
        "Descriptor": {
            "mediaType": image.record.media_type,
            "digest": image.record.digest.to_string(),
        },
        "Platforms": image.platforms().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "Manifest": manifest,
        "ImageConfig": config,
    });
    if let Some(variant) = &main.platform.variant {
        json["Variant"] = variant.clone().into();
    }
    if let Some(index) = &image.index {
        json["Index"] = serde_json::from_slice(index)?;
        json["Manifests"] = image
            .manifests
            .iter()
            .map(|m| {
                serde_json::json!({
                    "Platform": m.platform.to_string(),
                    "Digest": m.manifest.digest.to_string(),
                    "Config": m.config.digest.to_string(),
                    "Size": m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
                })
            })
            .collect();
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4_262_312), "4.26MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn ages_like_docker() {
        assert_eq!(human_age(100, 100), "Less than a second ago");
        assert_eq!(human_age(0, 30), "30 seconds ago");
        assert_eq!(human_age(0, 90), "About a minute ago");
        assert_eq!(human_age(0, 3 * 3600), "3 hours ago");
        assert_eq!(human_age(0, 10 * 86400), "10 days ago");
        assert_eq!(human_age(0, 3 * 365 * 86400), "3 years ago");
    }
}
