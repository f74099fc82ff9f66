//! Which `.dockerignore` a build reads. (The matching itself is tested in `kiln-fsutil`.)

use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::load_for_build;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("kiln-dockerignore-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("build")).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.0.join(name), contents).expect("write temp file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_for_build_precedence() {
    let tmp = TempDir::new("precedence");
    let (context, dockerfile) = (tmp.0.as_path(), tmp.0.join("build/app.Dockerfile"));
    let load = |dockerfile: &Path| load_for_build(context, dockerfile).map_err(|e| e.to_string());
    tmp.write("build/app.Dockerfile", "FROM scratch\n");

    assert_eq!(load(&dockerfile), Ok(vec![]), "no ignore file at all");

    tmp.write(".dockerignore", "# context\n/context-wide\n");
    assert_eq!(
        load(&dockerfile),
        Ok(vec!["context-wide".to_string()]),
        "context .dockerignore"
    );

    tmp.write("build/app.Dockerfile.dockerignore", "specific\n!keep\n");
    let want = vec!["specific".to_string(), "!keep".to_string()];
    assert_eq!(load(&dockerfile), Ok(want), "Dockerfile-specific file wins");
    assert_eq!(
        load(&tmp.0.join("build/other.Dockerfile")),
        Ok(vec!["context-wide".to_string()]),
        "another Dockerfile falls back to the context file"
    );

    tmp.write("build/app.Dockerfile.dockerignore", "");
    assert_eq!(load(&dockerfile), Ok(vec![]), "an empty specific file still wins");

    tmp.write("build/app.Dockerfile.dockerignore", "ok\n[\n");
    let error = load(&dockerfile).expect_err("bad pattern");
    assert!(
        error.contains("app.Dockerfile.dockerignore:2: bad pattern \"[\""),
        "{error}"
    );
}
