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
use silo_protocol::rest::{NewSandbox, Resources};

struct Server {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    url: String,
}

impl Server {
    fn start(template_dir: &str, agent: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let data_dir = std::env::temp_dir().join(format!("silo-rust-it-{}", std::process::id()));
        let log_path =
            std::env::temp_dir().join(format!("silo-rust-it-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("log file");
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
            log: log_path,
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
        // Sandboxes outlive their server: a failed assertion must not leave one behind
        // (the next run would meet it at the same address).
        let silo = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_silo"))
                .arg("sandbox")
                .args(args)
                .env("E2B_API_URL", &self.url)
                .env("E2B_API_KEY", self.api_key())
                .output()
        };
        if let Ok(listed) = silo(&["ls"]) {
            let listed = String::from_utf8_lossy(&listed.stdout);
            let ids: Vec<&str> = listed
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .filter(|word| word.parse::<silo_protocol::ids::SandboxId>().is_ok())
                .collect();
            if !ids.is_empty() {
                let _ = silo(&[&["kill"], &ids[..]].concat());
            }
        }
        // SIGTERM lets it finish background teardowns before exiting.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        // The server's log is kept for a failed test to be read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `silo sandbox ARGS` against `server`, with `stdin` as its input.
fn cli(server: &Server, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("sandbox")
        .args(args)
        .env("E2B_API_URL", &server.url)
        .env("E2B_API_KEY", server.api_key())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("silo sandbox");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // Beside the reading of its output; a command may stop reading early.
    let writer = std::thread::spawn(move || drop(input.write_all(&stdin)));
    let out = child.wait_with_output().expect("silo sandbox ran");
    writer.join().expect("stdin writer");
    out
}

/// `silo sandbox exec` options, `cp` both ways (files, stdin and stdout, into a
/// directory, a failure leaving nothing), `pause` and `resume`, on the running sandbox
/// `id`.
fn the_cli_copies_runs_pauses_and_resumes(server: &Server, id: &str) {
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let ran = ok(cli(
        server,
        &[
            "exec",
            "--env",
            "GREETING=hi there",
            "--cwd",
            "/etc",
            "--user",
            "root",
            id,
            "echo \"$GREETING\" $(pwd) $(whoami)",
        ],
        b"",
    ));
    assert_eq!(ran, b"hi there /etc root\n");
    let timed_out = cli(server, &["exec", "--timeout", "1", id, "sleep 30"], b"");
    assert_eq!(timed_out.status.code(), Some(124));
    assert_eq!(
        cli(server, &["exec", id, "exit 3"], b"").status.code(),
        Some(3)
    );

    let local = tempfile::tempdir().expect("temp dir");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let up = local.path().join("up.bin");
    std::fs::write(&up, &data).expect("written");
    let remote = format!("{id}:/tmp/cp/up.bin");
    ok(cli(server, &["cp", up.to_str().unwrap(), &remote], b""));
    ok(cli(
        server,
        &["cp", "-", &format!("{id}:piped.txt")],
        b"from stdin",
    ));
    // Into a directory, keeping the name; and to stdout.
    ok(cli(
        server,
        &["cp", &remote, local.path().join("down").to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        std::fs::read(local.path().join("down")).expect("downloaded"),
        data
    );
    let into_dir = local.path().join("dir");
    std::fs::create_dir(&into_dir).expect("dir");
    ok(cli(
        server,
        &["cp", &remote, into_dir.to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        std::fs::read(into_dir.join("up.bin")).expect("downloaded"),
        data
    );
    let piped = ok(cli(
        server,
        &["cp", &format!("{id}:/home/user/piped.txt"), "-"],
        b"",
    ));
    assert_eq!(piped, b"from stdin");
    // A file that is not there: an error, and no file, whole or partial.
    let target = into_dir.join("missing");
    let missing = cli(
        server,
        &[
            "cp",
            &format!("{id}:/tmp/missing"),
            target.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&into_dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["up.bin"], "a failed copy left a file");
    // Written as the user asked for: its owner.
    ok(cli(
        server,
        &[
            "cp",
            "--user",
            "root",
            "-",
            &format!("{id}:/tmp/cp/root.txt"),
        ],
        b"x",
    ));
    let owners = ok(cli(
        server,
        &["exec", id, "stat -c %U /tmp/cp/root.txt /tmp/cp/up.bin"],
        b"",
    ));
    assert_eq!(owners, b"root\nuser\n");
    let both = cli(server, &["cp", &remote, &remote], b"");
    assert!(String::from_utf8_lossy(&both.stderr).contains("both sides are in a sandbox"));

    // exec -i: stdin passed on, its end too; a command that stops reading early
    // ends as it would under a shell.
    let counted = ok(cli(server, &["exec", "-i", id, "wc -c"], &data));
    assert_eq!(counted, b"3145728\n");
    let head = cli(server, &["exec", "-i", id, "head -c 4; exit 9"], &data);
    assert_eq!(
        (head.status.code(), &head.stdout[..]),
        (Some(9), &data[..4])
    );
    assert_eq!(ok(cli(server, &["exec", id, "wc -c"], b"ignored")), b"0\n");
    // A shell fed from a pipe: what it reads is typed in.
    let shell = cli(
        server,
        &["shell", "--cwd", "/tmp", id],
        b"echo $((6*7)) $PWD $TERM\nexit 5\n",
    );
    assert_eq!(shell.status.code(), Some(5));
    let shown = String::from_utf8_lossy(&shell.stdout);
    assert!(shown.contains("42 /tmp xterm-256color"), "{shown}");
    // On a terminal (script(1) gives it one): raw mode, and the sandbox's terminal has
    // this one's size.
    let on_terminal = Command::new("script")
        .args([
            "-qec",
            &format!(
                "stty cols 100 rows 30; {} sandbox shell {id}",
                env!("CARGO_BIN_EXE_silo")
            ),
            "/dev/null",
        ])
        .env("E2B_API_URL", &server.url)
        .env("E2B_API_KEY", server.api_key())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"echo size $(stty size)\nexit\n")?;
            drop(stdin);
            child.wait_with_output()
        })
        .expect("script");
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(shown.contains("size 30 100"), "{shown}");

    // Created with the CLI's options: its env, a token it needs, a timeout that pauses.
    let created = ok(cli(
        server,
        &[
            "create",
            "--env",
            "X=from create",
            "--secure",
            "--no-internet",
            "--allow-out",
            "10.0.0.5",
            "--on-timeout",
            "pause",
            "--timeout",
            "2",
            "--metadata",
            "by=cli",
        ],
        b"",
    ));
    let other = String::from_utf8(created).expect("utf-8").trim().to_owned();
    assert_eq!(
        ok(cli(server, &["exec", &other, "echo $X"], b"")),
        b"from create\n"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok(cli(server, &["ls", "-q", "--state", "paused"], b""))
        != format!("{other}\n").into_bytes()
    {
        assert!(
            Instant::now() < deadline,
            "--on-timeout pause did not pause it"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(cli(server, &["kill", &other], b""));

    ok(cli(server, &["pause", id], b""));
    let paused = cli(server, &["exec", id, "true"], b"");
    assert!(
        String::from_utf8_lossy(&paused.stderr).contains("silo sandbox resume"),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    ok(cli(server, &["resume", "--timeout", "60", id], b""));
    assert_eq!(
        ok(cli(
            server,
            &["exec", id, "cat /tmp/cp/up.bin | wc -c"],
            b""
        )),
        b"3145728\n"
    );
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
        .create(&NewSandbox {
            template_id: "base".into(),
            timeout: Some(60),
            metadata: Some([("from".to_owned(), "rust".to_owned())].into()),
            resources: Resources {
                cpu_count: Some(1),
                memory_mb: Some(256),
                disk_size_mb: None,
            },
            ..NewSandbox::default()
        })
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
    assert_eq!((detail.cpu_count, detail.memory_mb), (1, 256));
    // runsc shows the sandbox at least 2 CPUs (fewer can break applications' locking);
    // the quota is what holds it to one CPU's time.
    // (This host has cgroup v1 hierarchies, as runsc uses them.)
    let read = |file: &str| {
        let (hierarchy, name) = file.split_once('.').expect("controller.file");
        let path = PathBuf::from("/sys/fs/cgroup")
            .join(hierarchy)
            .join("silo")
            .join(sandbox.sandbox_id.as_str())
            .join(format!("{hierarchy}.{name}"));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    assert_eq!(read("cpu.cfs_quota_us").trim(), "100000");
    assert_eq!(
        read("memory.limit_in_bytes").trim(),
        (256u64 << 20).to_string()
    );
    let too_big = client
        .create(&NewSandbox {
            template_id: "base".into(),
            resources: Resources {
                cpu_count: Some(4096),
                ..Resources::default()
            },
            ..NewSandbox::default()
        })
        .await
        .expect_err("over the maximum");
    assert!(too_big.to_string().contains("cpuCount 4096"), "{too_big}");

    the_cli_copies_runs_pauses_and_resumes(&server, sandbox.sandbox_id.as_str());

    let id = sandbox.sandbox_id.as_str();
    let ids = |args: &[&str]| String::from_utf8(cli(&server, args, b"").stdout).expect("utf-8");
    // Samples come every few seconds: the table, whether or not one came yet.
    let table = ids(&["metrics", id]);
    assert!(table.starts_with("TIME"), "{table}");
    // Listed and killed by metadata.
    assert_eq!(
        ids(&["ls", "-q", "--metadata", "from=rust"]),
        format!("{id}\n")
    );
    assert_eq!(ids(&["ls", "-q", "--metadata", "from=python"]), "");
    assert_eq!(ids(&["ls", "-q", "--state", "paused"]), "");
    let listed: serde_json::Value = serde_json::from_str(&ids(&["ls", "--json"])).expect("JSON");
    assert_eq!(listed[0]["sandboxID"], id, "{listed}");
    let bad_state = cli(&server, &["ls", "--state", "asleep"], b"");
    assert!(String::from_utf8_lossy(&bad_state.stderr).contains("running, paused or killed"));
    assert_eq!(
        ids(&["kill", "--all", "--metadata", "from=rust"]),
        format!("{id}\n")
    );
    assert_eq!(
        ids(&["ls", "-q", "--state", "killed", "--metadata", "from=rust"]),
        format!("{id}\n")
    );
    let gone = cli(&server, &["metrics", id], b"");
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let err = client.kill(&sandbox.sandbox_id).await.unwrap_err();
    assert!(
        matches!(err, silo_client::ClientError::Api { status: 404, .. }),
        "{err}"
    );
}
