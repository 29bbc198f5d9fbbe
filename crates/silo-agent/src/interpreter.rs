//! The code interpreter (`e2b-code-interpreter`'s `/execute` and `/contexts`) on port
//! 49999, served by silo-interpreter when the template installed Jupyter kernels. A
//! template without kernels simply has no interpreter: the port stays closed, which the
//! SDK reports as "port is not open".

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::serve::ListenerExt;
use silo_interpreter::{kernelspec, Config, Interpreter, KernelUser, Language};

use crate::state::AppState;

/// The interpreter with its port bound, to be served; `None` when the template has no
/// kernels. Bound before the agent answers its health check, so a sandbox is never
/// handed out with port 49999 still closed (a client's first `run_code` would fail).
pub struct Bound {
    listener: tokio::net::TcpListener,
    interpreter: Interpreter,
}

/// Find the template's kernels, start the default ones (in the background) and bind
/// the interpreter's port.
pub async fn bind(
    state: AppState,
    listen: SocketAddr,
    user_name: String,
) -> std::io::Result<Option<Bound>> {
    let users = state.user_db.load();
    let user = match users.lookup(&user_name) {
        Ok(user) => user,
        Err(err) => {
            tracing::info!(user = %user_name, error = %err, "no interpreter user; code interpreter off");
            state.kernels_settled.send_replace(true);
            return Ok(None);
        }
    };
    let kernels = kernelspec::discover(&kernelspec::default_dirs(&user.home));
    if kernels.is_empty() {
        tracing::info!("no Jupyter kernels in this template; code interpreter off");
        state.kernels_settled.send_replace(true);
        return Ok(None);
    }
    let mut config = Config::new(kernels);
    config.path = kernel_path(&config);
    config.default_cwd = user.home.clone();
    config.user = Some(KernelUser {
        groups: users.group_ids(&user),
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        home: user.home,
    });
    let envs_from = state.clone();
    config.global_envs = Arc::new(move || envs_from.settings().env_vars);

    let interpreter = Interpreter::new(config);
    tracing::info!(
        listen = %listen,
        languages = ?interpreter.config().kernels.keys().collect::<Vec<_>>(),
        "code interpreter serving"
    );
    let starting = interpreter.clone();
    tokio::spawn(async move {
        starting.start_default_kernels().await;
        state.kernels_settled.send_replace(true);
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    Ok(Some(Bound {
        listener,
        interpreter,
    }))
}

/// Serve the interpreter until the process ends.
pub async fn serve(bound: Bound) -> std::io::Result<()> {
    // Each output line is a small write: without TCP_NODELAY, Nagle and delayed ACKs add
    // ~40 ms to every execution.
    let listener = bound.listener.tap_io(|tcp| drop(tcp.set_nodelay(true)));
    axum::serve(listener, silo_interpreter::router(bound.interpreter)).await
}

/// The kernels' PATH: the Python kernel's own bin dir first (a venv), so `!pip install`
/// and `python` in a shell cell use the same environment as the kernel.
fn kernel_path(config: &Config) -> String {
    let venv_bin = config
        .kernels
        .get(&Language::Python)
        .and_then(|spec| spec.argv.first())
        .map(Path::new)
        .filter(|program| program.is_absolute())
        .and_then(Path::parent);
    match venv_bin {
        Some(bin) => format!("{}:{}", bin.display(), config.path),
        None => config.path.clone(),
    }
}
