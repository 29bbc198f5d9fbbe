//! `silo template build|ls`: build templates with a progress display, list what is built.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::path::Path;

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
            prune,
            resources,
        } => {
            let layer = match name.as_str() {
                "base" => None,
                "code-interpreter" | "code-interpreter-v1" => {
                    Some(&silo_templates::CODE_INTERPRETER)
                }
                _ => bail!(
                    "unknown template {name:?}: silo builds `base` and `code-interpreter` \
                     (Dockerfile templates are coming)"
                ),
            };
            let started = Instant::now();
            let display = BuildDisplay::new("base");
            let base = silo_templates::build_base(&dir, |progress| display.show(progress)).await;
            display.finish();
            let base = base?;
            if prune {
                for old in silo_templates::prune_base(&dir, &base).await? {
                    eprintln!("removed old build {}", old.display());
                }
            }
            let built = match layer {
                None => base,
                Some(layer) => {
                    let display = BuildDisplay::new(layer.name);
                    let built = silo_templates::build_layer(&dir, layer, &base, |progress| {
                        display.show(progress)
                    })
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
    template: &'static str,
}

impl BuildDisplay {
    fn new(template: &'static str) -> BuildDisplay {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {prefix:.bold} {wide_msg}")
                    .expect("static template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        BuildDisplay { bar, template }
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
                    Stage::Publish => "publish".to_owned(),
                };
                let label = format!("{}: {step}", self.template);
                match &self.bar {
                    Some(bar) => bar.set_prefix(label),
                    None => eprintln!("{label}"),
                }
            }
            Progress::Line(line) => {
                if let Some(bar) = &self.bar {
                    bar.set_message(line);
                }
            }
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
