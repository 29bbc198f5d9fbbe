//! `silo sandbox ...`: a client of a running server, through silo-client.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use silo_client::{Client, Output};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::{LogLevel, NewSandbox, SandboxLogEntry};

use crate::cli::{SandboxArgs, SandboxCommand};

pub async fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.client.api_url, args.client.api_key()?);
    match args.command {
        SandboxCommand::Ls => {
            let sandboxes = client.list().await?;
            println!(
                "{:<22} {:<18} {:<8} {:<26} END",
                "ID", "TEMPLATE", "STATE", "STARTED"
            );
            for sbx in sandboxes {
                println!(
                    "{:<22} {:<18} {:<8} {:<26} {}",
                    sbx.sandbox_id,
                    sbx.template_id,
                    format!("{:?}", sbx.state).to_lowercase(),
                    sbx.started_at,
                    sbx.end_at
                );
            }
        }
        SandboxCommand::Create {
            template,
            timeout,
            metadata,
            resources,
        } => {
            let sbx = client
                .create(&NewSandbox {
                    template_id: template,
                    timeout,
                    metadata: Some(metadata.into_iter().collect()),
                    resources: resources.resources(),
                    ..NewSandbox::default()
                })
                .await?;
            println!("{}", sbx.sandbox_id);
        }
        SandboxCommand::Exec { id, command } => {
            let id = parse_id(&id)?;
            let detail = client.get(&id).await?;
            let sandbox = silo_protocol::rest::Sandbox {
                template_id: detail.template_id,
                sandbox_id: detail.sandbox_id,
                client_id: detail.client_id,
                envd_version: detail.envd_version,
                alias: None,
                envd_access_token: detail.envd_access_token,
                traffic_access_token: None,
                domain: None,
            };
            let code = client
                .run(&sandbox, &command.join(" "), |out| {
                    // Output goes straight through; a closed stdout is not worth an error.
                    let _ = match out {
                        Output::Stdout(bytes) => std::io::stdout().write_all(&bytes),
                        Output::Stderr(bytes) => std::io::stderr().write_all(&bytes),
                    };
                })
                .await?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        SandboxCommand::Logs { id, follow } => logs(&client, &parse_id(&id)?, follow).await?,
        SandboxCommand::Kill { ids } => {
            for id in ids {
                client.kill(&parse_id(&id)?).await?;
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
