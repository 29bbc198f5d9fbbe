//! Serves the interpreter on a local port with the kernels found on this host, for the
//! integration tests and for trying the SDK by hand:
//!
//! ```text
//! cargo run -p silo-interpreter --example serve -- 127.0.0.1:49999 [KERNELSPEC_DIR…]
//! ```
//!
//! Without directories, the standard ones are searched. Kernels run as the current user, in
//! the current directory; `SILO_TEST_GLOBAL_ENVS=K=V,K2=V2` fakes envd's global env vars.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::serve::ListenerExt;
use silo_interpreter::{kernelspec, Config, Interpreter, Language};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:49999".into());
    let mut dirs: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if dirs.is_empty() {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        dirs = kernelspec::default_dirs(home.as_ref());
    }
    let specs = kernelspec::discover(&dirs);
    let names: Vec<String> = specs
        .values()
        .map(|s| format!("{} ({})", s.name, s.language))
        .collect();
    tracing::info!(kernels = ?names, "kernelspecs found");

    let mut config = Config::new(specs);
    config.default_cwd = std::env::current_dir()?;
    config.path = std::env::var("PATH").unwrap_or(config.path);
    config.autostart = vec![Language::Python];
    let globals: BTreeMap<String, String> = std::env::var("SILO_TEST_GLOBAL_ENVS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.global_envs = Arc::new(move || globals.clone());

    let interpreter = Interpreter::new(config);
    tokio::spawn(interpreter.clone().start_default_kernels());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    // Without TCP_NODELAY every small streamed line waits out Nagle + delayed ACK (~40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "TCP_NODELAY");
        }
    });
    let app = silo_interpreter::router(interpreter.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    interpreter.shutdown().await;
    Ok(())
}
