//! The PostgreSQL cluster the tests run against (shared with the end-to-end tests
//! in `tests/`, which include this file).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The test cluster's URL (over TLS) and CA file: `VAULT_TEST_POSTGRES` and
/// `VAULT_TEST_POSTGRES_CA` if set, else the cluster `scripts/postgres start`
/// starts (or finds running), once per test process.
pub fn postgres() -> &'static (String, PathBuf) {
    static CLUSTER: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        if let (Ok(url), Ok(ca)) = (
            std::env::var("VAULT_TEST_POSTGRES"),
            std::env::var("VAULT_TEST_POSTGRES_CA"),
        ) {
            return (url, PathBuf::from(ca));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres");
        let run = |arg: &str| {
            let out = Command::new(&script)
                .arg(arg)
                .stderr(Stdio::inherit())
                .output()
                .expect("scripts/postgres runs");
            assert!(out.status.success(), "scripts/postgres {arg} failed");
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_owned()
        };
        let url = run("start");
        let ca = PathBuf::from(run("ca"));
        (format!("{url}?sslmode=require"), ca)
    })
}

/// The schema a test vault in `dir` lives in on PostgreSQL: named after the
/// directory, so that reopening `dir` reopens it.
pub fn schema_for(dir: &Path) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    dir.hash(&mut hasher);
    format!("t{:016x}", hasher.finish())
}
