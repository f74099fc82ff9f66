//! `.dockerignore` reading and matching against moby's behaviour. Rows that mirror a case in moby's
//! patternmatcher_test.go or ignorefile_test.go say so; the others encode what moby's code does (several
//! on purpose where that differs from what its documentation suggests). Every failing row is reported.

use kiln_fsutil::ignore::{IgnoreError, PatternMatcher, parse};

fn matcher(file: &str) -> Result<PatternMatcher, IgnoreError> {
    PatternMatcher::new(&parse(file, ".dockerignore")?)
}

fn assert_none_failed(failures: &[String], rows: usize) {
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// (ignore file, context-relative path, excluded?, what it shows)
const TABLE: &[(&str, &str, bool, &str)] = &[
    // Reading: comments, blanks, whitespace, BOM, CRLF.
    (
        "# comment\n\nfoo\n",
        "foo",
        true,
        "comments and blank lines skipped",
    ),
    ("#foo", "#foo", false, "a comment is not a pattern"),
    (
        "  #foo",
        "#foo",
        true,
        "`#` only starts a comment in column one; then the line is trimmed",
    ),
    ("\\#foo", "#foo", true, "escaped `#` is a literal"),
    ("\u{feff}foo", "foo", true, "BOM stripped from the first line"),
    ("  foo \t", "foo", true, "leading and trailing whitespace trimmed"),
    ("foo\r\nbar\r\n", "bar", true, "CRLF line endings"),
    // Cleaning like filepath.Clean, and leading `/`.
    ("./a", "a", true, "leading ./"),
    ("a//b", "a/b", true, "doubled slash"),
    ("a/../b", "b", true, "dot-dot collapses"),
    ("a/../b", "a", false, "dot-dot collapses, so `a` is not named"),
    ("/a", "a", true, "ignorefile_test: /test2 is test2"),
    (
        "/a/file/here",
        "a/file/here",
        true,
        "ignorefile_test: /a/file/here",
    ),
    ("/", "a", false, "`/` is kept as `/` and matches nothing relative"),
    (".", "a", false, "`.` only ever names `.`"),
    ("../a", "a", false, "leading .. survives cleaning"),
    (
        "docs/",
        "docs/README.md",
        true,
        "TestPatternMatchesFolderWithSlashExclusions (trailing slash)",
    ),
    // Exceptions: last match wins.
    (
        "*.go\n!fileutils.go",
        "fileutils.go",
        false,
        "TestExclusionPatternMatchesPatternAfter",
    ),
    (
        "!fileutils.go\n*.go",
        "fileutils.go",
        true,
        "TestExclusionPatternMatchesPatternBefore",
    ),
    (
        "docs\n!docs/README.md",
        "docs/README.md",
        false,
        "TestPatternMatchesFolderExclusions",
    ),
    (
        "docs/*\n!docs/README.md",
        "docs/README.md",
        false,
        "TestPatternMatchesFolderWildcardExclusions",
    ),
    (
        "dir\n!dir/keep",
        "dir/keep",
        false,
        "re-include a file under an excluded dir",
    ),
    (
        "dir\n!dir/keep",
        "dir/keep/inner",
        false,
        "exception reaches below what it names",
    ),
    ("dir\n!dir/keep", "dir/other", true, "siblings stay excluded"),
    ("dir\n!dir/keep", "dir", true, "the dir itself stays excluded"),
    (
        "dir\n!dir/keep\ndir/keep",
        "dir/keep",
        true,
        "a later exclusion wins again",
    ),
    ("a\n! /a/b", "a/b", false, "ignorefile_test: `! /x` is `!x`"),
    (
        "a/b\n!a",
        "a/b",
        false,
        "an exception naming an ancestor re-includes",
    ),
    (
        "!../../a",
        "a",
        true,
        "moby cleans `!../../a` as one path: it becomes the exclusion `a`",
    ),
    (
        "**\n!util/docker/web",
        "util/docker/web/foo",
        false,
        "multiPatternTests[0]",
    ),
    (
        "**\n!util/docker/web\nutil/docker/web/foo",
        "util/docker/web/foo",
        true,
        "multiPatternTests[1]",
    ),
    (
        "**\n!dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
        "multiPatternTests[3]",
    ),
    // `**`.
    ("**", "file", true, "TestMatches: ** alone"),
    ("**", "dir/file", true, "TestMatches: ** alone, nested"),
    ("**/", "file", true, "TestMatches: **/ cleans to **"),
    ("**/dir", "dir", true, "TestMatches: **/ matches zero dirs"),
    ("**/dir", "x/y/dir", true, "**/ at the start"),
    ("**/dir", "dir/file", true, "TestMatches: **/dir inexact (parent)"),
    ("**/dir", "xdir", false, "**/ needs a segment boundary"),
    ("**/dir2/*", "dir/dir2/file", true, "TestMatches"),
    ("**/dir2/**", "dir/dir2/dir3/file", true, "TestMatches"),
    ("**/**/*.txt", "file.txt", true, "TestMatches"),
    ("**/**/*.txt2", "dir/dir/file.txt", false, "TestMatches"),
    ("**/.foo", "bar.foo", false, "TestMatches: dot is literal"),
    ("dir/**", "dir/file", true, "TestMatches: /** at the end"),
    ("dir/**", "dir/dir2/file", true, "TestMatches"),
    (
        "abc/**",
        "abc",
        false,
        "TestMatches: x/** does not match x itself",
    ),
    ("a/**/b", "a/b", true, "/**/ matches zero dirs"),
    ("a/**/b", "a/x/y/b", true, "/**/ matches several dirs"),
    ("a/**/b", "a/xb", false, "/**/ keeps the segment boundary"),
    ("a**/*.txt", "a/dir/dir/file.txt", true, "TestMatches"),
    (
        "a**b",
        "a/x/b",
        true,
        "** without a slash still spans directories",
    ),
    ("a**b", "axb", false, "...but, being `(.*/)?`, it needs a slash"),
    ("**file", "dir/file", true, "TestMatches: **file"),
    (
        "**file",
        "dir/myfile",
        true,
        "moby tests **file as a bare suffix: it matches mid-segment",
    ),
    ("**/file", "dir/myfile", false, "unlike **/file"),
    (
        "foo**",
        "foobar/x",
        true,
        "trailing ** after a literal is a prefix test",
    ),
    ("a/*.txt**", "a/file.txt", true, "TestMatches"),
    // `*` and `?` stay within a segment; patterns are anchored at the root.
    ("*", "fileutils.go", true, "TestWildcardMatches"),
    ("*", "a/b", true, "matches the parent `a`"),
    ("a*/b", "abc/b", true, "matchTests"),
    ("a*/b", "a/c/b", false, "matchTests: * does not cross /"),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, "matchTests"),
    ("a*b?c*x", "abxbbxdbxebxczzx", true, "matchTests"),
    ("a*", "ab/c", true, "matchTests: parent ab matches"),
    ("a*b", "a/b", false, "matchTests"),
    ("*.go", "b.go", true, "TestPatternMatches"),
    ("*.go", "a/b.go", false, "anchored at the root, unlike .gitignore"),
    ("*/*.go", "a/b.go", true, "one level down needs */"),
    ("abc?def", "abcZdef", true, "TestMatches: ?"),
    ("abc?def", "abcdef", false, "TestMatches: ? needs a character"),
    ("a?b", "a/b", false, "matchTests: ? does not match /"),
    ("a?b", "a☺b", true, "matchTests: ? is one character, not one byte"),
    ("a???b", "a☺b", false, "matchTests"),
    // Character classes.
    ("a[b-d]e", "ace", true, "TestMatches"),
    ("a[b-d]e", "aae", false, "TestMatches"),
    ("a[b-d]e", "ae", false, "TestMatches"),
    ("a[^b-d]e", "aze", true, "TestMatches"),
    ("ab[^c]", "abc", false, "matchTests"),
    ("ab[^e-g]", "abc", true, "matchTests"),
    ("a[^a]b", "a☺b", true, "matchTests"),
    ("[a-ζ]*", "α", true, "matchTests: unicode range"),
    ("*[a-ζ]", "A", false, "matchTests"),
    ("[\\]a]", "]", true, "matchTests: escaped ]"),
    ("[x\\-]", "-", true, "matchTests: escaped -"),
    ("[\\-x]", "a", false, "matchTests"),
    ("[!a]", "!", true, "`!` does not negate in Go"),
    ("[!a]", "b", false, "`!` does not negate in Go"),
    (
        "[[:digit:]]",
        "7",
        true,
        "the class goes to Go's regexp, which knows POSIX classes",
    ),
    (
        "[[:digit:]]",
        ":]",
        false,
        "...so it is not the glob reading `[[:digt]` + `]`",
    ),
    (
        "[*]",
        "]",
        true,
        "`*` inside [] is rewritten too: regexp `[[^/]*]`",
    ),
    ("[*]", "*", false, "`*` inside [] is not a literal star"),
    // Escapes and regexp metacharacters.
    ("a\\*b", "a*b", true, "matchTests: escaped *"),
    ("a\\*b", "ab", false, "matchTests"),
    ("a\\\\", "a\\", true, "TestMatches: escaped backslash"),
    ("a\\?", "a?", true, "escaped ?"),
    ("a\\?", "ab", false, "escaped ?"),
    (".*", ".foo", true, "TestMatches"),
    (".*", "foo", false, "TestMatches: dot is literal"),
    ("abc.def", "abcZdef", false, "TestMatches"),
    ("a(b)c/def", "a(b)c/def", true, "TestMatches"),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", true, "TestMatches"),
    (
        "a+b*",
        "a+bc",
        true,
        "metacharacters stay literal in wildcard patterns",
    ),
    (
        "dist/*.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
        "TestMatches",
    ),
    ("^a", "^a", true, "a literal pattern compares as a string"),
    (
        "^a*",
        "ab",
        true,
        "with a wildcard, moby leaves `^` to the regexp as an anchor",
    ),
    ("^a*", "^ab", false, "...so the caret is not literal"),
    // Excluding a directory excludes what is below it.
    ("a/b", "a/b/c/d", true, "parent match"),
    ("a/b", "a/bc", false, "no partial segment"),
    (
        "**/node_modules",
        "x/node_modules/y/z.js",
        true,
        "parent match through **",
    ),
    ("*.go", ".", false, "the context root is never excluded"),
];

#[test]
fn matching_table() {
    let mut failures = Vec::new();
    for (file, path, want, note) in TABLE {
        match matcher(file) {
            Ok(m) if m.is_excluded(path) == *want => {}
            Ok(_) => failures.push(format!("{file:?} on {path:?}: want excluded={want} ({note})")),
            Err(error) => failures.push(format!("{file:?}: {error} ({note})")),
        }
    }
    assert_none_failed(&failures, TABLE.len());
}

#[test]
fn read_all_like_moby() {
    // ignorefile_test.go's TestReadAll content, minus its bare `!` lines (see bad_patterns).
    let content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n";
    let want = ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path"];
    assert_eq!(
        parse(content, "f").map_err(|e| e.to_string()),
        Ok(want.map(String::from).to_vec())
    );
    assert_eq!(parse("", "f").map_err(|e| e.to_string()), Ok(Vec::new()));
    let matcher = matcher(content).map_err(|e| e.to_string());
    let texts = matcher.map(|m| {
        m.patterns()
            .iter()
            .map(|p| (p.text().to_string(), p.is_exception()))
            .collect()
    });
    let want_texts = vec![
        ("test1".to_string(), false),
        ("test2".to_string(), false),
        ("a/file/here".to_string(), false),
        ("lastfile".to_string(), false),
        ("inverted/abs/path".to_string(), true),
    ];
    assert_eq!(texts, Ok(want_texts));
}

#[test]
fn bad_patterns() {
    // (ignore file, line the error must name, why)
    let rows: &[(&str, usize, &str)] = &[
        ("[", 1, "TestMatchesWithMalformedPatterns"),
        ("ok\n# c\n[^", 3, "matchTests"),
        ("[^bc", 1, "matchTests"),
        ("a[", 1, "matchTests"),
        ("\\", 1, "matchTests: trailing backslash"),
        ("a\\", 1, "trailing backslash"),
        ("[]a]", 1, "matchTests"),
        ("[-]", 1, "matchTests"),
        ("[x-]", 1, "matchTests"),
        ("[-x]", 1, "matchTests"),
        ("[a-b-c]", 1, "matchTests"),
        ("!", 1, "TestSingleExclamationError; ignorefile_test's bare `!`"),
        ("x\n! ", 2, "ignorefile_test's `! `"),
        ("!/", 1, "cleans to a bare `!`"),
        (
            "[Local-Only]/",
            1,
            "moby#52203: valid glob, invalid regexp range l-O (moby fails when matching)",
        ),
        ("[z-a]", 1, "reversed range: Go's regexp refuses it"),
        ("[?[]", 1, "rewritten to an unterminated regexp class"),
        ("a\\d", 1, "would be a Go regexp escape; unsupported"),
    ];
    let mut failures = Vec::new();
    for (file, line, why) in rows {
        match parse(file, "ctx/.dockerignore") {
            Err(IgnoreError::BadPattern {
                file: name,
                line: got,
                ..
            }) if name == "ctx/.dockerignore" && got == *line => {}
            other => failures.push(format!(
                "{file:?}: want BadPattern at line {line}, got {other:?} ({why})"
            )),
        }
        let lines: Vec<String> = file.lines().map(String::from).collect();
        if PatternMatcher::new(&lines).is_ok() {
            failures.push(format!("{file:?}: PatternMatcher::new accepted it ({why})"));
        }
    }
    assert_none_failed(&failures, rows.len());
}

#[test]
fn new_cleans_like_moby() {
    let raw = ["  !docs/README.md  ", "", "a/./b/", "!x/.."].map(String::from);
    let m = PatternMatcher::new(&raw).map_err(|e| e.to_string());
    let texts = m.map(|m| {
        m.patterns()
            .iter()
            .map(|p| (p.text().to_string(), p.is_exception()))
            .collect()
    });
    // TestCleanPatternsLeadingSpaceTrimmed/TrailingSpaceTrimmed, StripEmptyPatterns; `!x/..` cleans to `.`.
    let want = vec![
        ("docs/README.md".to_string(), true),
        ("a/b".to_string(), false),
        (".".to_string(), false),
    ];
    assert_eq!(texts, Ok(want));
}

#[test]
fn skipping_directories() {
    // (ignore file, dir, has_exceptions, can_skip_dir)
    let rows: &[(&str, &str, bool, bool)] = &[
        ("node_modules", "node_modules", false, true),
        ("node_modules", "src", false, false),
        ("node_modules", "node_modules/a", false, true),
        ("node_modules\n!node_modules/keep", "node_modules", true, false),
        (
            "node_modules\n!node_modules/keep",
            "node_modules/other",
            true,
            true,
        ),
        ("node_modules\n!other", "node_modules", true, true),
        ("a\n!ab", "a", true, true),
        ("dir\n!dir/**", "dir", true, false),
        ("dir\n!dir/*", "dir", true, false),
        ("dir\n!dir", "dir", true, false),
        ("dir\n!**/keep", "dir", true, false),
        ("dir\n!*.md", "dir", true, false),
        ("dir\n!other/[ab]", "dir", true, false),
        ("**\n!src", "vendor", true, true),
        ("**\n!src", "src", true, false),
    ];
    let mut failures = Vec::new();
    for (file, dir, exceptions, skip) in rows {
        match matcher(file) {
            Ok(m) if m.has_exceptions() == *exceptions && m.can_skip_dir(dir) == *skip => {}
            Ok(m) => failures.push(format!(
                "{file:?} on {dir:?}: has_exceptions={} can_skip_dir={}, want {exceptions} {skip}",
                m.has_exceptions(),
                m.can_skip_dir(dir)
            )),
            Err(error) => failures.push(format!("{file:?}: {error}")),
        }
    }
    assert_none_failed(&failures, rows.len());
}
