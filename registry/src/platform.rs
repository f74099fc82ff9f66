//! Which image of an index runs on a platform. The platform type (parsing, containerd's normalization,
//! `Display`) is `kiln_llb::Platform`, re-exported here; this adds containerd's matching and ranking.

pub use kiln_llb::Platform;

/// containerd's platform matcher, for choosing among the images of an index (or of a stored image).
pub trait PlatformMatch {
    /// How well an image for `candidate` runs here: `None` if it does not, else a rank where higher is a
    /// closer match. A host of a newer variant runs older variants of its architecture (arm/v7 runs v6 and
    /// v5, amd64/v3 runs v2 and v1), preferring the newest.
    fn compatibility(&self, candidate: &Platform) -> Option<(u32, u32)>;

    fn matches(&self, candidate: &Platform) -> bool {
        self.compatibility(candidate).is_some()
    }
}

impl PlatformMatch for Platform {
    fn compatibility(&self, candidate: &Platform) -> Option<(u32, u32)> {
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
