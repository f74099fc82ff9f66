//! What the solver remembers of each step besides its result: what its cache key was made of (so a later
//! miss can say what changed), the steps that finished (so a build, even a failed one, can export their
//! records), and caches imported from elsewhere (a registry, a directory) that a miss in the store falls
//! back to.
//!
//! A key is a hash and says nothing by itself; [`KeyInputs`] keeps its ingredients in readable form next to
//! it. They never hold a secret's value: secrets do not enter keys at all.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::source::LayerRef;

/// How many context files a record lists for explaining misses; a COPY of more keeps only its key.
pub const MAX_LISTED_FILES: usize = 20_000;

/// The readable ingredients of one cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    /// The step across builds: its platform, stage and position in the stage (`linux/amd64 build 2`).
    pub step: String,
    /// What progress shows for it, the instruction text included.
    pub description: String,
    /// What a source says decides its content (a base image's manifest digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A RUN's environment (`KEY=value`, build args included), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The context files the step reads, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileFact>,
    /// More files were read than [`MAX_LISTED_FILES`]; `files` is empty then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub files_unlisted: bool,
    /// The keys of the steps it builds on, in input order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

/// One context file as a key sees it (never its mtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFact {
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`, with the permission bits in octal: `file 644`.
    pub mode: String,
    /// `uid:gid`.
    pub owner: String,
    /// The content hash of a file (hex), a symlink's target; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
}

/// A step whose result this build has, run or from a cache: what `--cache-to` exports.
#[derive(Debug, Clone)]
pub struct FinishedRecord {
    /// It missed every cache and ran in this build.
    pub ran: bool,
    pub key: String,
    /// The whole filesystem of the result, bottom first.
    pub layers: Vec<LayerRef>,
    pub inputs: KeyInputs,
}

/// A step a build ran, as `kiln explain` reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Miss {
    pub key: String,
    pub inputs: KeyInputs,
}

/// A cache from elsewhere (a registry, an OCI layout directory) that the solver asks when the store has
/// no record for a key.
pub trait CacheImport: Send + Sync {
    /// Where it comes from, for messages.
    fn name(&self) -> &str;

    /// The result recorded under `key`, its layers brought into the solver's store; `None` when this cache
    /// has no record of it. An error (an unreachable registry, a corrupt blob) is a miss with a reason.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<CacheHit>, String>>;

    /// The inputs of its records for `step`, for explaining a miss.
    fn inputs_for_step(&self, step: &str) -> Vec<KeyInputs>;

    /// The contents of the cache mount `id` as this cache carries them: a layer blob brought into the
    /// solver's store (its digest checked), or `None` when it carries none.
    fn fetch_cache_mount<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<kiln_cache::Digest>, String>> {
        let _ = id;
        Box::pin(async { Ok(None) })
    }
}

/// A result found in a cache (the store's or an imported one), with the inputs recorded for its key.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub layers: Vec<LayerRef>,
    pub inputs: Option<KeyInputs>,
}

/// The inputs of the store's records by step, leaving out the records under `exclude`.
pub fn recorded_inputs(
    store: &kiln_cache::Store,
    exclude: &std::collections::HashSet<String>,
) -> Result<std::collections::HashMap<String, Vec<KeyInputs>>, kiln_cache::Error> {
    let mut by_step: std::collections::HashMap<String, Vec<KeyInputs>> = std::collections::HashMap::new();
    for (key, record) in store.list_cache_records()? {
        if exclude.contains(&key) {
            continue;
        }
        if let Some(known) = record
            .inputs
            .and_then(|i| serde_json::from_value::<KeyInputs>(i).ok())
        {
            by_step.entry(known.step.clone()).or_default().push(known);
        }
    }
    Ok(by_step)
}

/// Why a step with `missed` inputs had no cache record, given the records of the same step that exist
/// (`known`, nearest first). One line per difference, against the record that differs least.
pub fn explain(missed: &KeyInputs, known: &[KeyInputs]) -> Vec<String> {
    // A record whose own inputs all match is nearest, whatever its parents: then the step missed because
    // of a step below it, which is the better answer than some other record's one changed file.
    let Some(nearest) = known
        .iter()
        .min_by_key(|k| (own_differences(missed, k).len(), missed.parents != k.parents))
    else {
        return vec!["no record for this step in any cache source".to_string()];
    };
    let reasons = differences(missed, nearest);
    if reasons.is_empty() {
        return vec![
            "the nearest record has the same inputs but another key (another kiln version?)".to_string(),
        ];
    }
    reasons
}

fn differences(now: &KeyInputs, then: &KeyInputs) -> Vec<String> {
    let mut out = own_differences(now, then);
    if out.is_empty() && now.parents != then.parents {
        out.push("a step it builds on missed, so its result may differ".to_string());
    }
    out
}

/// What differs in the step itself: its instruction, base, environment and files.
fn own_differences(now: &KeyInputs, then: &KeyInputs) -> Vec<String> {
    let mut out = Vec::new();
    if now.description != then.description {
        out.push(format!(
            "the instruction changed: was {:?}, is {:?}",
            then.description, now.description
        ));
    }
    if now.source != then.source {
        out.push(format!(
            "the base image changed: was {}, is {}",
            then.source.as_deref().unwrap_or("none"),
            now.source.as_deref().unwrap_or("none")
        ));
    }
    out.extend(env_differences(&now.env, &then.env));
    out.extend(file_differences(now, then));
    out
}

fn env_differences(now: &[String], then: &[String]) -> Vec<String> {
    let split = |env: &[String]| -> std::collections::BTreeMap<String, String> {
        env.iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    };
    let (now, then) = (split(now), split(then));
    let mut out = Vec::new();
    for (name, value) in &now {
        match then.get(name) {
            Some(old) if old == value => {}
            Some(old) => out.push(format!(
                "build arg or environment variable {name} changed: was {old:?}, is {value:?}"
            )),
            None => out.push(format!(
                "build arg or environment variable {name} is new: {value:?}"
            )),
        }
    }
    for name in then.keys().filter(|n| !now.contains_key(*n)) {
        out.push(format!(
            "build arg or environment variable {name} is no longer set"
        ));
    }
    out
}

/// How many changed files a reason names before it says "and N more".
const NAMED_FILES: usize = 10;

fn file_differences(now: &KeyInputs, then: &KeyInputs) -> Vec<String> {
    if now.files_unlisted || then.files_unlisted {
        return Vec::new();
    }
    let old: std::collections::HashMap<&str, &FileFact> =
        then.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let new: std::collections::HashSet<&str> = now.files.iter().map(|f| f.path.as_str()).collect();
    let mut changes = Vec::new();
    for file in &now.files {
        let what = match old.get(file.path.as_str()) {
            None => "added".to_string(),
            Some(was) => {
                let mut parts = Vec::new();
                if was.content != file.content {
                    parts.push("content");
                }
                if was.mode != file.mode {
                    parts.push("mode");
                }
                if was.owner != file.owner {
                    parts.push("owner");
                }
                if parts.is_empty() {
                    continue;
                }
                parts.join(", ")
            }
        };
        changes.push(format!("{} ({what})", file.path));
    }
    for file in then.files.iter().filter(|f| !new.contains(f.path.as_str())) {
        changes.push(format!("{} (removed)", file.path));
    }
    if changes.is_empty() {
        return Vec::new();
    }
    let more = changes.len().saturating_sub(NAMED_FILES);
    changes.truncate(NAMED_FILES);
    let mut line = format!("context files changed: {}", changes.join(", "));
    if more > 0 {
        line.push_str(&format!(" and {more} more"));
    }
    vec![line]
}

/// The step identity of a vertex: platform, and the `[stage n/m]` prefix of its description without the
/// count, so a record of "the second instruction of stage build" is found again after the instruction text
/// (or the number of instructions) changes.
pub fn step_id(platform: &str, description: &str) -> String {
    let position = description
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .map(|(inside, _)| inside.split_once('/').map_or(inside, |(head, _)| head))
        .unwrap_or(description);
    format!("{platform} {position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(description: &str, env: &[&str], files: &[(&str, &str)]) -> KeyInputs {
        KeyInputs {
            step: step_id("linux/amd64", description),
            description: description.to_string(),
            env: env.iter().map(|e| e.to_string()).collect(),
            files: files
                .iter()
                .map(|(path, content)| FileFact {
                    path: path.to_string(),
                    mode: "file 644".to_string(),
                    owner: "0:0".to_string(),
                    content: content.to_string(),
                })
                .collect(),
            ..KeyInputs::default()
        }
    }

    #[test]
    fn the_step_survives_a_changed_instruction() {
        assert_eq!(
            step_id("linux/amd64", "[build 2/4] RUN make"),
            step_id("linux/amd64", "[build 2/5] RUN make all")
        );
        assert_ne!(
            step_id("linux/amd64", "[build 2/4] RUN make"),
            step_id("linux/arm64", "[build 2/4] RUN make")
        );
    }

    #[test]
    fn a_miss_names_what_changed() {
        let then = inputs("[a 1/2] COPY . .", &["V=1"], &[("a.txt", "aa"), ("b.txt", "bb")]);
        let now = inputs("[a 1/2] COPY . .", &["V=2"], &[("a.txt", "aa"), ("b.txt", "cc")]);
        let reasons = explain(&now, &[then]);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].contains("V changed: was \"1\", is \"2\""),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("b.txt (content)"), "{reasons:?}");
        assert!(!reasons[1].contains("a.txt"), "{reasons:?}");
    }

    #[test]
    fn no_record_is_said_so() {
        let now = inputs("[a 1/2] RUN x", &[], &[]);
        assert_eq!(
            explain(&now, &[]),
            vec!["no record for this step in any cache source"]
        );
    }

    #[test]
    fn a_record_that_differs_only_below_is_nearer_than_one_with_another_file() {
        let now = inputs("[a 2/2] COPY . /app", &[], &[("main.c", "v2")]);
        let mut same_files = now.clone();
        same_files.parents = vec!["another base".into()];
        let other_file = inputs("[a 2/2] COPY . /app", &[], &[("main.c", "v1")]);
        for known in [[same_files.clone(), other_file.clone()], [other_file, same_files]] {
            let reasons = explain(&now, &known);
            assert_eq!(reasons, ["a step it builds on missed, so its result may differ"]);
        }
    }

    #[test]
    fn the_nearest_record_is_the_one_compared() {
        let now = inputs("[a 1/2] RUN x", &["A=1", "B=2"], &[]);
        let far = inputs("[a 1/2] RUN y", &["A=0", "B=0"], &[]);
        let near = inputs("[a 1/2] RUN x", &["A=1", "B=3"], &[]);
        let reasons = explain(&now, &[far, near]);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("B changed"), "{reasons:?}");
    }
}
