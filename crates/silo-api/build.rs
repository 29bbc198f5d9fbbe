//! Builds the dashboard (web/, with npm) so that src/dashboard.rs can embed it: when
//! web/dist is missing, or its sources are newer. Set SILO_SKIP_WEB_BUILD=1 to use
//! whatever web/dist holds.

use std::path::Path;
use std::process::Command;

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    for watched in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.js",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SILO_SKIP_WEB_BUILD");
    if std::env::var_os("SILO_SKIP_WEB_BUILD").is_some() && web.join("dist/index.html").exists() {
        return;
    }
    if !web.join("node_modules").exists() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&web));
    }
    run(Command::new("npm").args(["run", "build"]).current_dir(&web));
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|err| {
        panic!("cannot run {cmd:?} to build the dashboard: {err}; install Node.js and npm (scripts/setup.sh does)")
    });
    assert!(
        status.success(),
        "{cmd:?} failed ({status}): see its output above"
    );
}
