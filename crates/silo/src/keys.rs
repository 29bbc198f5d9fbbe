//! `silo keys`: print the API keys, creating the first on a fresh data dir.

use anyhow::Context;
use silo_catalog::Catalog;

use crate::cli::KeysArgs;

pub fn run(args: KeysArgs) -> anyhow::Result<std::process::ExitCode> {
    std::fs::create_dir_all(&args.dirs.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.dirs.data_dir.display()))?;
    let catalog = Catalog::open(&args.dirs.catalog_path())?;
    for key in catalog.ensure_api_key()? {
        println!("{}", key.expose());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
