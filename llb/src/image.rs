//! The image configuration a build produces alongside its graph: what docker writes into an image's config (`config` plus
//! `history`), built up instruction by instruction and inherited from the base.

use std::collections::{BTreeMap, BTreeSet};

use crate::Platform;

/// Supplies base images' configs (ENV, WORKDIR, USER, ONBUILD...) to a frontend that converts a build into a
/// graph, where the caller can resolve them; a frontend works without one, as `kiln debug llb` does. The
/// solver's answer for the same reference and platform is the same image: it resolves each once per build.
pub trait ImageResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<Option<ImageInfo>, String>;
}

/// The runtime part of an OCI image config, with docker's extensions (Healthcheck, OnBuild, Shell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub user: String,
    /// `port/proto`, e.g. `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// `KEY=value`, in definition order; a redefinition replaces the entry in place.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub volumes: BTreeSet<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<HealthConfig>,
    pub on_build: Vec<String>,
    pub shell: Option<Vec<String>>,
    /// docker's `ArgsEscaped`, which BuildKit sets on every CMD (deprecated in OCI, kept for docker).
    pub args_escaped: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Nanoseconds; 0 means inherit the default.
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub start_interval: u64,
    pub retries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub created_by: String,
    pub comment: String,
    /// True for instructions that only change the config.
    pub empty_layer: bool,
}

/// A base image's or a stage's config with its history, as the next stage inherits it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    pub config: ImageConfig,
    pub history: Vec<History>,
    /// The config's top-level `author`, which MAINTAINER sets.
    pub author: Option<String>,
}

impl ImageConfig {
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|entry| match entry.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (entry.clone(), String::new()),
            })
            .collect()
    }

    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|entry| entry.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// Sets `key`, replacing an earlier definition in place as docker does.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env.iter_mut().find(|e| env_key(e) == key) {
            Some(existing) => *existing = entry,
            None => self.env.push(entry),
        }
    }
}

/// The variable a `KEY=value` environment entry sets (the whole entry when it has no `=`).
pub fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}
