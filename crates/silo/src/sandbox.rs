//! `silo sandbox ...`: a client of a running server, through silo-client.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use silo_client::{Client, Output, RunOptions};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{
    AutoResume, Egress, LogLevel, NetworkConfig, NewSandbox, Sandbox, SandboxLogEntry, SandboxState,
};

use crate::cli::{OnTimeoutArg, SandboxArgs, SandboxCommand};

pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.api_url, args.client.api_key()?);
    match args.command {
        SandboxCommand::Ls {
            filter,
            quiet,
            json,
        } => {
            let sandboxes = client.list_where(&filter.query()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sandboxes)?);
            } else if quiet {
                for sbx in sandboxes {
                    println!("{}", sbx.sandbox_id);
                }
            } else {
                println!(
                    "{:<22} {:<18} {:<8} {:<26} END",
                    "ID", "TEMPLATE", "STATE", "STARTED"
                );
                for sbx in sandboxes {
                    println!(
                        "{:<22} {:<18} {:<8} {:<26} {}",
                        sbx.sandbox_id,
                        sbx.template_id,
                        sbx.state.as_str(),
                        sbx.started_at,
                        sbx.end_at
                    );
                }
            }
        }
        SandboxCommand::Create {
            template,
            timeout,
            on_timeout,
            auto_resume,
            metadata,
            envs,
            secure,
            no_internet,
            allow_out,
            deny_out,
            resources,
        } => {
            let network = (!allow_out.is_empty() || !deny_out.is_empty()).then(|| NetworkConfig {
                egress: Egress {
                    allow_out: Some(allow_out),
                    deny_out: Some(deny_out),
                    ..Egress::default()
                },
                ..NetworkConfig::default()
            });
            let sbx = client
                .create(&NewSandbox {
                    template_id: template,
                    timeout,
                    metadata: Some(metadata.into_iter().collect()),
                    env_vars: Some(envs.into_iter().collect()),
                    secure: Some(secure),
                    allow_internet_access: Some(!no_internet),
                    auto_pause: Some(on_timeout == OnTimeoutArg::Pause),
                    auto_resume: Some(AutoResume {
                        enabled: auto_resume,
                    }),
                    network,
                    resources: resources.resources(),
                })
                .await?;
            println!("{}", sbx.sandbox_id);
        }
        SandboxCommand::Exec {
            id,
            command,
            process,
            interactive,
            timeout,
        } => {
            let sandbox = running(&client, &parse_id(&id)?).await?;
            let options = process.options(timeout.map(std::time::Duration::from_secs));
            let command = command.join(" ");
            let started = std::time::Instant::now();
            let code = if interactive {
                exec_with_stdin(&client, &sandbox, &command, &options).await?
            } else {
                client
                    .run_with(&sandbox, &command, &options, print_output)
                    .await?
            };
            let timed_out = options
                .limit
                .is_some_and(|limit| started.elapsed() >= limit);
            return Ok(ExitCode::from(exit_status(code, timed_out)));
        }
        SandboxCommand::Shell { id, process } => {
            let sandbox = running(&client, &parse_id(&id)?).await?;
            let options = process.options(None);
            let code = crate::shell::attach(&client, &sandbox, &options).await?;
            return Ok(ExitCode::from(exit_status(code, false)));
        }
        SandboxCommand::Cp {
            source,
            destination,
            user,
        } => copy(&client, &source, &destination, user.as_deref()).await?,
        SandboxCommand::Pause { ids } => {
            for id in ids {
                client.pause(&parse_id(&id)?).await?;
                println!("{id}");
            }
        }
        SandboxCommand::Resume { ids, timeout } => {
            for id in ids {
                client.connect(&parse_id(&id)?, timeout).await?;
                println!("{id}");
            }
        }
        SandboxCommand::Metrics { id, follow } => metrics(&client, &parse_id(&id)?, follow).await?,
        SandboxCommand::Logs { id, follow } => logs(&client, &parse_id(&id)?, follow).await?,
        SandboxCommand::Kill { ids, all, filter } => {
            let ids: Vec<SandboxId> = if all {
                let listed = client.list_where(&filter.query()).await?;
                listed.into_iter().map(|sbx| sbx.sandbox_id).collect()
            } else {
                ids.iter()
                    .map(|id| parse_id(id))
                    .collect::<anyhow::Result<_>>()?
            };
            for id in ids {
                client.kill(&id).await?;
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What talking to sandbox `id` takes (its envd token), without resuming it if paused.
async fn running(client: &Client, id: &SandboxId) -> anyhow::Result<Sandbox> {
    let detail = client.get(id).await?;
    if detail.state == SandboxState::Paused {
        anyhow::bail!("sandbox {id} is paused: `silo sandbox resume {id}` first");
    }
    Ok(Sandbox {
        template_id: detail.template_id,
        sandbox_id: detail.sandbox_id,
        client_id: detail.client_id,
        envd_version: detail.envd_version,
        alias: None,
        envd_access_token: detail.envd_access_token,
        traffic_access_token: None,
        domain: None,
    })
}

/// A command's output, straight through: a closed stdout is not worth an error.
fn print_output(out: Output) {
    let _ = match out {
        Output::Stdout(bytes) => std::io::stdout().write_all(&bytes),
        Output::Stderr(bytes) => std::io::stderr().write_all(&bytes),
    };
}

/// Run `command` with this process's stdin as its own, closed when it ends; its exit
/// code.
async fn exec_with_stdin(
    client: &Client,
    sandbox: &Sandbox,
    command: &str,
    options: &RunOptions,
) -> anyhow::Result<i32> {
    let (started, pid) = tokio::sync::oneshot::channel();
    let run = client.run_with_stdin(
        sandbox,
        command,
        options,
        |pid| {
            let _ = started.send(pid);
        },
        print_output,
    );
    // A write that fails means the command is gone, or soon reads no more (it ended,
    // or closed its stdin, as `head` does): its exit says what happened, as a shell's
    // pipe would. So the feed never ends the wait by itself.
    let feed = async {
        if let Ok(pid) = pid.await {
            let mut input = crate::shell::read_stdin();
            let mut fed = true;
            while let Some(chunk) = input.recv().await {
                fed = client.send_stdin(sandbox, pid, &chunk).await.is_ok();
                if !fed {
                    break;
                }
            }
            if fed {
                let _ = client.close_stdin(sandbox, pid).await;
            }
        }
        std::future::pending::<std::convert::Infallible>().await
    };
    tokio::select! {
        code = run => Ok(code?),
        never = feed => match never {},
    }
}

/// This process's exit status for a command that ended with `code` (-1: killed by a
/// signal), as a shell gives it: 124 for one `timeout` killed, 128 + 9 for one killed
/// otherwise (envd does not say which signal).
fn exit_status(code: i32, timed_out: bool) -> u8 {
    match u8::try_from(code) {
        Ok(code) => code,
        Err(_) if timed_out => 124,
        Err(_) => 137,
    }
}

/// One side of `silo sandbox cp`.
#[derive(Debug, PartialEq, Eq)]
enum Place<'a> {
    Sandbox { id: SandboxId, path: &'a str },
    Local(&'a Path),
    Std,
}

impl<'a> Place<'a> {
    /// `ID:PATH` names a path in a sandbox, `-` stdin or stdout, anything else a local
    /// path (`./a:b` for a local file with a colon in its name).
    fn parse(arg: &'a str) -> anyhow::Result<Place<'a>> {
        if arg == "-" {
            return Ok(Place::Std);
        }
        match arg.split_once(':') {
            Some((id, path)) if !id.contains('/') => {
                let id = parse_id(id)?;
                anyhow::ensure!(
                    !path.is_empty(),
                    "{arg:?} names no path in the sandbox: write {id}:PATH"
                );
                Ok(Place::Sandbox { id, path })
            }
            _ => Ok(Place::Local(Path::new(arg))),
        }
    }
}

/// `silo sandbox cp`: one file into or out of a sandbox, streamed both ways.
async fn copy(
    client: &Client,
    source: &str,
    destination: &str,
    user: Option<&str>,
) -> anyhow::Result<()> {
    match (Place::parse(source)?, Place::parse(destination)?) {
        (Place::Sandbox { .. }, Place::Sandbox { .. }) => anyhow::bail!(
            "both sides are in a sandbox: copy through a local file, or with `silo sandbox exec ID cp ...`"
        ),
        (Place::Sandbox { id, path }, to) => {
            let sandbox = running(client, &id).await?;
            match to {
                Place::Local(local) => download(client, &sandbox, path, user, local).await?,
                _ => {
                    let mut stdout = tokio::io::stdout();
                    client
                        .download_file(&sandbox, path, user, &mut stdout)
                        .await?;
                }
            }
        }
        (from, Place::Sandbox { id, path }) => {
            let sandbox = running(client, &id).await?;
            match from {
                Place::Local(local) => {
                    let file = tokio::fs::File::open(local)
                        .await
                        .with_context(|| format!("cannot read {}", local.display()))?;
                    if file.metadata().await?.is_dir() {
                        anyhow::bail!(
                            "{} is a directory: cp copies one file (pack a directory: `tar czf - DIR | silo sandbox cp - ID:/tmp/dir.tgz`)",
                            local.display()
                        );
                    }
                    client.upload_file(&sandbox, path, user, file).await?
                }
                _ => {
                    client
                        .upload_file(&sandbox, path, user, tokio::io::stdin())
                        .await?
                }
            };
        }
        _ => anyhow::bail!(
            "neither side is in a sandbox: name one as ID:PATH (see `silo sandbox ls`)"
        ),
    }
    Ok(())
}

/// Download `path` to `local` (into it, keeping the name, when it is a directory)
/// through a temporary file beside it, renamed into place once complete: a failed copy
/// leaves no partial file and the old one as it was.
async fn download(
    client: &Client,
    sandbox: &Sandbox,
    path: &str,
    user: Option<&str>,
    local: &Path,
) -> anyhow::Result<()> {
    let target = if local.is_dir() {
        let name = Path::new(path)
            .file_name()
            .with_context(|| format!("{path:?} names no file to copy"))?;
        local.join(name)
    } else {
        local.to_owned()
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let partial = tempfile::Builder::new()
        .prefix(".silo-cp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut file = tokio::fs::File::from_std(partial.reopen()?);
    client.download_file(sandbox, path, user, &mut file).await?;
    file.sync_all().await?;
    partial
        .persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

/// Print the samples kept, then (following) each new one, until the sandbox is gone.
async fn metrics(client: &Client, id: &SandboxId, follow: bool) -> anyhow::Result<()> {
    println!(
        "{:<26} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "TIME", "CPU %", "MEM USED", "MEM TOTAL", "DISK USED", "DISK TOTAL"
    );
    let mut after = None;
    loop {
        let samples = match client.metrics(id, after.map(|t: i64| t + 1)).await {
            // Killed while followed: its samples end there.
            Err(err) if after.is_some() && err.status() == Some(404) => return Ok(()),
            result => result?,
        };
        for sample in samples {
            println!(
                "{:<26} {:>6.1} {:>10} {:>10} {:>10} {:>10}",
                sample.timestamp,
                sample.cpu_used_pct,
                mebibytes(sample.mem_used),
                mebibytes(sample.mem_total),
                mebibytes(sample.disk_used),
                mebibytes(sample.disk_total)
            );
            after = Some(sample.timestamp_unix);
        }
        if !follow {
            return Ok(());
        }
        // The first follow round marks the start, so that a sandbox with no sample yet
        // is not read whole again.
        after.get_or_insert_with(|| chrono::Utc::now().timestamp() - 1);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Entries the server sends per page unless asked otherwise.
const PAGE: usize = 1000;
/// How often `logs --follow` asks again.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Print the log from the start, then (following) what comes, until the log shows
/// the sandbox killed.
async fn logs(client: &Client, id: &SandboxId, follow: bool) -> anyhow::Result<()> {
    let mut cursor = None;
    // The entries already printed at the cursor's millisecond: the next page starts
    // there again (the cursor includes its own time).
    let mut printed_at_cursor: Vec<SandboxLogEntry> = Vec::new();
    let mut killed = false;
    loop {
        let page = client.logs(id, cursor).await?;
        let mut new_entries = 0;
        for entry in &page.logs {
            if printed_at_cursor.contains(entry) {
                continue;
            }
            new_entries += 1;
            killed |= entry.fields.get("state").is_some_and(|s| s == "killed");
            println!(
                "{} {:<5} {}",
                entry.timestamp,
                level(entry.level),
                entry.message
            );
            let at = timestamp_ms(&entry.timestamp);
            if at != cursor {
                cursor = at;
                printed_at_cursor.clear();
            }
            printed_at_cursor.push(entry.clone());
        }
        if page.logs.len() >= PAGE {
            if new_entries == 0 {
                // A whole page within one millisecond: step past it.
                cursor = cursor.map(|c| c + 1);
            }
            continue;
        }
        if !follow || killed {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

fn level(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

fn timestamp_ms(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn parse_id(id: &str) -> anyhow::Result<SandboxId> {
    id.parse()
        .with_context(|| format!("{id:?} is not a sandbox id (see `silo sandbox ls`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_arguments_name_a_sandbox_path_stdio_or_a_local_path() {
        let id = SandboxId::generate();
        let remote = format!("{id}:/tmp/a:b");
        assert_eq!(
            Place::parse(&remote).unwrap(),
            Place::Sandbox {
                id: id.clone(),
                path: "/tmp/a:b"
            }
        );
        assert_eq!(Place::parse("-").unwrap(), Place::Std);
        for local in ["out.csv", "./a:b", "/tmp/x:y", "dir/"] {
            assert_eq!(Place::parse(local).unwrap(), Place::Local(Path::new(local)));
        }
        let no_path = Place::parse(&format!("{id}:")).unwrap_err().to_string();
        assert!(no_path.contains("names no path"), "{no_path}");
        let not_an_id = Place::parse("a:b").unwrap_err().to_string();
        assert!(not_an_id.contains("is not a sandbox id"), "{not_an_id}");
    }

    #[test]
    fn a_command_killed_by_a_signal_exits_as_under_a_shell() {
        assert_eq!(exit_status(0, false), 0);
        assert_eq!(exit_status(7, true), 7);
        assert_eq!(exit_status(-1, true), 124);
        assert_eq!(exit_status(-1, false), 137);
    }
}
