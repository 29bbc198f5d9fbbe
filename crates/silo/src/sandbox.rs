//! `silo sandbox ...`: a client of a running server, through silo-client.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use silo_client::{Client, Output};
use silo_protocol::ids::SandboxId;
use silo_protocol::rest::NewSandbox;

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
        SandboxCommand::Kill { ids } => {
            for id in ids {
                client.kill(&parse_id(&id)?).await?;
                println!("{id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_id(id: &str) -> anyhow::Result<SandboxId> {
    id.parse()
        .with_context(|| format!("{id:?} is not a sandbox id (see `silo sandbox ls`)"))
}
