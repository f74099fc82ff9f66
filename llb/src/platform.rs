use crate::{StableHash, StableHasher};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// An OCI platform, normalised the way containerd does so `arm64`, `linux/arm64/v8` and `aarch64` are one:
/// `x86_64` is `amd64`, `i686` is `386`, `arm` without variant is `arm/v7`, a bare-number variant is `vN`,
/// and `macos` is `darwin`. The one platform type of kiln: the registry and exporter use it too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid platform {input:?}: {reason} (expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7)"
)]
pub struct PlatformError {
    pub input: String,
    pub reason: &'static str,
}

const KNOWN_OSES: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "macos",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "wasip1",
];

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or(""));
        Platform {
            os: normalize_os(os),
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        }
    }

    /// This platform as [`Platform::new`] would have made it; the fields are public, so a value need not
    /// have gone through it.
    pub fn normalized(&self) -> Self {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    /// Parses `os/arch[/variant]`, `arch` or `os` like containerd's `platforms.Parse`.
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        let err = |reason| PlatformError {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("empty platform"));
        }
        let parts: Vec<&str> = trimmed.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        {
            return Err(err(
                "each part must be a non-empty word of letters, digits, '_', '-' or '.'",
            ));
        }
        let host = Platform::host();
        match parts.as_slice() {
            [one] => {
                let lower = one.to_ascii_lowercase();
                if KNOWN_OSES.contains(&lower.as_str()) {
                    Ok(Platform::new(&lower, &host.architecture, host.variant.as_deref()))
                } else {
                    Ok(Platform::new("linux", one, None))
                }
            }
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(err("too many '/'-separated parts")),
        }
    }

    /// The platform kiln runs on.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "arm" => "arm",
            other => other,
        };
        Platform::new("linux", arch, None)
    }

    /// The `TARGETVARIANT`-style variant, empty when there is none.
    pub fn variant_str(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }
}

/// containerd's `NormalizeOS`.
fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".into(),
        other => other.into(),
    }
}

/// containerd's `normalizeArch`, also taking the other 32-bit x86 names, and any bare-number variant as `vN`
/// (so that it ranks against the `vN` variants of images).
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (arch, variant) = match arch.as_str() {
        "i386" | "i486" | "i586" | "i686" | "x86" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" { String::new() } else { variant },
        ),
        "aarch64" | "arm64" => {
            let variant = match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".into(),
                _ => variant,
            };
            ("arm64".into(), variant)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let variant = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), variant)
        }
        _ => (arch, variant),
    };
    if variant.starts_with(|c: char| c.is_ascii_digit()) {
        (arch, format!("v{variant}"))
    } else {
        (arch, variant)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, PlatformError> {
        Platform::parse(s)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl StableHash for Platform {
    fn stable_hash(&self, h: &mut StableHasher) {
        h.write_str(&self.os);
        h.write_str(&self.architecture);
        self.variant.stable_hash(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_containerd() {
        for (input, want) in [
            ("linux/amd64", "linux/amd64"),
            ("amd64", "linux/amd64"),
            ("x86_64", "linux/amd64"),
            ("arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/riscv64", "linux/riscv64"),
            ("linux/i686", "linux/386"),
            ("linux/arm64/9.0", "linux/arm64/v9"),
            ("linux/amd64/3", "linux/amd64/v3"),
            ("macos/arm64", "darwin/arm64"),
        ] {
            let got = Platform::parse(input).map(|p| p.to_string());
            assert_eq!(got.as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for input in ["", "/", "linux//amd64", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(input).is_err(), "{input:?}");
        }
    }
}
