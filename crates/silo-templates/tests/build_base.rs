//! Builds the base template for real: needs root, debootstrap and the host's Debian
//! mirror; takes about 90 s.
//!
//! ```sh
//! cargo test -p silo-templates --test build_base -- --ignored --nocapture
//! ```

use silo_templates::{build_base, Progress, Stage};

#[tokio::test]
#[ignore = "needs root, debootstrap and the Debian mirror; ~90 s"]
async fn builds_then_reuses_the_base_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stages = Vec::new();
    let mut lines = 0usize;
    let built = build_base(dir.path(), |p| match p {
        Progress::Stage(s) => stages.push(s),
        Progress::Line(_) => lines += 1,
    })
    .await
    .expect("build");
    assert_eq!(
        stages,
        [Stage::Debootstrap, Stage::Configure, Stage::Publish]
    );
    assert!(lines > 10, "debootstrap output is forwarded");
    let root = &built.rootfs;
    for path in [
        "usr/bin/python3",
        "usr/bin/node",
        "usr/bin/git",
        "usr/bin/sudo",
        "opt/silo",
    ] {
        assert!(root.join(path).exists(), "{path} missing");
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains("user:x:1000:1000::/home/user:/bin/bash"),
        "{passwd}"
    );
    assert!(root.join("home/user").is_dir());
    let sudoers = std::fs::read_to_string(root.join("etc/sudoers.d/user")).expect("sudoers");
    assert!(sudoers.contains("NOPASSWD"));
    // No temp dir left beside the build.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("base"))
        .expect("base dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, [std::ffi::OsString::from(&built.hash)]);

    let mut again = Vec::new();
    let reused = build_base(dir.path(), |p| again.push(p))
        .await
        .expect("reuse");
    assert_eq!(reused, built);
    assert_eq!(again, [Progress::Stage(Stage::Cached)]);
}
