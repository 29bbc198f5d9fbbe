//! `silo serve` for real (gVisor, the base template) driven by silo's own Rust client.
//!
//! Needs root, runsc and a built base template: scripts/test.sh provides them and sets
//! SILO_TEST_TEMPLATE_DIR and SILO_AGENT_BIN. Without SILO_TEST_TEMPLATE_DIR the test says so and
//! does nothing (plain `cargo test` on a machine without silo set up).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use silo_client::{Client, Output};

struct Server {
    child: Child,
    data_dir: PathBuf,
    url: String,
}

impl Server {
    fn start(template_dir: &str, agent: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let data_dir = std::env::temp_dir().join(format!("silo-rust-it-{}", std::process::id()));
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("silo-rust-it-{}.log", std::process::id())),
        )
        .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_silo"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--template-dir", template_dir, "--agent", agent])
            // Beside the e2e suites' ranges, so the suites may share a machine.
            .args(["--subnet", "10.215.0.0/16"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start silo serve");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "silo serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            data_dir,
            url,
        }
    }

    fn api_key(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_silo"))
            .arg("keys")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("silo keys");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .split_whitespace()
            .next()
            .expect("a key")
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets it finish background teardowns before exiting.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_run_and_kill_with_the_rust_client() {
    let Ok(template_dir) = std::env::var("SILO_TEST_TEMPLATE_DIR") else {
        eprintln!(
            "SILO_TEST_TEMPLATE_DIR is not set: run scripts/test.sh for the end-to-end tests"
        );
        return;
    };
    let agent = std::env::var("SILO_AGENT_BIN").expect("SILO_AGENT_BIN names the static agent");
    let server = Server::start(&template_dir, &agent);
    let client = Client::new(&server.url, &server.api_key());

    let sandbox = client
        .create(
            "base",
            Some(60),
            [("from".to_owned(), "rust".to_owned())].into(),
        )
        .await
        .expect("create");
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let code = client
        .run(
            &sandbox,
            "echo out; echo err >&2; exit 7",
            |out| match out {
                Output::Stdout(bytes) => stdout.extend(bytes),
                Output::Stderr(bytes) => stderr.extend(bytes),
            },
        )
        .await
        .expect("run");
    assert_eq!(
        (code, &stdout[..], &stderr[..]),
        (7, &b"out\n"[..], &b"err\n"[..])
    );

    let listed = client.list().await.expect("list");
    assert!(listed.iter().any(|s| s.sandbox_id == sandbox.sandbox_id));
    let detail = client.get(&sandbox.sandbox_id).await.expect("get");
    assert_eq!(detail.metadata["from"], "rust");

    client.kill(&sandbox.sandbox_id).await.expect("kill");
    let err = client.kill(&sandbox.sandbox_id).await.unwrap_err();
    assert!(
        matches!(err, silo_client::ClientError::Api { status: 404, .. }),
        "{err}"
    );
}
