//! `silo template build|ls`: build templates with a progress display, list what is built.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use silo_node::sandbox::{resources_of, RESOURCES_FILE};
use silo_protocol::rest::Resources;
use silo_templates::{Progress, Stage};

use crate::cli::{TemplateArgs, TemplateCommand};

pub async fn run(args: TemplateArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dirs.template_dir();
    match args.command {
        TemplateCommand::Build {
            name,
            file,
            context,
            build_args,
            runsc,
            platform,
            prune,
            resources,
        } => {
            let started = Instant::now();
            let built = match name.as_str() {
                "base" | "code-interpreter" | "code-interpreter-v1" => {
                    if file.is_some() || context.is_some() {
                        bail!("{name:?} is one of silo's own templates and is built from its recipe; give your Dockerfile template another name (-n)");
                    }
                    build_builtin(&dir, &name, prune).await?
                }
                _ => {
                    let context = context.unwrap_or_else(|| PathBuf::from("."));
                    let file = file.unwrap_or_else(|| context.join("Dockerfile"));
                    let dockerfile = std::fs::read_to_string(&file).with_context(|| {
                        format!(
                            "cannot read the Dockerfile {} (give one with -f)",
                            file.display()
                        )
                    })?;
                    let build_args = build_args
                        .iter()
                        .map(|pair| {
                            pair.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .with_context(|| format!("--build-arg {pair:?} is not NAME=VALUE"))
                        })
                        .collect::<anyhow::Result<HashMap<_, _>>>()?;
                    let runsc = silo_templates::BuildRunsc {
                        binary: runsc,
                        platform,
                        root: dir.join(".runsc"),
                    };
                    let display = BuildDisplay::with_output(&name, true);
                    let built = silo_templates::build_dockerfile(
                        &silo_templates::DockerfileBuild {
                            templates_dir: &dir,
                            name: &name,
                            dockerfile: &dockerfile,
                            context: &context,
                            build_args: &build_args,
                            runsc: &runsc,
                        },
                        |progress| display.show(progress),
                    )
                    .await;
                    display.finish();
                    built?
                }
            };
            let resources = resources.resources();
            if resources != Resources::default() {
                write_resources(&built.rootfs, &resources)?;
            }
            eprintln!(
                "template {name} ready in {:.1}s: {}",
                started.elapsed().as_secs_f64(),
                built.rootfs.display()
            );
        }
        TemplateCommand::Ls => {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|entry| entry.path().is_dir())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect();
            names.sort();
            for name in names {
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

/// Set the build's default resources: those given replace the ones written before.
fn write_resources(rootfs: &Path, given: &Resources) -> anyhow::Result<()> {
    let resources = given.or(resources_of(rootfs)?);
    let build = rootfs
        .parent()
        .context("a template rootfs has a build directory")?;
    let path = build.join(RESOURCES_FILE);
    let tmp = build.join(format!(".{RESOURCES_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&resources)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("template defaults: {}", serde_json::to_string(&resources)?);
    Ok(())
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
    fn resources_given_replace_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("base/h/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let memory = Resources {
            memory_mb: Some(384),
            ..Resources::default()
        };
        write_resources(&rootfs, &memory).unwrap();
        let cpus = Resources {
            cpu_count: Some(1),
            ..Resources::default()
        };
        write_resources(&rootfs, &cpus).unwrap();
        let read = resources_of(&rootfs).unwrap();
        assert_eq!((read.cpu_count, read.memory_mb), (Some(1), Some(384)));
    }
}
