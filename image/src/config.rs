//! The image config (`application/vnd.oci.image.config.v1+json` and docker's
//! `application/vnd.docker.container.image.v1+json`): docker's field names and omit-empty rules, as BuildKit
//! writes them, and the reading back of what a build inherits from a base image. One module knows the field
//! names, both ways.

use std::collections::{BTreeMap, BTreeSet};

use kiln_cache::Digest;
use kiln_llb::Platform;
use kiln_llb::image::{HealthConfig, History, ImageConfig, ImageInfo};
use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// The image config JSON. Field names and omissions follow docker's structs (Go's `omitempty`): an empty
/// string or list, or a zero, is left out; `config` itself and `rootfs.diff_ids` are always there.
pub fn to_json(
    image: &ImageInfo,
    platform: &Platform,
    extra_labels: &BTreeMap<String, String>,
    created: &str,
    diff_ids: &[Digest],
    history: Vec<Value>,
) -> Value {
    let c: &ImageConfig = &image.config;
    let mut config = Map::new();
    insert_str(&mut config, "User", &c.user);
    insert_set(&mut config, "ExposedPorts", &c.exposed_ports);
    insert_list(&mut config, "Env", &c.env);
    insert_list(
        &mut config,
        "Entrypoint",
        c.entrypoint.as_deref().unwrap_or_default(),
    );
    insert_list(&mut config, "Cmd", c.cmd.as_deref().unwrap_or_default());
    insert_set(&mut config, "Volumes", &c.volumes);
    insert_str(&mut config, "WorkingDir", &c.working_dir);
    let mut labels = c.labels.clone();
    labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    if !labels.is_empty() {
        config.insert("Labels".into(), json!(labels));
    }
    insert_str(
        &mut config,
        "StopSignal",
        c.stop_signal.as_deref().unwrap_or_default(),
    );
    if let Some(health) = &c.healthcheck {
        config.insert("Healthcheck".into(), health_json(health));
    }
    insert_list(&mut config, "OnBuild", &c.on_build);
    insert_list(&mut config, "Shell", c.shell.as_deref().unwrap_or_default());
    if c.args_escaped {
        config.insert("ArgsEscaped".into(), json!(true));
    }

    let mut out = Map::new();
    out.insert("architecture".into(), json!(platform.architecture));
    out.insert("os".into(), json!(platform.os));
    if let Some(variant) = platform.variant.as_deref().filter(|v| !v.is_empty()) {
        out.insert("variant".into(), json!(variant));
    }
    out.insert("created".into(), json!(created));
    if let Some(author) = image.author.as_deref().filter(|a| !a.is_empty()) {
        out.insert("author".into(), json!(author));
    }
    out.insert("config".into(), Value::Object(config));
    out.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}),
    );
    if !history.is_empty() {
        out.insert("history".into(), Value::Array(history));
    }
    Value::Object(out)
}

/// One `history` entry: `empty_layer` for an instruction that made no layer.
pub fn history_entry(h: &History, created: &str, empty_layer: bool) -> Value {
    let mut entry = Map::new();
    entry.insert("created".into(), json!(created));
    insert_str(&mut entry, "created_by", &h.created_by);
    insert_str(&mut entry, "comment", &h.comment);
    if empty_layer {
        entry.insert("empty_layer".into(), json!(true));
    }
    Value::Object(entry)
}

fn health_json(h: &HealthConfig) -> Value {
    let mut out = Map::new();
    insert_list(&mut out, "Test", &h.test);
    for (key, value) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
        ("StartInterval", h.start_interval),
        ("Retries", h.retries),
    ] {
        if value != 0 {
            out.insert(key.into(), json!(value));
        }
    }
    Value::Object(out)
}

pub fn platform_json(p: &Platform) -> Value {
    let mut out = Map::new();
    out.insert("architecture".into(), json!(p.architecture));
    out.insert("os".into(), json!(p.os));
    if let Some(variant) = p.variant.as_deref().filter(|v| !v.is_empty()) {
        out.insert("variant".into(), json!(variant));
    }
    Value::Object(out)
}

fn insert_str(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.into(), json!(value));
    }
}

fn insert_list(map: &mut Map<String, Value>, key: &str, values: &[String]) {
    if !values.is_empty() {
        map.insert(key.into(), json!(values));
    }
}

/// A set as docker writes one: an object whose values are `{}`.
fn insert_set(map: &mut Map<String, Value>, key: &str, values: &BTreeSet<String>) {
    if !values.is_empty() {
        let set: Map<String, Value> = values.iter().map(|v| (v.clone(), json!({}))).collect();
        map.insert(key.into(), Value::Object(set));
    }
}

/// Reads back what [`to_json`] writes: what a build inherits from a base image's config (docker's field
/// names, absent fields empty). `what` names the config in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<ImageInfo> {
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(what, format!("invalid config JSON: {e}")))?;
    let config = &json["config"];
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
    };
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut info = ImageInfo {
        author: json["author"].as_str().map(str::to_string),
        ..ImageInfo::default()
    };
    let c = &mut info.config;
    c.user = text(&config["User"]);
    c.exposed_ports = keys(&config["ExposedPorts"]);
    c.env = strings(&config["Env"]).unwrap_or_default();
    c.entrypoint = strings(&config["Entrypoint"]);
    c.cmd = strings(&config["Cmd"]);
    c.volumes = keys(&config["Volumes"]);
    c.working_dir = text(&config["WorkingDir"]);
    c.labels = config["Labels"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    c.stop_signal = config["StopSignal"].as_str().map(str::to_string);
    c.on_build = strings(&config["OnBuild"]).unwrap_or_default();
    c.shell = strings(&config["Shell"]);
    c.args_escaped = config["ArgsEscaped"].as_bool().unwrap_or(false);
    if let Some(health) = config["Healthcheck"].as_object() {
        let nanos = |key: &str| health.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
        c.healthcheck = Some(HealthConfig {
            test: health.get("Test").and_then(strings).unwrap_or_default(),
            interval: nanos("Interval"),
            timeout: nanos("Timeout"),
            start_period: nanos("StartPeriod"),
            start_interval: nanos("StartInterval"),
            retries: nanos("Retries"),
        });
    }
    info.history = json["history"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|h| History {
                    created_by: text(&h["created_by"]),
                    comment: text(&h["comment"]),
                    empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_reads_back_as_written() {
        let mut info = ImageInfo {
            author: Some("me".into()),
            ..ImageInfo::default()
        };
        let c = &mut info.config;
        c.user = "app".into();
        c.exposed_ports.insert("80/tcp".into());
        c.env = vec!["A=1".into(), "PATH=/bin".into()];
        c.entrypoint = Some(vec!["run".into()]);
        c.cmd = Some(vec!["--flag".into()]);
        c.volumes.insert("/data".into());
        c.working_dir = "/w".into();
        c.labels.insert("k".into(), "v".into());
        c.stop_signal = Some("SIGINT".into());
        c.healthcheck = Some(HealthConfig {
            test: vec!["CMD".into(), "true".into()],
            interval: 5,
            retries: 2,
            ..HealthConfig::default()
        });
        c.on_build = vec!["RUN x".into()];
        c.shell = Some(vec!["/bin/bash".into(), "-c".into()]);
        c.args_escaped = true;
        let platform = Platform::parse("linux/amd64").expect("platform");
        let json = to_json(&info, &platform, &BTreeMap::new(), "T", &[], Vec::new());
        let back = parse(&serde_json::to_vec(&json).expect("json"), "config").expect("reads back");
        assert_eq!(back.config, info.config);
        assert_eq!(back.author, info.author);
    }
}
