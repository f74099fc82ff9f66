use std::fmt;
use std::str::FromStr;

use oci_client::ParseError;

use crate::error::{Error, Result};

/// An image reference in docker's syntax: `busybox`, `localhost:5000/a/b:tag`, `name@sha256:…`.
///
/// Parsing follows docker: a first path component that contains `.` or `:` or is `localhost` names the
/// registry, anything else means `docker.io`, where one-component names get the `library/` prefix; a
/// reference without tag or digest gets the tag `latest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference(oci_client::Reference);

impl Reference {
    pub fn parse(input: &str) -> Result<Reference> {
        let invalid = |reason: &str| Error::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.trim() != input || input.is_empty() {
            return Err(invalid(if input.is_empty() {
                "empty reference"
            } else {
                "leading or trailing whitespace"
            }));
        }
        if input.starts_with('[') {
            return parse_ipv6_registry(input).ok_or_else(|| {
                invalid("expected [IPv6]:port/repository[:tag][@digest] with a valid IPv6 address")
            });
        }
        if let Some(r) = parse_ascii(input) {
            return Ok(Reference(r));
        }
        match oci_client::Reference::try_from(input) {
            Ok(r) => Ok(Reference(r)),
            Err(e) => Err(invalid(&explain(input, &e))),
        }
    }

    /// The registry as written, with docker's default filled in: `docker.io`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path inside the registry: `library/busybox`, `a/b`.
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same repository pinned to `digest` (any tag is dropped).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference(oci_client::Reference::with_digest(
            self.registry().to_owned(),
            self.repository().to_owned(),
            digest.to_owned(),
        ))
    }

    /// The same repository with `tag` (any digest is dropped).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference(oci_client::Reference::with_tag(
            self.registry().to_owned(),
            self.repository().to_owned(),
            tag.to_owned(),
        ))
    }

    /// Another repository on the same registry, e.g. the source of a cross-repository mount.
    pub fn with_repository(&self, repository: &str) -> Result<Reference> {
        Reference::parse(&format!("{}/{}:latest", self.registry(), repository))
    }

    /// The host oci-client talks to (docker.io's API lives at index.docker.io).
    pub(crate) fn api_host(&self) -> &str {
        self.0.resolve_registry()
    }

    pub(crate) fn oci(&self) -> &oci_client::Reference {
        &self.0
    }
}

/// oci-spec's grammar predates bracketed IPv6 registries (docker accepts `[::1]:5000/x`), so the host is
/// checked here and the rest parsed with a stand-in host.
fn parse_ipv6_registry(input: &str) -> Option<Reference> {
    let (host, rest) = input.split_once('/')?;
    let (addr, port) = host.strip_prefix('[')?.split_once(']')?;
    addr.parse::<std::net::Ipv6Addr>().ok()?;
    if !port.is_empty() {
        port.strip_prefix(':')?.parse::<u16>().ok()?;
    }
    let r = oci_client::Reference::try_from(format!("ipv6.invalid/{rest}")).ok()?;
    let registry = host.to_owned();
    let repository = r.repository().to_owned();
    Some(Reference(match (r.tag(), r.digest()) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_owned(),
            digest.to_owned(),
        ),
        (None, Some(digest)) => oci_client::Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => {
            oci_client::Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
        }
    }))
}

/// oci-spec's reasons are terse ("invalid reference format"); point at the usual culprits.
fn explain(input: &str, err: &ParseError) -> String {
    let name = input.split('@').next().unwrap_or(input);
    let path = match name.rsplit_once(':') {
        Some((before, after)) if !after.contains('/') => before,
        _ => name,
    };
    match err {
        ParseError::ReferenceInvalidFormat if path.chars().any(|c| c.is_ascii_uppercase()) => {
            "repository name must be lowercase".to_owned()
        }
        ParseError::ReferenceInvalidFormat if input.contains("://") => {
            "a reference has no URL scheme; write `host[:port]/repository[:tag]`".to_owned()
        }
        ParseError::ReferenceInvalidFormat => {
            "expected [registry/]repository[:tag][@algorithm:hex], with a lowercase repository of \
             [a-z0-9] separated by `.`, `_`, `__` or `-`, a tag of at most 128 [A-Za-z0-9_.-], and a \
             sha256 digest"
                .to_owned()
        }
        other => other.to_string(),
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Docker's reference grammar (distribution's `reference` package), ASCII as Go's regexp reads it.
/// oci-spec compiles the same grammar with Unicode classes, which costs ~40 ms on every run of kiln that
/// parses a reference; the ASCII form compiles in well under a millisecond.
fn ascii_grammar() -> &'static regex::Regex {
    static GRAMMAR: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    GRAMMAR.get_or_init(|| {
        let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let domain = format!(r"{domain_component}(?:\.{domain_component})*(?::[0-9]+)?");
        let path_component = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*";
        let name = format!(r"(?:{domain}/)?{path_component}(?:/{path_component})*");
        let tag = r"[\w][\w.-]{0,127}";
        let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[[:xdigit:]]{32,}";
        let reference = format!(r"^({name})(?::({tag}))?(?:@({digest}))?$");
        regex::RegexBuilder::new(&reference)
            .unicode(false)
            .build()
            .unwrap_or_else(|e| unreachable!("the reference grammar is a constant: {e}"))
    })
}

/// The common case, an ASCII reference that parses, without oci-spec's slow first parse. `None` sends the
/// input to oci-spec, whose parse (and error) then decides; for ASCII input the two grammars agree, and a
/// test checks that both give the same parts.
fn parse_ascii(input: &str) -> Option<oci_client::Reference> {
    const NAME_TOTAL_LENGTH_MAX: usize = 255;
    let captures = ascii_grammar().captures(input)?;
    let name = captures.get(1)?.as_str();
    let tag = captures.get(2).map(|m| m.as_str().to_owned());
    let digest = captures.get(3).map(|m| m.as_str().to_owned());
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".to_owned();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return None;
    }
    if let Some(digest) = &digest {
        let hex_len = match digest.split_once(':')? {
            ("sha256", hex) => (hex.len(), 64),
            ("sha384", hex) => (hex.len(), 96),
            ("sha512", hex) => (hex.len(), 128),
            _ => return None,
        };
        if hex_len.0 != hex_len.1 {
            return None;
        }
    }
    Some(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            oci_client::Reference::with_tag_and_digest(registry, repository, tag, digest)
        }
        (None, Some(digest)) => oci_client::Reference::with_digest(registry, repository, digest),
        (tag, None) => {
            oci_client::Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".to_owned()))
        }
    })
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (
            r.registry().to_owned(),
            r.repository().to_owned(),
            r.tag().map(str::to_owned),
            r.digest().map(str::to_owned),
        )
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_defaults() {
        assert_eq!(
            parts("busybox"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("user/app:1.0"),
            ("docker.io".into(), "user/app".into(), Some("1.0".into()), None)
        );
        assert_eq!(
            parts("index.docker.io/library/alpine"),
            (
                "docker.io".into(),
                "library/alpine".into(),
                Some("latest".into()),
                None
            )
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "index.docker.io");
    }

    #[test]
    fn registries_with_ports_and_paths() {
        assert_eq!(
            parts("localhost:5000/a/b:tag"),
            ("localhost:5000".into(), "a/b".into(), Some("tag".into()), None)
        );
        assert_eq!(
            parts("localhost/a"),
            ("localhost".into(), "a".into(), Some("latest".into()), None)
        );
        assert_eq!(
            parts("127.0.0.1:5000/x"),
            ("127.0.0.1:5000".into(), "x".into(), Some("latest".into()), None)
        );
        assert_eq!(
            parts("[::1]:5000/x:y"),
            ("[::1]:5000".into(), "x".into(), Some("y".into()), None)
        );
        assert_eq!(Reference::parse("[::1]/x").unwrap().to_string(), "[::1]/x:latest");
        assert!(Reference::parse("[nope]:5000/x").is_err());
        assert!(Reference::parse("[::1]:5000/X").is_err());
    }

    #[test]
    fn digests() {
        let (reg, repo, tag, digest) = parts(&format!("name@{D}"));
        assert_eq!((reg.as_str(), repo.as_str()), ("docker.io", "library/name"));
        assert_eq!(tag, None);
        assert_eq!(digest.as_deref(), Some(D));
        let (_, _, tag, digest) = parts(&format!("localhost:5000/name:v1@{D}"));
        assert_eq!(tag.as_deref(), Some("v1"));
        assert_eq!(digest.as_deref(), Some(D));
        let r = Reference::parse("localhost:5000/a:b").unwrap().with_digest(D);
        assert_eq!(r.to_string(), format!("localhost:5000/a@{D}"));
    }

    #[test]
    fn malformed_references_are_explained() {
        for (input, needle) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("localhost:5000/App:1", "lowercase"),
            ("https://localhost:5000/a", "URL scheme"),
            ("a:b:c", "expected"),
            ("name@sha256:abc", "digest"),
            ("name@md5:d41d8cd98f00b204e9800998ecf8427e", "digest"),
            (" busybox", "whitespace"),
            ("a//b", "expected"),
        ] {
            let err = Reference::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(Reference::parse(&long).is_err());
    }

    #[test]
    fn the_fast_parse_agrees_with_oci_spec() {
        let long_repo = format!("a/{}", "b".repeat(260));
        let inputs = [
            "busybox".to_string(),
            "busybox:1.36".to_string(),
            "library/busybox".to_string(),
            "user/app:1.0".to_string(),
            "index.docker.io/library/alpine".to_string(),
            "index.docker.io/alpine".to_string(),
            "docker.io/alpine:3".to_string(),
            "localhost/a".to_string(),
            "localhost:5000/a/b/c:tag".to_string(),
            "127.0.0.1:5000/x".to_string(),
            "registry.example.com/team/app_x.y-z:V1.2_rc-3".to_string(),
            "my-registry.local:443/a__b/c---d".to_string(),
            format!("name@{D}"),
            format!("localhost:5000/name:v1@{D}"),
            format!("ghcr.io/o/r@sha512:{}", "a".repeat(128)),
            "name@sha256:abc".to_string(),
            format!("name@md5:{}", "a".repeat(32)),
            "a:b:c".to_string(),
            "a//b".to_string(),
            "Busybox".to_string(),
            "app:-tag".to_string(),
            format!("app:{}", "t".repeat(129)),
            long_repo,
        ];
        for input in &inputs {
            let slow = oci_client::Reference::try_from(input.as_str()).ok();
            let fast = parse_ascii(input);
            match (&slow, &fast) {
                (Some(slow), Some(fast)) => assert_eq!(
                    (slow.registry(), slow.repository(), slow.tag(), slow.digest()),
                    (fast.registry(), fast.repository(), fast.tag(), fast.digest()),
                    "{input}"
                ),
                // The fast parse may decline what oci-spec accepts (then oci-spec parses it), never the reverse.
                (Some(_), None) => {}
                (None, Some(_)) => panic!("{input}: accepted by the fast parse only"),
                (None, None) => {}
            }
            assert_eq!(slow.is_some(), Reference::parse(input).is_ok(), "{input}");
        }
    }
}
