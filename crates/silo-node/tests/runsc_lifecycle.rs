//! Start/destroy against real runsc, checking that nothing leaks.
//!
//! Needs root, runsc, iproute2, a template rootfs and an agent directory:
//!
//! ```sh
//! SILO_TEST_ROOTFS=/path/to/rootfs SILO_TEST_AGENT_DIR=/dir/with/silo-agent \
//!     cargo test -p silo-node --test runsc_lifecycle -- --ignored --test-threads=1
//! ```
//!
//! The agent directory must hold an executable `silo-agent` that serves `GET /health`
//! on the address given by `--listen`.

use std::path::PathBuf;
use std::time::Duration;

use silo_node::{HostUsage, RunscConfig, RunscRuntime, Runtime, RuntimeError, SandboxSpec};
use silo_protocol::ids::SandboxId;

/// Host-wide counts (netns, veths, cgroups) are shared: one test at a time.
static HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    rootfs: PathBuf,
    agent_dir: PathBuf,
    state: tempfile::TempDir,
}

fn env() -> Env {
    let var = |name: &str| {
        PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
            panic!("{name} is not set; see the top of tests/runsc_lifecycle.rs")
        }))
    };
    Env {
        rootfs: var("SILO_TEST_ROOTFS"),
        agent_dir: var("SILO_TEST_AGENT_DIR"),
        state: tempfile::Builder::new()
            .prefix("silo-node-test")
            .tempdir()
            .expect("state tempdir"),
    }
}

fn config(env: &Env, agent_dir: &std::path::Path) -> RunscConfig {
    let mut config = RunscConfig::new(env.state.path(), agent_dir);
    // A pool of its own, apart from a silo that may run on this host.
    config.address_pool = ("10.214.0.0".parse().expect("ip"), 24);
    config.ready_timeout = Duration::from_secs(20);
    config
}

fn runtime(env: &Env, agent_dir: &std::path::Path) -> RunscRuntime {
    RunscRuntime::new(config(env, agent_dir)).expect("runtime")
}

/// Destroys every sandbox of a runtime whose test fails, so a failed assertion leaves no
/// container, mount, netns or veth behind to fail the next test's counts as well.
struct DestroyOnPanic(RunscRuntime);

impl Drop for DestroyOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let rt = self.0.clone();
        // Drop runs on the test's runtime thread, which cannot block on a future itself.
        let cleanup = std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            tokio.block_on(async {
                for id in rt.list().await.unwrap_or_default() {
                    if let Err(e) = rt.destroy(&id).await {
                        eprintln!("cleanup after the failure: destroying {id}: {e}");
                    }
                }
                rt.shutdown().await;
            });
        });
        let _ = cleanup.join();
    }
}

fn spec(env: &Env) -> SandboxSpec {
    SandboxSpec::new(SandboxId::generate(), &env.rootfs)
}

async fn usage(rt: &RunscRuntime) -> HostUsage {
    rt.host_usage().await.expect("host usage")
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn twenty_start_destroy_cycles_leak_nothing() {
    let _host = HOST.lock().await;
    let env = env();
    let rt = runtime(&env, &env.agent_dir);
    let _cleanup = DestroyOnPanic(rt.clone());
    let baseline = usage(&rt).await;
    let mut latencies = Vec::new();
    let mut destroy_times = Vec::new();
    for _ in 0..20 {
        let spec = spec(&env);
        let started = rt.start(&spec).await.expect("start");
        latencies.push(started.ready_after);
        let during = usage(&rt).await;
        assert_eq!(during.containers, baseline.containers + 1);
        assert_eq!(during.netns, baseline.netns + 1);
        assert_eq!(during.veths, baseline.veths + 1);
        assert_eq!(during.address_leases, baseline.address_leases + 1);
        assert_eq!(during.sandbox_dirs, baseline.sandbox_dirs + 1);
        assert!(
            during.runsc_processes > baseline.runsc_processes,
            "{during:?}"
        );
        assert!(during.cgroup_dirs > baseline.cgroup_dirs, "{during:?}");
        let destroy_began = std::time::Instant::now();
        rt.destroy(&spec.id).await.expect("destroy");
        destroy_times.push(destroy_began.elapsed());
        assert_eq!(usage(&rt).await, baseline, "after destroying {}", spec.id);
    }
    for (what, mut times) in [
        ("start until /health", latencies),
        ("destroy", destroy_times),
    ] {
        times.sort();
        eprintln!(
            "{what}: min {:?}, median {:?}, max {:?}",
            times[0], times[10], times[19]
        );
    }
    // No sandbox left: the pool's firewall table goes too.
    rt.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn destroy_after_restart_needs_only_the_id_and_is_idempotent() {
    let _host = HOST.lock().await;
    let env = env();
    let first = runtime(&env, &env.agent_dir);
    let cleanup = DestroyOnPanic(first.clone());
    let baseline = usage(&first).await;
    let spec = spec(&env);
    let started = first.start(&spec).await.expect("start");
    // The guard's clone would keep the first runtime alive past its "restart".
    drop(cleanup);
    drop(first);

    // silo restarted: a new runtime over the same state dir.
    let second = runtime(&env, &env.agent_dir);
    let _cleanup = DestroyOnPanic(second.clone());
    assert_eq!(second.list().await.expect("list"), vec![spec.id.clone()]);
    // A new sandbox must not get the running one's address.
    let other = spec_with_new_id(&spec);
    let other_started = second.start(&other).await.expect("start other");
    assert_ne!(other_started.ip, started.ip);

    second.destroy(&spec.id).await.expect("destroy");
    second.destroy(&spec.id).await.expect("destroy again");
    second.destroy(&other.id).await.expect("destroy other");
    assert!(second.list().await.expect("list").is_empty());
    assert_eq!(usage(&second).await, baseline);
    // No sandbox left: the pool's firewall table goes too.
    second.shutdown().await;
}

fn spec_with_new_id(spec: &SandboxSpec) -> SandboxSpec {
    SandboxSpec {
        id: SandboxId::generate(),
        ..spec.clone()
    }
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn failed_start_undoes_everything() {
    let _host = HOST.lock().await;
    let env = env();
    let empty_agent_dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(&env, empty_agent_dir.path());
    let _cleanup = DestroyOnPanic(rt.clone());
    let baseline = usage(&rt).await;
    let spec = spec(&env);
    let err = rt.start(&spec).await.expect_err("no agent binary");
    assert!(
        matches!(
            err,
            RuntimeError::StartContainer { .. } | RuntimeError::AgentExited { .. }
        ),
        "{err:?}"
    );
    assert_eq!(usage(&rt).await, baseline);
    assert!(rt.list().await.expect("list").is_empty());
    // No sandbox left: the pool's firewall table goes too.
    rt.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn concurrent_starts_get_distinct_addresses() {
    let _host = HOST.lock().await;
    let env = env();
    let rt = runtime(&env, &env.agent_dir);
    let _cleanup = DestroyOnPanic(rt.clone());
    let baseline = usage(&rt).await;
    let specs: Vec<SandboxSpec> = (0..4).map(|_| spec(&env)).collect();
    let results = futures_join(&rt, &specs).await;
    let mut ips: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().expect("start").ip)
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), specs.len());
    for spec in &specs {
        rt.destroy(&spec.id).await.expect("destroy");
    }
    assert_eq!(usage(&rt).await, baseline);
    // No sandbox left: the pool's firewall table goes too.
    rt.shutdown().await;
}

async fn futures_join(
    rt: &RunscRuntime,
    specs: &[SandboxSpec],
) -> Vec<Result<silo_node::Started, RuntimeError>> {
    let handles: Vec<_> = specs
        .iter()
        .map(|spec| {
            let rt = rt.clone();
            let spec = spec.clone();
            tokio::spawn(async move { rt.start(&spec).await })
        })
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("join"));
    }
    results
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn snapshot_starts_copies_and_the_source_runs_on() {
    let _host = HOST.lock().await;
    let env = env();
    let rt = runtime(&env, &env.agent_dir);
    let _cleanup = DestroyOnPanic(rt.clone());
    let baseline = usage(&rt).await;
    let source = spec(&env);
    rt.start(&source).await.expect("start source");
    let image = env.state.path().join("snapshot");
    rt.snapshot(&source.id, &image).await.expect("snapshot");
    assert!(image.is_dir());
    let mut copies = Vec::new();
    for _ in 0..3 {
        let copy = SandboxSpec {
            from_image: Some(image.clone()),
            ..spec_with_new_id(&source)
        };
        let started = rt.start(&copy).await.expect("start from the snapshot");
        copies.push((copy.id, started.ip));
    }
    let mut ips: Vec<_> = copies.iter().map(|(_, ip)| *ip).collect();
    ips.dedup();
    assert_eq!(ips.len(), 3, "each copy has its own address");
    assert!(
        !rt.is_paused(&source.id).await.expect("state"),
        "the source runs on"
    );
    for (id, _) in &copies {
        rt.destroy(id).await.expect("destroy copy");
    }
    rt.destroy(&source.id).await.expect("destroy source");
    std::fs::remove_dir_all(&image).expect("remove image");
    assert_eq!(usage(&rt).await, baseline);
    // No sandbox left: the pool's firewall table goes too.
    rt.shutdown().await;
}

#[tokio::test]
#[ignore = "needs root, runsc, SILO_TEST_ROOTFS and SILO_TEST_AGENT_DIR"]
async fn checkpoint_pause_holds_only_files_and_resumes_on_a_new_address() {
    let _host = HOST.lock().await;
    let env = env();
    let mut config = config(&env, &env.agent_dir);
    config.pause_mode = silo_node::PauseMode::Checkpoint;
    let rt = RunscRuntime::new(config).expect("runtime");
    let _cleanup = DestroyOnPanic(rt.clone());
    let baseline = usage(&rt).await;
    let spec = spec(&env);
    let first = rt.start(&spec).await.expect("start");

    let paused = rt.pause(&spec.id).await.expect("pause");
    assert_eq!(paused, silo_node::Paused::Saved);
    assert!(rt.is_paused(&spec.id).await.expect("state"));
    // Its dir (image, disk) is all a saved sandbox keeps: no process, container,
    // address or network device.
    let saved = usage(&rt).await;
    assert_eq!(saved.containers, baseline.containers, "{saved:?}");
    assert_eq!(saved.runsc_processes, baseline.runsc_processes, "{saved:?}");
    assert_eq!(saved.netns, baseline.netns, "{saved:?}");
    assert_eq!(saved.veths, baseline.veths, "{saved:?}");
    assert_eq!(saved.address_leases, baseline.address_leases, "{saved:?}");
    assert_eq!(saved.sandbox_dirs, baseline.sandbox_dirs + 1, "{saved:?}");

    let policy = silo_node::network::EgressPolicy::default();
    let resumed = rt.resume(&spec.id, &policy).await.expect("resume");
    assert_ne!(resumed.ip, first.ip, "a resumed sandbox gets a new address");
    assert!(!rt.is_paused(&spec.id).await.expect("state"));
    // Paused again and resumed again: the same holds every time.
    assert_eq!(
        rt.pause(&spec.id).await.expect("pause again"),
        silo_node::Paused::Saved
    );
    rt.resume(&spec.id, &policy).await.expect("resume again");

    rt.destroy(&spec.id).await.expect("destroy");
    assert_eq!(usage(&rt).await, baseline);
    rt.shutdown().await;
}
