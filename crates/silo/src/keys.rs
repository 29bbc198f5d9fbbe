//! `silo keys`: the API keys in the catalog (print, create, list, revoke). Servers check
//! keys against the catalog on every request, so changes apply to a running server.

use std::process::ExitCode;

use anyhow::Context;
use silo_catalog::Catalog;

use crate::cli::{KeysArgs, KeysCommand};

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dirs.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.dirs.data_dir.display()))?;
    let catalog = Catalog::open(&args.dirs.catalog_path())?;
    match args.command {
        None => {
            for key in catalog.ensure_api_key()? {
                println!("{}", key.expose());
            }
        }
        Some(KeysCommand::Create) => println!("{}", catalog.create_api_key()?.expose()),
        Some(KeysCommand::Ls) => {
            println!("{:<46} CREATED", "KEY");
            for (key, created_ms) in catalog.api_keys_created()? {
                let created = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(created_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default();
                println!("{:<46} {created}", key.expose());
            }
        }
        Some(KeysCommand::Revoke { key }) => {
            if !catalog.revoke_api_key(&key)? {
                eprintln!("no such key; `silo keys ls` lists them");
                return Ok(ExitCode::FAILURE);
            }
            if catalog.api_keys_created()?.is_empty() {
                eprintln!("that was the last key: create one with `silo keys create` (a restarted server also makes one)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
