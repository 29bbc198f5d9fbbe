//! `silo serve`: wire the catalog, the runtime, the manager and the HTTP edge together,
//! reconcile what a previous run left, then serve until SIGINT, SIGTERM, SIGHUP or SIGQUIT.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use silo_api::AppState;
use silo_catalog::Catalog;
use silo_node::sandbox::{
    DozeMode, DozePolicy, Manager, SamplerConfig, SandboxDefaults, Templates,
};
use silo_node::{RunscConfig, RunscRuntime};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::cli::{Doze, ServeArgs};

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    // Sandboxes cost silo descriptors (runsc's pipes, proxied and relayed connections);
    // the usual soft limit of 1024 would make the API's listener fail for all of them.
    match silo_node::fds::raise_limit() {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit; it stays as it was"),
    }
    let data_dir = &args.dirs.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    // Sandboxes' disks and files live below it: not for other users of the host (the
    // catalog's secrets are kept private by the catalog itself).
    let node_dir = data_dir.join("node");
    std::fs::create_dir_all(&node_dir)
        .and_then(|()| std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("cannot make {} private", node_dir.display()))?;
    let catalog = Arc::new(Catalog::open(&args.dirs.catalog_path())?);
    let keys = catalog.ensure_api_key()?;

    let agent_dir = install_agent(args.agent.as_deref(), data_dir)?;
    let mut runsc = RunscConfig::new(node_dir, agent_dir);
    runsc.runsc = args.runsc.clone();
    runsc.platform = args.platform.clone();
    runsc.pause_mode = match args.pause_mode.as_str() {
        "checkpoint" => silo_node::PauseMode::Checkpoint,
        _ => silo_node::PauseMode::Freeze,
    };
    runsc.address_pool = args.subnet;
    if let Some(resolver) = args.dns_upstream {
        runsc.dns_upstream = resolver;
    }
    let runtime = RunscRuntime::new(runsc).context("cannot set up the gVisor runtime")?;

    let defaults = SandboxDefaults {
        timeout: Duration::from_secs(args.default_timeout),
        max_timeout: Duration::from_secs(args.max_timeout),
        cpu_count: args.cpu_count,
        memory_mb: args.memory_mb,
        disk_size_mb: args.disk_size_mb,
        max_cpu_count: args.max_cpu_count.unwrap_or_else(host_cpus),
        max_memory_mb: args.max_memory_mb.unwrap_or_else(host_memory_mb),
        max_disk_size_mb: args.max_disk_size_mb,
        pids_limit: args.pids_limit,
    };
    let manager = Manager::new(
        catalog,
        Arc::new(runtime.clone()),
        Templates::new(args.dirs.template_dir()),
        defaults,
        silo_protocol::envd::ENVD_VERSION.to_owned(),
        data_dir.join("snapshots"),
    );
    let build_runsc = silo_templates::BuildRunsc {
        binary: args.runsc.clone(),
        platform: args.platform.clone(),
        root: args.dirs.template_dir().join(".runsc"),
    };
    // A template build killed with the previous run left its RUN step's container
    // running, and overlays mounted in its temp dirs. The containers go before
    // reconcile releases their steps' networks (it sees those as leaked sandboxes).
    let removed = silo_templates::remove_dead_builds(&args.dirs.template_dir(), &build_runsc).await;
    if !removed.is_empty() {
        tracing::warn!(
            ?removed,
            "removed what builds the previous run cut short left"
        );
    }
    let report = manager
        .reconcile()
        .await
        .context("cannot reconcile the catalog with running sandboxes")?;
    tracing::info!(?report, "reconciled sandboxes from the previous run");
    let (base, prefix_len) = args.subnet;
    runtime
        .check_address_pool()
        .with_context(|| format!("--subnet {base}/{prefix_len} cannot be used"))?;
    tokio::spawn(Arc::clone(&manager).run_reaper());
    manager
        .set_pool_sizes(args.pools.iter().cloned().collect())
        .context("--pool")?;
    manager.start_pool();
    tokio::spawn(Arc::clone(&manager).run_sampler(SamplerConfig {
        every: Duration::from_secs(args.metrics_interval),
        retention: Duration::from_secs(args.retention_hours.saturating_mul(3600)),
        doze: doze_policy(args.doze, args.doze_after),
    }));
    let builder = silo_node::builds::Builder::new(
        Arc::clone(&manager),
        build_runsc,
        Arc::new(runtime.clone()),
        silo_node::builds::BuildSettings {
            insecure_registries: args.insecure_registries.clone(),
            cache_unused_for: std::time::Duration::from_secs(
                u64::from(args.build_cache_days) * 24 * 3600,
            ),
        },
    )
    .context("cannot set up template builds")?;
    // Builds that sandboxes held until the last stop may be unused now. A stop meanwhile
    // leaves the rest hidden, for the next prune.
    tokio::spawn({
        let builder = Arc::clone(&builder);
        async move { builder.prune_all().await }
    });

    // Streams (command output, code results) are many small writes: without TCP_NODELAY,
    // Nagle and delayed ACKs add tens of milliseconds to each.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another silo running?", args.listen))?
        .tap_io(|tcp| drop(tcp.set_nodelay(true)));
    // MCP sessions hold streams open; ending them at shutdown lets the graceful
    // shutdown finish.
    let mcp_shutdown = tokio_util::sync::CancellationToken::new();
    let idle = Duration::from_secs(args.mcp_idle_timeout);
    let mcp = silo_mcp::http::service(silo_mcp::http::HttpConfig {
        loopback_url: format!("http://{}", loopback(args.listen)),
        session: silo_mcp::Config {
            sandbox_timeout: idle,
            ..silo_mcp::Config::default()
        },
        idle_timeout: idle,
        shutdown: mcp_shutdown.clone(),
    });
    let app = silo_api::router(AppState {
        manager: Arc::clone(&manager),
        builder: Arc::clone(&builder),
        upstreams: silo_api::proxy::Upstreams::default(),
        domain: args.domain.clone(),
        telemetry: Arc::default(),
        mcp: Some(mcp),
    });
    let url = format!("http://{}", args.listen);
    let key = keys
        .first()
        .map(|key| key.expose().to_owned())
        .unwrap_or_default();
    println!("silo is serving on {url}; point the E2B SDK at it with:");
    println!("export E2B_API_URL={url}");
    println!("export E2B_SANDBOX_URL={url}");
    // A log (journald, a file) is no place for the key: shown on a terminal only.
    if std::io::stdout().is_terminal() {
        println!("export E2B_API_KEY={key}");
    } else {
        println!(
            "export E2B_API_KEY=$(silo keys --data-dir {} | head -n 1)",
            data_dir.display()
        );
    }
    tracing::info!(listen = %args.listen, data_dir = %data_dir.display(), "serving");
    let mut signals = stop_signals();
    let stop = {
        let manager = Arc::clone(&manager);
        async move {
            first_of(&mut signals).await;
            // MCP sessions and proxied streams (a command's output, a watch) last until
            // ended: end them, so that their connections close.
            mcp_shutdown.cancel();
            manager.end_traffic();
        }
    };
    let closed = serve_until(listener, app, stop, SHUTDOWN_GRACE)
        .await
        .context("server failed")?;
    if !closed {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open at shutdown were dropped");
    }
    // Builds first: a RUN step's network (lease, netns, firewall rules) is the
    // runtime's, and must be released before the runtime's shutdown, which removes the
    // firewall once no sandbox is left.
    builder.shutdown().await;
    manager.shutdown().await;
    tracing::info!(
        "stopped; sandboxes keep running until their timeout and are picked up at the next start"
    );
    Ok(ExitCode::SUCCESS)
}

/// How long a stopping server waits for its open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve `app` until `stop` resolves, then stop taking connections and wait for the open
/// ones, at most `grace`: a client that keeps one open must not keep the server from its
/// shutdown. Whether they all closed in time.
async fn serve_until<L>(
    listener: L,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<bool>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stopping = tokio_util::sync::CancellationToken::new();
    let graceful = axum::serve(listener, app).with_graceful_shutdown({
        let stopping = stopping.clone();
        async move {
            stop.await;
            stopping.cancel();
        }
    });
    tokio::select! {
        served = std::future::IntoFuture::into_future(graceful) => served.map(|()| true),
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        } => Ok(false),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // rmcp logs every MCP message at info, and at warn each client's probe for a
    // protocol version /mcp does not speak (ADR 0014): noise at the default level.
    let filter =
        EnvFilter::try_from_env("SILO_LOG").unwrap_or_else(|_| EnvFilter::new("info,rmcp=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Watch the signals that stop the server: those its reaper forwards, so SIGHUP (the
/// terminal running it closed) and SIGQUIT shut it down as SIGTERM and Ctrl-C do,
/// instead of killing it before `Manager::shutdown`.
fn stop_signals() -> Vec<Signal> {
    crate::reaper::FORWARDED
        .into_iter()
        .filter_map(|raw| match signal(SignalKind::from_raw(raw)) {
            Ok(watched) => Some(watched),
            Err(err) => {
                tracing::error!(%err, signal = raw, "cannot watch a stop signal: it kills the server without its shutdown");
                None
            }
        })
        .collect()
}

/// The first of `signals` to arrive (never, if none is watched).
async fn first_of(signals: &mut [Signal]) {
    std::future::poll_fn(|cx| {
        if signals.iter_mut().any(|s| s.poll_recv(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Copy the static agent into `<data-dir>/agent/`, the directory every sandbox mounts
/// read-only, so a rebuilt binary elsewhere never changes under running sandboxes
/// (copy to a temp name, then rename over the old one).
fn install_agent(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let source = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name("silo-agent"),
    };
    if !source.is_file() {
        bail!(
            "the sandbox agent {} does not exist: build it (scripts/setup.sh does) or pass --agent",
            source.display()
        );
    }
    let dir = data_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".silo-agent.tmp");
    std::fs::copy(&source, &tmp)
        .with_context(|| format!("cannot copy {} into {}", source.display(), dir.display()))?;
    std::fs::rename(&tmp, dir.join("silo-agent"))
        .with_context(|| format!("cannot install the agent into {}", dir.display()))?;
    Ok(dir)
}

/// Where this server reaches itself: its listen address, or loopback when it listens
/// on every address.
fn loopback(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// MemTotal of /proc/meminfo in MiB (4 GiB if unreadable).
fn host_memory_mb() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            u32::try_from(kib / 1024).ok()
        })
        .unwrap_or(4096)
}

fn doze_policy(doze: Doze, after_secs: u64) -> Option<DozePolicy> {
    let mode = match doze {
        Doze::Empty => DozeMode::Empty,
        Doze::Idle => DozeMode::Idle,
        Doze::Never => return None,
    };
    (after_secs > 0).then(|| DozePolicy {
        after: Duration::from_secs(after_secs),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose one request is answered once `ended` is cancelled (as a proxied
    /// stream ends), with a client waiting for it; `stop` stops the server.
    async fn server_with_a_request_open(
        ended: tokio_util::sync::CancellationToken,
        stop: tokio::sync::oneshot::Receiver<()>,
        grace: Duration,
    ) -> tokio::task::JoinHandle<std::io::Result<bool>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let began = Arc::new(tokio::sync::Notify::new());
        let app = axum::Router::new().route(
            "/",
            axum::routing::get({
                let began = Arc::clone(&began);
                move || async move {
                    began.notify_one();
                    ended.cancelled().await;
                    "end"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_until(
            listener,
            app,
            async move { drop(stop.await) },
            grace,
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: silo\r\n\r\n")
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut answer = Vec::new();
            drop(client.read_to_end(&mut answer).await);
        });
        began.notified().await;
        server
    }

    #[tokio::test]
    async fn a_request_left_open_does_not_hold_the_shutdown() {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let never = tokio_util::sync::CancellationToken::new();
        let grace = Duration::from_millis(200);
        let server = server_with_a_request_open(never, stopped, grace).await;
        let asked = std::time::Instant::now();
        stop.send(()).unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve_until returns after its grace")
            .unwrap()
            .unwrap();
        assert!(!closed);
        assert!(asked.elapsed() >= grace);
    }

    #[tokio::test]
    async fn a_request_ended_at_stop_lets_the_server_close_at_once() {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let ended = tokio_util::sync::CancellationToken::new();
        let server =
            server_with_a_request_open(ended.clone(), stopped, Duration::from_secs(30)).await;
        stop.send(()).unwrap();
        ended.cancel();
        let closed = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("every connection closed")
            .unwrap()
            .unwrap();
        assert!(closed);
    }

    #[tokio::test]
    async fn every_signal_the_reaper_forwards_stops_the_server() {
        let mut signals = stop_signals();
        assert_eq!(signals.len(), crate::reaper::FORWARDED.len());
        for raw in [libc::SIGHUP, libc::SIGQUIT, libc::SIGTERM] {
            // SAFETY: raise has no memory preconditions; each signal is watched above.
            assert_eq!(unsafe { libc::raise(raw) }, 0);
            tokio::time::timeout(Duration::from_secs(5), first_of(&mut signals))
                .await
                .unwrap_or_else(|_| panic!("signal {raw} did not stop the server"));
        }
    }

    #[test]
    fn loopback_reaches_the_listener() {
        let reach = |listen: &str| loopback(listen.parse().unwrap()).to_string();
        assert_eq!(reach("0.0.0.0:3000"), "127.0.0.1:3000");
        assert_eq!(reach("[::]:3000"), "[::1]:3000");
        assert_eq!(reach("10.1.2.3:3000"), "10.1.2.3:3000");
    }

    #[test]
    fn doze_after_zero_or_never_means_no_doze() {
        assert!(doze_policy(Doze::Never, 30).is_none());
        assert!(doze_policy(Doze::Empty, 0).is_none());
        let idle = doze_policy(Doze::Idle, 5).unwrap();
        assert_eq!(
            (idle.after, idle.mode),
            (Duration::from_secs(5), DozeMode::Idle)
        );
    }
}
