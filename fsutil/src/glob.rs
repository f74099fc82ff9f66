//! Source-path wildcards as BuildKit resolves them: Go's `path/filepath.Match` (Unix flavour) applied one
//! path segment at a time, after the literal leading segments have been split off (fsutil's
//! `splitWildcards`). Operates on bytes, as Go strings are bytes: file names need not be UTF-8.

/// Go's `filepath.ErrBadPattern`.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPattern;

/// `filepath.Clean(filepath.Join("/", path))` without the leading slash: `..` can never climb above the
/// root, and the root itself is the empty path.
pub fn clean_rel(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join(&b'/')
}

/// fsutil's `containsWildcards`: a backslash escapes the next byte.
pub fn contains_wildcards(segment: &[u8]) -> bool {
    let mut i = 0;
    while i < segment.len() {
        match segment[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Splits a cleaned relative path before its first segment that has a wildcard. The literal part is used
/// as a path as it stands (escapes included), exactly as fsutil does.
pub fn split_wildcards(rel: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if rel.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let segments: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    match segments.iter().position(|s| contains_wildcards(s)) {
        Some(at) => (segments[..at].join(&b'/'), segments[at..].join(&b'/')),
        None => (rel.to_vec(), Vec::new()),
    }
}

/// Go's `utf8.DecodeRune`: an invalid or truncated sequence decodes as U+FFFD of width 1.
fn decode_rune(b: &[u8]) -> (u32, usize) {
    for len in 1..=b.len().min(4) {
        if let Ok(s) = std::str::from_utf8(&b[..len])
            && let Some(c) = s.chars().next()
        {
            return (c as u32, len);
        }
    }
    (0xFFFD, 1)
}

/// Go's `filepath.Match` on Unix: `*` and `?` never match `/`; `[...]` classes with ranges and `^`;
/// `\` escapes.
pub fn go_match(pattern: &[u8], name: &[u8]) -> Result<bool, BadPattern> {
    let (mut pattern, mut name) = (pattern, name);
    'outer: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let here = match_chunk(chunk, name);
        if let Ok(Some(t)) = here
            && (t.is_empty() || !pattern.is_empty())
        {
            name = t;
            continue;
        }
        here?;
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    // The last chunk must consume the whole name.
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'outer;
                }
                i += 1;
            }
        }
        // Go still reports a syntax error in the part of the pattern it did not reach.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let [b'*', rest @ ..] = p {
        p = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let (mut chunk, mut s) = (chunk, s);
    // Once failed, the rest of the chunk is still parsed so that bad syntax is reported.
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (rune, n) = decode_rune(s);
                    r = rune;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    s = &s[decode_rune(s).1..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                if c == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return Err(BadPattern);
                    }
                }
                if !failed {
                    if chunk[0] != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { None } else { Some(s) })
}

fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    let mut chunk = match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(_) => chunk,
    };
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = decode_rune(chunk);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> Result<bool, BadPattern> {
        go_match(p.as_bytes(), n.as_bytes())
    }

    // Cases from Go's path/filepath match_test.go.
    #[test]
    fn go_match_table() {
        let ok = |p: &str, n: &str, want: bool| assert_eq!(m(p, n), Ok(want), "{p:?} vs {n:?}");
        ok("abc", "abc", true);
        ok("*", "abc", true);
        ok("*c", "abc", true);
        ok("a*", "a", true);
        ok("a*", "abc", true);
        ok("a*", "ab/c", false);
        ok("a*/b", "abc/b", true);
        ok("a*/b", "a/c/b", false);
        ok("a*b*c*d*e*/f", "axbxcxdxe/f", true);
        ok("a*b*c*d*e*/f", "axbxcxdxexxx/f", true);
        ok("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false);
        ok("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false);
        ok("a*b?c*x", "abxbbxdbxebxczzx", true);
        ok("a*b?c*x", "abxbbxdbxebxczzy", false);
        ok("ab[c]", "abc", true);
        ok("ab[b-d]", "abc", true);
        ok("ab[e-g]", "abc", false);
        ok("ab[^c]", "abc", false);
        ok("ab[^b-d]", "abc", false);
        ok("ab[^e-g]", "abc", true);
        ok("a\\*b", "a*b", true);
        ok("a\\*b", "ab", false);
        ok("a?b", "a☺b", true);
        ok("a[^a]b", "a☺b", true);
        ok("a???b", "a☺b", false);
        ok("a[^a][^a][^a]b", "a☺b", false);
        ok("[a-ζ]*", "α", true);
        ok("*[a-ζ]", "A", false);
        ok("a?b", "a/b", false);
        ok("a*b", "a/b", false);
        ok("[\\]a]", "]", true);
        ok("[\\-]", "-", true);
        ok("[x\\-]", "x", true);
        ok("[x\\-]", "-", true);
        ok("[x\\-]", "z", false);
        ok("[\\-x]", "x", true);
        ok("[\\-x]", "-", true);
        ok("[\\-x]", "a", false);
        ok("*x", "xxx", true);
        let bad = |p: &str, n: &str| assert_eq!(m(p, n), Err(BadPattern), "{p:?} vs {n:?}");
        bad("[]a]", "]");
        bad("[-]", "-");
        bad("[x-]", "x");
        bad("[x-]", "-");
        bad("[x-]", "z");
        bad("[-x]", "x");
        bad("[-x]", "-");
        bad("[-x]", "a");
        bad("\\", "a");
        bad("[a-b-c]", "a");
        bad("[", "a");
        bad("[^", "a");
        bad("[^bc", "a");
        bad("a[", "a");
        bad("a[", "ab");
        bad("a[", "x");
        bad("a/b[", "x");
        bad("*x[", "xxx");
    }

    #[test]
    fn splitting_and_cleaning() {
        assert_eq!(clean_rel(b"/a/./b/../c/"), b"a/c");
        assert_eq!(clean_rel(b"../../x"), b"x");
        assert_eq!(clean_rel(b"."), b"");
        let (d1, d2) = split_wildcards(b"src/lib/*.rs");
        assert_eq!((d1.as_slice(), d2.as_slice()), (&b"src/lib"[..], &b"*.rs"[..]));
        let (d1, d2) = split_wildcards(b"a/\\*/b");
        assert_eq!((d1.as_slice(), d2.as_slice()), (&b"a/\\*/b"[..], &b""[..]));
        let (d1, d2) = split_wildcards(b"*/x");
        assert_eq!((d1.as_slice(), d2.as_slice()), (&b""[..], &b"*/x"[..]));
    }
}
