//! `silo template build|list|inspect|delete|alias|unalias`: silo's own templates are
//! built here; the rest are client calls to the running server, whose build log streams
//! back onto a progress display.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use silo_client::Client;
use silo_node::builds::BUILT_IN;
use silo_node::sandbox::write_resources;
use silo_protocol::rest::Resources;
use silo_protocol::templates::{BuildRequest, BuildStart};
use silo_templates::{Progress, Stage};

use crate::cli::{TemplateArgs, TemplateCommand};

pub async fn run(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TemplateCommand::Build {
            name,
            tags,
            file,
            context,
            build_args,
            start_cmd,
            ready_cmd,
            no_cache,
            prune,
            resources,
        } => {
            let started = Instant::now();
            if BUILT_IN.contains(&name.as_str()) {
                if !tags.is_empty() {
                    bail!("{name:?} is one of silo's own templates, built on this host without tags; tag a template of yours (FROM {name}) instead");
                }
                if file.is_some() || context.is_some() || start_cmd.is_some() || ready_cmd.is_some()
                {
                    bail!("{name:?} is one of silo's own templates and is built from its recipe; give your Dockerfile template another name (-n)");
                }
                if no_cache || !build_args.is_empty() {
                    bail!("--no-cache and --build-arg are for Dockerfile templates; {name:?} is cached by its recipe (its build dir under {} can be removed to build it again)", args.dirs.template_dir().display());
                }
                let dir = args.dirs.template_dir();
                let built = build_builtin(&dir, &name, prune).await?;
                let given = resources.resources();
                if given != Resources::default() {
                    let now = write_resources(&built.rootfs, &given)?;
                    eprintln!("template defaults: {}", serde_json::to_string(&now)?);
                }
                eprintln!(
                    "template {name} ready in {:.1}s: {}",
                    started.elapsed().as_secs_f64(),
                    built.rootfs.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if prune {
                bail!("--prune is for silo's own templates (-n base, -n code-interpreter); a Dockerfile template's older builds go when no sandbox uses them");
            }
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            let context = context.unwrap_or_else(|| PathBuf::from("."));
            let file = file.unwrap_or_else(|| context.join("Dockerfile"));
            let dockerfile = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "cannot read the Dockerfile {} (give one with -f)",
                    file.display()
                )
            })?;
            // Refuse a bad Dockerfile before uploading anything.
            silo_templates::dockerfile::parse(&dockerfile)
                .with_context(|| format!("{} cannot be built", file.display()))?;
            let given = resources.resources();
            let requested = client
                .request_build(&BuildRequest {
                    name: Some(name.clone()),
                    tags: (!tags.is_empty()).then_some(tags),
                    cpu_count: given.cpu_count,
                    memory_mb: given.memory_mb,
                    disk_size_mb: given.disk_size_mb,
                })
                .await?;
            let context_hash = upload_context(&client, &requested.template_id, &context).await?;
            client
                .start_build(
                    &requested.template_id,
                    &requested.build_id,
                    &BuildStart {
                        force: no_cache,
                        start_cmd,
                        ready_cmd,
                        dockerfile: Some(dockerfile),
                        context_hash: Some(context_hash),
                        build_args: build_args.into_iter().collect(),
                        ..BuildStart::default()
                    },
                )
                .await?;
            follow_build(&client, &requested.template_id, &requested.build_id).await?;
            eprintln!(
                "template {} ready in {:.1}s (build {}, tags {})",
                requested.template_id,
                started.elapsed().as_secs_f64(),
                requested.build_id,
                requested.tags.join(", ")
            );
        }
        TemplateCommand::List => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            println!(
                "{:<24} {:>4} {:>7} {:>7} {:<24} ALIASES",
                "NAME", "CPUS", "MEM MB", "DISK MB", "UPDATED"
            );
            for t in client.templates().await? {
                println!(
                    "{:<24} {:>4} {:>7} {:>7} {:<24} {}",
                    t.template_id,
                    t.cpu_count,
                    t.memory_mb,
                    t.disk_size_mb,
                    t.updated_at,
                    t.aliases.join(",")
                );
            }
        }
        TemplateCommand::Inspect { name } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            let info = client.template(&name).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        TemplateCommand::Delete { name } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            client.delete_template(&name).await?;
            eprintln!("deleted {name}");
        }
        TemplateCommand::Alias { alias, template } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            let target = client.set_alias(&alias, &template).await?;
            eprintln!("{alias} -> {}", target.template_id);
        }
        TemplateCommand::Unalias { alias } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            client.delete_alias(&alias).await?;
            eprintln!("removed alias {alias}");
        }
        TemplateCommand::Tags { name } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            println!("{:<24} {:<38} TAGGED", "TAG", "BUILD");
            for t in client.tags(&name).await? {
                println!("{:<24} {:<38} {}", t.tag, t.build_id, t.created_at);
            }
        }
        TemplateCommand::Tag { target, tags } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            let assigned = client.assign_tags(&target, &tags).await?;
            eprintln!(
                "{} -> build {}",
                assigned.tags.join(", "),
                assigned.build_id
            );
        }
        TemplateCommand::Untag { name, tags } => {
            let client = Client::new(&args.client.api_url, args.client.api_key()?);
            client.remove_tags(&name, &tags).await?;
            eprintln!("removed {} from {name}", tags.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Upload the build context (minus .dockerignore) as one tar named by its hash,
/// unless the server has it; returns the hash.
async fn upload_context(client: &Client, template: &str, dir: &Path) -> anyhow::Result<String> {
    let (file, hash) = context_tar(dir)?;
    let upload = client.file_upload(template, &hash).await?;
    match upload.url.filter(|_| !upload.present) {
        Some(url) => {
            let len = file.metadata()?.len();
            eprintln!(
                "uploading the build context {} ({:.1} MiB)",
                dir.display(),
                len as f64 / (1 << 20) as f64
            );
            client
                .upload(&url, tokio::fs::File::from_std(file), len)
                .await?;
        }
        None => eprintln!("build context {} unchanged: not uploaded", dir.display()),
    }
    Ok(hash)
}

/// The context's files as a tar in a temporary file, and its hash: sorted, with no
/// times or owners in it, so the same files always make the same bytes.
fn context_tar(dir: &Path) -> anyhow::Result<(std::fs::File, String)> {
    use std::io::Seek;
    let context = silo_templates::dockerbuild::Context::open(dir).map_err(anyhow::Error::msg)?;
    let file = tempfile::tempfile().context("cannot create a temporary file for the context")?;
    let mut tar = tar::Builder::new(Hashing {
        inner: file,
        hash: sha2::Sha256::default(),
    });
    tar.follow_symlinks(false);
    for relative in context.entries() {
        let path = context.root.join(relative);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        // Deterministic mode keeps only the executable bit; keep the whole mode.
        header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            tar.append_link(&mut header, relative, target)?;
        } else if meta.is_dir() {
            tar.append_data(&mut header, relative, std::io::empty())?;
        } else {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            tar.append_data(&mut header, relative, file)?;
        }
    }
    let Hashing { mut inner, hash } = tar.into_inner()?;
    inner.rewind()?;
    use sha2::Digest;
    let hex = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((inner, hex))
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hash, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Show the build's log as it grows (steps on the spinner, RUN output as lines) until
/// it ends; an error carries the server's reason.
async fn follow_build(client: &Client, template: &str, build: &str) -> anyhow::Result<()> {
    let display = BuildDisplay::with_output(template, true);
    let mut offset = 0;
    let result = loop {
        let status = match client.build_status(template, build, offset).await {
            Ok(status) => status,
            Err(e) => break Err(anyhow::Error::from(e)),
        };
        offset += status.log_entries.len();
        for entry in &status.log_entries {
            display.log(&entry.level, &entry.message);
        }
        // Finished, and its whole log shown.
        if status.log_entries.is_empty() {
            match status.status.as_str() {
                "ready" => break Ok(()),
                "error" => {
                    let reason = status.reason.map(|r| match r.step {
                        Some(step) => format!("step {step}: {}", r.message),
                        None => r.message,
                    });
                    break Err(anyhow::anyhow!(
                        "build {build} of {template} failed: {}",
                        reason.unwrap_or_else(|| "no reason given".into())
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    display.finish();
    result
}

/// Build `base`, and `code-interpreter` on it.
async fn build_builtin(
    dir: &Path,
    name: &str,
    prune: bool,
) -> anyhow::Result<silo_templates::TemplatePath> {
    let display = BuildDisplay::new("base");
    let base = silo_templates::build_base(dir, |progress| display.show(progress)).await;
    display.finish();
    let base = base?;
    if prune {
        for old in silo_templates::prune_base(dir, &base).await? {
            eprintln!("removed old build {}", old.display());
        }
    }
    if name == "base" {
        return Ok(base);
    }
    let layer = &silo_templates::CODE_INTERPRETER;
    let display = BuildDisplay::new(layer.name);
    let built =
        silo_templates::build_layer(dir, layer, &base, |progress| display.show(progress)).await;
    display.finish();
    Ok(built?)
}

/// A spinner with the stage and the latest output line on a terminal; plain stage
/// lines otherwise (CI logs stay readable).
struct BuildDisplay {
    bar: Option<ProgressBar>,
    template: String,
    /// Print every output line (a Dockerfile's RUN output), not only the latest.
    stream_lines: bool,
}

impl BuildDisplay {
    fn new(template: &str) -> BuildDisplay {
        Self::with_output(template, false)
    }

    fn with_output(template: &str, stream_lines: bool) -> BuildDisplay {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix:.bold} {wide_msg}")
                    .expect("static template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        BuildDisplay {
            bar,
            template: template.to_owned(),
            stream_lines,
        }
    }

    fn show(&self, progress: Progress) {
        match progress {
            Progress::Stage(stage) => {
                let step = match stage {
                    Stage::Cached => "cached: a complete build of this recipe exists".to_owned(),
                    Stage::Debootstrap => "debootstrap (Debian bookworm)".to_owned(),
                    Stage::Configure => "configure (user, sudo, agent mount point)".to_owned(),
                    Stage::CopyParent => "copy the parent template".to_owned(),
                    Stage::Step { index, total } => format!("step {index}/{total}"),
                    Stage::Instruction {
                        index,
                        total,
                        text,
                        cached,
                    } => {
                        let cached = if cached { " (cached)" } else { "" };
                        format!("step {index}/{total}{cached}: {text}")
                    }
                    Stage::Image { reference } => format!("unpack the image {reference}"),
                    Stage::Publish => "publish".to_owned(),
                };
                let label = format!("{}: {step}", self.template);
                match &self.bar {
                    Some(bar) => bar.set_prefix(label),
                    None => eprintln!("{label}"),
                }
            }
            Progress::Line(line) => match (&self.bar, self.stream_lines) {
                (Some(bar), true) => bar.println(format!("  | {line}")),
                (Some(bar), false) => bar.set_message(line),
                (None, true) => eprintln!("  | {line}"),
                (None, false) => {}
            },
        }
    }

    /// A line of a server build's log: a step on the spinner, everything as a line.
    fn log(&self, level: &str, message: &str) {
        let line = match level {
            "error" | "warn" => format!("{level}: {message}"),
            _ => message.to_owned(),
        };
        match &self.bar {
            Some(bar) => {
                if message.starts_with("step ") {
                    bar.set_prefix(format!("{}: {message}", self.template));
                }
                bar.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_context_makes_the_same_tar() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "secret\n").unwrap();
        let (file, first) = context_tar(dir.path()).unwrap();
        let names: Vec<String> = tar::Archive::new(file)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".dockerignore", "a.txt"]);
        // Touching a file changes its time, not the tar.
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        assert_eq!(context_tar(dir.path()).unwrap().1, first);
        std::fs::write(dir.path().join("a.txt"), "b").unwrap();
        assert_ne!(context_tar(dir.path()).unwrap().1, first);
    }
}
