use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An OCI platform `os/architecture[/variant]`, normalized like containerd does: `x86_64` is `amd64`,
/// `aarch64` is `arm64`, `arm64/v8` is plain `arm64`, and `arm` without variant is `arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let variant = variant.map(|v| v.to_ascii_lowercase()).filter(|v| !v.is_empty());
        let (architecture, variant) = normalize_arch(&architecture.to_ascii_lowercase(), variant.as_deref());
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform this process runs on, which is what `--platform` defaults to.
    pub fn host() -> Platform {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH, None)
    }

    /// How well an image for `candidate` runs here: `None` if it does not, else a rank where higher is a
    /// closer match. A host of a newer variant runs older variants of its architecture (arm/v7 runs v6 and
    /// v5, amd64/v3 runs v2 and v1), preferring the newest.
    pub fn compatibility(&self, candidate: &Platform) -> Option<(u32, u32)> {
        // Fields are public, so either side may not have gone through `new`.
        let me = self.normalized();
        let c = candidate.normalized();
        if c.os != me.os || c.architecture != me.architecture {
            return None;
        }
        if c.variant == me.variant {
            return Some((u32::MAX, u32::MAX));
        }
        let want = variant_level(&me.architecture, me.variant.as_deref())?;
        let have = variant_level(&c.architecture, c.variant.as_deref())?;
        (have <= want).then_some(have)
    }

    pub fn normalized(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }

    pub fn matches(&self, candidate: &Platform) -> bool {
        self.compatibility(candidate).is_some()
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let (arch, variant): (&str, Option<&str>) = match (arch, variant) {
        ("i386" | "i486" | "i586" | "i686" | "x86", _) => ("386", None),
        ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64", None),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => ("arm64", None),
        ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v)),
        ("armhf", _) => ("arm", Some("v7")),
        ("armel", _) => ("arm", Some("v6")),
        ("arm", None | Some("7")) => ("arm", Some("v7")),
        ("arm", Some("5")) => ("arm", Some("v5")),
        ("arm", Some("6")) => ("arm", Some("v6")),
        ("arm", Some("8")) => ("arm", Some("v8")),
        (a, v) => (a, v),
    };
    let variant = variant.map(|v| {
        if v.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            format!("v{v}")
        } else {
            v.to_owned()
        }
    });
    (arch.to_owned(), variant)
}

/// `vN[.M]` as `(N, M)`, with each architecture's baseline for "no variant" (amd64 v1, arm64 v8.0).
fn variant_level(arch: &str, variant: Option<&str>) -> Option<(u32, u32)> {
    let Some(v) = variant else {
        return match arch {
            "amd64" => Some((1, 0)),
            "arm64" => Some((8, 0)),
            _ => None,
        };
    };
    let digits = v.strip_prefix('v')?;
    let (major, minor) = match digits.split_once('.') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => (digits.parse().ok()?, 0),
    };
    Some((major, minor))
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/arch[/variant]`; a lone `arch` means linux (`arm64`), a lone OS name the host's architecture.
    fn from_str(s: &str) -> Result<Platform> {
        let invalid = |reason: &str| Error::InvalidPlatform {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid(
                "expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7",
            ));
        }
        if let Some(bad) = parts
            .iter()
            .find(|p| !p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return Err(invalid(&format!(
                "{bad:?} contains characters outside [A-Za-z0-9._-]"
            )));
        }
        match parts.as_slice() {
            [one] if KNOWN_OS.contains(&one.to_ascii_lowercase().as_str()) => {
                let host = Platform::host();
                Ok(Platform::new(one, &host.architecture, host.variant.as_deref()))
            }
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(invalid(
                "expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7",
            )),
        }
    }
}

const KNOWN_OS: &[&str] = &[
    "linux", "windows", "darwin", "macos", "freebsd", "netbsd", "openbsd", "illumos", "solaris",
];

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn normalization() {
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/amd64/v1"), p("linux/amd64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/arm64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/7"), p("linux/arm/v7"));
        assert_eq!(p("linux/armhf"), p("linux/arm/v7"));
        assert_eq!(p("Linux/AMD64"), p("linux/amd64"));
        assert_eq!(p("arm64"), p("linux/arm64"));
        assert_eq!(p("linux").os, "linux");
        assert_eq!(p("linux/386"), p("linux/i686"));
    }

    #[test]
    fn matching_follows_containerd() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(p("linux/arm/v7").matches(&p("linux/arm/v6")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm64").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        assert!(p("linux/amd64/v3").matches(&p("linux/amd64")));
        assert!(!p("linux/amd64").matches(&p("linux/amd64/v3")));
        let host = p("linux/arm/v7");
        assert!(host.compatibility(&p("linux/arm/v7")) > host.compatibility(&p("linux/arm/v6")));
        assert!(host.compatibility(&p("linux/arm/v6")) > host.compatibility(&p("linux/arm/v5")));
    }

    #[test]
    fn bad_platforms() {
        for s in ["", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64"] {
            let e = s.parse::<Platform>().unwrap_err().to_string();
            assert!(e.contains("invalid platform"), "{s}: {e}");
        }
    }

    #[test]
    fn host_is_normalized() {
        let h = Platform::host();
        assert_eq!(h, Platform::new(&h.os, &h.architecture, h.variant.as_deref()));
    }
}
