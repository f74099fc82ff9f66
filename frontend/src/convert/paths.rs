//! Paths as BuildKit treats them: joined onto the working directory, cleaned like Go's `path.Clean`, and
//! tested for wildcards like fsutil.

pub(super) fn join_path(workdir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), path)
    }
}

/// Lexical cleaning like Go's `path.Clean` for absolute paths.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// fsutil's test for a wildcard in a copy source: `*`, `?` or `[` not escaped with a backslash. The same test
/// the copy itself makes, so the frontend's choice of `allow_empty_wildcard` agrees with what is expanded.
pub(super) fn contains_wildcards(path: &str) -> bool {
    kiln_fsutil::glob::contains_wildcards(path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path("/a/./b/../c//d/"), "/a/c/d");
        assert_eq!(clean_path("/../.."), "/");
        assert_eq!(join_path("/app", "src"), "/app/src");
        assert_eq!(join_path("/app", "/abs"), "/abs");
    }

    #[test]
    fn wildcards_like_fsutil() {
        assert!(contains_wildcards("src/*.rs") && contains_wildcards("a?") && contains_wildcards("[ab]"));
        assert!(!contains_wildcards("plain/path") && !contains_wildcards("lit\\*eral"));
    }
}
