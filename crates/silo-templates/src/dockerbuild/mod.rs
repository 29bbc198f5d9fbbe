//! Templates built from Dockerfiles, without a Docker engine, cached layer by layer.
//!
//! - FROM names a silo template; its newest build's rootfs is the bottom layer, and
//!   its `template.json` (env, workdir, user) the starting state.
//! - Each step that changes files (RUN, COPY, ADD, WORKDIR) is a layer: an overlayfs
//!   upper directory in `<templates_dir>/.layers/<key>/diff`, built on an overlay of
//!   the layers below it and renamed into place only when complete. The key is a hash
//!   of the key below, the step with its variables substituted and, for COPY and ADD,
//!   the content of what it copies. So an unchanged rebuild runs nothing, a change
//!   rebuilds from the changed step on, and templates sharing steps share layers.
//! - ENV, ARG, USER and LABEL change only the state carried to later steps and into
//!   `template.json`; they make no layer but are part of the keys after them.
//! - The template itself is the layers flattened into `<templates_dir>/<name>/<key>/
//!   rootfs` (sandboxes need one plain directory), published like every build
//!   ([`crate::cache`]): a failed build registers nothing.

mod context;
mod leftovers;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Command;

pub(crate) use context::hex;
pub use context::Context;
pub use leftovers::{remove_dead_builds, Removed};
pub use run::{BuildRunsc, NetworkError, StepNet, StepNetwork, User, DOCKER_DEFAULT_CAPABILITIES};

use crate::base::{BuildError, Progress, Stage, TemplatePath};
use crate::cache::{self, Slot};
use crate::dockerfile::{self, Step};
use crate::inroot;

/// What a template gives the sandboxes made from it, beside its rootfs.
pub const TEMPLATE_CONFIG_FILE: &str = "template.json";

/// A template's defaults for its sandboxes (from ENV, WORKDIR, USER, LABEL, and the
/// build's start and ready commands).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TemplateConfig {
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartCommand>,
}

/// What runs in every sandbox of a template as it starts, and the check that it is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StartCommand {
    /// A shell command, left running.
    pub start_cmd: Option<String>,
    /// A shell command run until it exits 0; the sandbox is ready then.
    pub ready_cmd: Option<String>,
}

impl TemplateConfig {
    /// The config of the build whose rootfs is `rootfs` (the default when it has none).
    pub fn of(rootfs: &Path) -> Result<TemplateConfig, String> {
        let Some(path) = rootfs.parent().map(|b| b.join(TEMPLATE_CONFIG_FILE)) else {
            return Ok(TemplateConfig::default());
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is unreadable: {e}; rebuild the template",
                    path.display()
                )
            }),
            Err(_) => Ok(TemplateConfig::default()),
        }
    }
}

/// A Dockerfile build (the file parsed, or E2B's build steps turned into one).
pub struct DockerfileBuild<'a> {
    pub templates_dir: &'a Path,
    /// The template's name.
    pub name: &'a str,
    pub dockerfile: &'a dockerfile::Dockerfile,
    pub context: &'a Path,
    /// `--build-arg NAME=VALUE`s.
    pub build_args: &'a HashMap<String, String>,
    pub runsc: &'a BuildRunsc,
    /// Where each RUN step gets its network.
    pub network: &'a dyn StepNetwork,
    /// Rebuild from this step (1 = the first) on, whatever is cached.
    pub force_from: Option<usize>,
    pub start: Option<StartCommand>,
    /// The silo template a FROM names (`name`, `name:tag`, an alias), if it is one; a
    /// FROM that names none is pulled as an image when it looks like one.
    pub templates: &'a (dyn Fn(&str) -> Option<TemplatePath> + Sync),
    /// How to reach registries, for a FROM that names an image.
    pub registry: &'a crate::registry::RegistryAccess,
    /// Stops the build: a pull or the running command (a RUN step's container, the
    /// flattening copy) is ended, what the step holds is released as after a failed
    /// one, and the build fails with [`BuildError::Cancelled`].
    pub cancel: &'a tokio_util::sync::CancellationToken,
}

/// A finished build: reused as it was, or complete but not yet visible, so the caller
/// can check it (boot it, run its start and ready commands) before it counts.
pub enum Built {
    Cached(TemplatePath),
    Unpublished(Unpublished),
}

pub struct Unpublished {
    work: cache::Work,
}

impl Unpublished {
    pub fn rootfs(&self) -> &Path {
        &self.work.rootfs
    }

    /// Make the build the template's newest.
    pub async fn publish(self) -> Result<TemplatePath, BuildError> {
        self.work.publish().await
    }

    pub async fn discard(self) {
        self.work.discard().await
    }
}

/// Why a step failed: which one, and what happened.
fn step_error(index: usize, line: usize, text: &str, detail: impl std::fmt::Display) -> BuildError {
    BuildError::Step {
        index,
        line,
        instruction: text.to_owned(),
        detail: detail.to_string(),
    }
}

/// The state carried from step to step.
#[derive(Debug, Clone)]
struct State {
    config: TemplateConfig,
    /// ARGs in scope, with their values.
    args: HashMap<String, String>,
}

impl State {
    /// Variables for substitution: ARGs, then ENV over them (as Docker).
    fn vars(&self) -> HashMap<String, String> {
        let mut vars = self.args.clone();
        vars.extend(self.config.env.clone());
        vars
    }

    fn workdir(&self) -> &str {
        self.config.workdir.as_deref().unwrap_or("/")
    }

    /// An absolute path in the image for `path`, relative ones under the workdir.
    fn absolute(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{}", self.workdir().trim_end_matches('/'), path)
        }
    }
}

/// Build the Dockerfile's template, or reuse what is built.
pub async fn build_dockerfile(
    build: &DockerfileBuild<'_>,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<Built, BuildError> {
    let file = build.dockerfile;
    let context = Context::open(build.context).map_err(BuildError::Context)?;

    let mut global = HashMap::new();
    for arg in &file.global_args {
        if let Some(value) = build.build_args.get(&arg.name).or(arg.default.as_ref()) {
            global.insert(arg.name.clone(), value.clone());
        }
    }
    let from = dockerfile::substitute(&file.from.item, &global);
    let from_error = |detail: String| step_error(0, file.from.line, &file.from.text, detail);
    let parent = match crate::image::parse_layout_ref(&from) {
        Some((dir, tag)) => {
            let layout = context.within(dir).map_err(&from_error)?;
            crate::image::from_layout(build.templates_dir, &layout, tag, &mut progress)
                .await
                .map_err(|e| match e {
                    BuildError::Context(detail) => from_error(detail),
                    other => other,
                })?
        }
        None => match (build.templates)(&from) {
            Some(template) => template,
            // Not a silo template, but named like an image: pull it.
            None if from.contains(['/', ':']) => {
                let image = crate::registry::ImageRef::parse(&from).map_err(&from_error)?;
                progress(Progress::Line(format!("pulling {}", image.name())));
                let layout = build.templates_dir.join(".images/pulled");
                // A pull cut short leaves partial blobs, which the next pull removes.
                tokio::select! {
                    pulled = crate::registry::pull(&image, build.registry, &layout) => {
                        pulled.map_err(&from_error)?
                    }
                    () = build.cancel.cancelled() => return Err(BuildError::Cancelled),
                }
                crate::image::from_layout(
                    build.templates_dir,
                    &layout,
                    Some(&image.name()),
                    &mut progress,
                )
                .await
                .map_err(|e| match e {
                    BuildError::Context(detail) => from_error(detail),
                    other => other,
                })?
            }
            None => {
                return Err(from_error(format!("template {from:?} is not built here: build it first (silo template build -n {from}), or start FROM an image (registry/name:tag, or oci:<dir>[:tag] for an OCI image layout in the build context)")))
            }
        },
    };
    let mut state = State {
        config: TemplateConfig::of(&parent.rootfs).map_err(BuildError::Context)?,
        args: HashMap::new(),
    };
    let layers_dir = build.templates_dir.join(".layers");
    let removed = remove_dead_builds(build.templates_dir, build.runsc).await;
    if !removed.is_empty() {
        tracing::info!(?removed, "removed what dead builds left");
    }
    let mut key = hash_text(&format!("from {from} {}", parent.hash));
    // Layer diffs, lowest first, above the parent's rootfs.
    let mut chain: Vec<PathBuf> = Vec::new();
    let total = file.steps.len();
    for (i, step) in file.steps.iter().enumerate() {
        if build.cancel.is_cancelled() {
            return Err(BuildError::Cancelled);
        }
        let index = i + 1;
        if build.force_from == Some(index) {
            let now = std::time::SystemTime::now();
            key = hash_text(&format!("{key}\nforced at {now:?}"));
        }
        let fail = |detail: String| step_error(index, step.line, &step.text, detail);
        let vars = state.vars();
        let sub = |s: &str| dockerfile::substitute(s, &vars);
        // What the layer depends on: the step as it will run.
        let action = plan(&context, &state, &step.item, &sub).map_err(&fail)?;
        let canonical = match &action {
            Some(action) => action.canonical(&state),
            None => format!("{:?} {:?}", step.item, sorted(&vars)),
        };
        key = hash_text(&format!("{key}\n{canonical}"));
        let layer = layers_dir.join(&key);
        let built_before = action.is_some() && layer.is_dir();
        if built_before {
            // Kept by the cache's prune while builds use it.
            cache::touch(&layer);
        }
        progress(Progress::Stage(Stage::Instruction {
            index,
            total,
            text: step.text.clone(),
            cached: built_before,
        }));
        if let Some(action) = action.as_ref().filter(|_| !built_before) {
            let work = layers_dir.join(format!(".tmp-{key}-{}", std::process::id()));
            let made = async {
                let _ = cache::remove_build_dir(&work).await;
                let overlay = Overlay::mount(&parent.rootfs, &chain, &work).await?;
                let ran = action
                    .run(
                        build,
                        &context,
                        &state,
                        &overlay.merged,
                        &work,
                        &key,
                        &mut progress,
                    )
                    .await;
                overlay.unmount().await;
                ran?;
                let _ = tokio::fs::remove_dir_all(work.join("bundle")).await;
                tokio::fs::rename(&work, &layer)
                    .await
                    .map_err(|source| BuildError::Publish {
                        from: work.clone(),
                        to: layer.clone(),
                        source,
                    })
            }
            .await;
            if let Err(e) = made {
                let _ = cache::remove_build_dir(&work).await;
                return Err(match e {
                    BuildError::Context(detail) | BuildError::Chroot { detail, .. } => fail(detail),
                    other => other,
                });
            }
        }
        if action.is_some() {
            chain.push(layer.join("diff"));
        }
        apply(&mut state, &step.item, build.build_args, &sub);
    }
    state.config.start = build.start.clone();
    key = hash_text(&format!("{key}\nstart {:?}", state.config.start));

    let work = match cache::slot(&build.templates_dir.join(build.name), &key[..16]).await? {
        Slot::Cached(done) => {
            progress(Progress::Stage(Stage::Cached));
            // The newest build is the template's: this one again.
            cache::touch(&done.rootfs);
            return Ok(Built::Cached(done));
        }
        Slot::Build(work) => work,
    };
    progress(Progress::Stage(Stage::Publish));
    let flattened = async {
        let scratch = layers_dir.join(format!(".flatten-{}", std::process::id()));
        let _ = cache::remove_build_dir(&scratch).await;
        let overlay = Overlay::mount(&parent.rootfs, &chain, &scratch).await?;
        let copied = crate::layer::run(
            Command::new("cp")
                .arg("-a")
                .arg(overlay.merged.join("."))
                .arg(&work.rootfs),
            "cp",
            &mut progress,
            build.cancel,
        )
        .await;
        overlay.unmount().await;
        let _ = cache::remove_build_dir(&scratch).await;
        copied?;
        let config = serde_json::to_vec_pretty(&state.config).expect("config serializes");
        let path = work
            .rootfs
            .parent()
            .expect("rootfs has a parent")
            .join(TEMPLATE_CONFIG_FILE);
        tokio::fs::write(&path, config)
            .await
            .map_err(|source| BuildError::Configure { path, source })
    }
    .await;
    if let Err(e) = flattened {
        work.discard().await;
        return Err(e);
    }
    Ok(Built::Unpublished(Unpublished { work }))
}

fn sorted(map: &HashMap<String, String>) -> BTreeMap<&String, &String> {
    map.iter().collect()
}

fn hash_text(text: &str) -> String {
    context::hex(&Sha256::digest(text.as_bytes()))
}

/// Carry a step's effect on the state.
fn apply(
    state: &mut State,
    step: &Step,
    build_args: &HashMap<String, String>,
    sub: &dyn Fn(&str) -> String,
) {
    match step {
        Step::Env(pairs) => {
            for (k, v) in pairs {
                state.config.env.insert(k.clone(), sub(v));
            }
        }
        Step::Arg(arg) => {
            let value = build_args
                .get(&arg.name)
                .cloned()
                .or_else(|| arg.default.as_deref().map(sub));
            state
                .args
                .insert(arg.name.clone(), value.unwrap_or_default());
        }
        Step::Workdir(path) => state.config.workdir = Some(state.absolute(&sub(path))),
        Step::User(user) => state.config.user = Some(sub(user)),
        Step::Label(pairs) => {
            for (k, v) in pairs {
                state.config.labels.insert(sub(k), sub(v));
            }
        }
        Step::Run(_) | Step::RunAs(..) | Step::Copy { .. } => {}
    }
}

/// A step that changes files, with its variables substituted and its sources
/// resolved: what its layer's key covers, and what runs to build the layer.
enum Action<'s> {
    Run {
        command: &'s dockerfile::Command,
        /// Who runs it, when not the current USER.
        user: Option<String>,
    },
    Copy {
        sources: Vec<context::Source>,
        /// Absolute, in the image.
        dest: String,
        chown: Option<String>,
        chmod: Option<&'s str>,
        extract: bool,
        /// Of the sources' paths, modes and bytes.
        content: String,
    },
    /// The absolute directory to create.
    Workdir(String),
}

/// The action of a step that changes files; `None` for one that only changes state.
fn plan<'s>(
    context: &Context,
    state: &State,
    step: &'s Step,
    sub: &dyn Fn(&str) -> String,
) -> Result<Option<Action<'s>>, String> {
    Ok(Some(match step {
        Step::Run(command) => Action::Run {
            command,
            user: None,
        },
        Step::RunAs(command, user) => Action::Run {
            command,
            user: Some(sub(user)),
        },
        Step::Copy {
            sources,
            dest,
            chown,
            chmod,
            extract,
        } => {
            let mut resolved = Vec::new();
            for source in sources {
                resolved.extend(context.resolve(&sub(source))?);
            }
            let content = context.hash(&resolved)?;
            Action::Copy {
                sources: resolved,
                dest: state.absolute(&sub(dest)),
                chown: chown.as_deref().map(sub),
                chmod: chmod.as_deref(),
                extract: *extract,
                content,
            }
        }
        Step::Workdir(path) => Action::Workdir(state.absolute(&sub(path))),
        Step::Env(_) | Step::Arg(_) | Step::User(_) | Step::Label(_) => return Ok(None),
    }))
}

impl Action<'_> {
    /// The text a layer's key hashes: the action and what it runs under.
    fn canonical(&self, state: &State) -> String {
        match self {
            Action::Run { command, user } => format!(
                "run {:?} env {:?} user {:?} workdir {:?} args {:?}",
                command.argv(),
                state.config.env,
                user.as_ref().or(state.config.user.as_ref()),
                state.workdir(),
                sorted(&state.args)
            ),
            Action::Copy {
                sources,
                dest,
                chown,
                chmod,
                extract,
                content,
            } => format!("copy {sources:?} {dest} {chown:?} {chmod:?} {extract} {content}"),
            Action::Workdir(dir) => format!("workdir {dir}"),
        }
    }

    /// Build the layer on `merged`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        build: &DockerfileBuild<'_>,
        context: &Context,
        state: &State,
        merged: &Path,
        work: &Path,
        key: &str,
        progress: &mut (impl FnMut(Progress) + Send),
    ) -> Result<(), BuildError> {
        let user_spec = match self {
            Action::Run {
                user: Some(user), ..
            } => Some(user),
            _ => state.config.user.as_ref(),
        };
        let user = match user_spec {
            Some(spec) => User::resolve(merged, spec).map_err(BuildError::Context)?,
            None => User::ROOT,
        };
        match self {
            Action::Run { command, .. } => {
                let home = if user.home.is_empty() {
                    "/root"
                } else {
                    &user.home
                };
                let mut env: BTreeMap<String, String> = BTreeMap::from([
                    (
                        "PATH".to_owned(),
                        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                    ),
                    ("HOME".to_owned(), home.to_owned()),
                ]);
                env.extend(state.args.clone());
                env.extend(state.config.env.clone());
                let workdir = state.workdir().to_owned();
                Tree {
                    root: merged,
                    owner: None,
                    mode: None,
                }
                .make_dir(Path::new(&workdir))
                .map_err(|e| BuildError::Context(format!("the workdir: {e}")))?;
                run::run_step(
                    build.runsc,
                    build.network,
                    build.cancel,
                    &run::RunSpec {
                        rootfs: merged,
                        bundle_dir: &work.join("bundle"),
                        container_id: &format!("silo-build-{}", &key[..16]),
                        argv: command.argv(),
                        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
                        cwd: &workdir,
                        user: &user,
                    },
                    progress,
                )
                .await
            }
            Action::Copy {
                sources,
                dest,
                chown,
                chmod,
                extract,
                content: _,
            } => {
                let owner = match chown {
                    Some(spec) => User::resolve(merged, spec).map_err(BuildError::Context)?,
                    None => User::ROOT,
                };
                let into_dir =
                    dest.ends_with('/') || sources.len() > 1 || sources.iter().any(|s| s.is_dir);
                let copy = CopyStep {
                    context,
                    tree: Tree {
                        root: merged,
                        owner: Some((owner.uid, owner.gid)),
                        mode: chmod.and_then(|m| u32::from_str_radix(m, 8).ok()),
                    },
                    scratch: &work.join("extracted"),
                };
                copy.sources(sources, Path::new(dest), into_dir, *extract)
                    .map_err(BuildError::Context)
            }
            Action::Workdir(dir) => {
                let tree = Tree {
                    root: merged,
                    owner: Some((user.uid, user.gid)),
                    mode: None,
                };
                tree.make_dir(Path::new(dir))
                    .and_then(|made| tree.own(&made, None))
                    .map_err(BuildError::Context)
            }
        }
    }
}

/// Writes into a layer's tree at paths as the image sees them, each resolved inside the
/// tree ([`inroot`]): the tree's own symlinks (`/var/run -> /run`, or one a step made to
/// `/`) lead where they lead in the sandbox, never out onto the host.
struct Tree<'a> {
    root: &'a Path,
    /// Owner of what is written; `None` keeps the source's (an archive's entries).
    owner: Option<(u32, u32)>,
    /// Mode of what is written; `None` keeps the source's.
    mode: Option<u32>,
}

impl Tree<'_> {
    /// Make the directory `dir` (and its parents), going into an existing one or a
    /// symlink to one; the host path made.
    fn make_dir(&self, dir: &Path) -> Result<PathBuf, String> {
        let path =
            inroot::resolve(self.root, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", dir.display()))?;
        Ok(path)
    }

    /// Give `path` (a host path this layer made) its owner, then its mode: a chown
    /// after the chmod would clear setuid bits.
    fn own(&self, path: &Path, source: Option<&std::fs::Metadata>) -> Result<(), String> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let owner = self
            .owner
            .or_else(|| source.map(|meta| (meta.uid(), meta.gid())));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        let Some(source) = source.filter(|meta| !meta.file_type().is_symlink()) else {
            return Ok(());
        };
        let mode = self.mode.unwrap_or(source.mode() & 0o7777);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))
    }

    /// Copy the host entry `from` (a symlink copied as one) to `to` in the image.
    fn copy(&self, from: &Path, to: &Path) -> Result<(), String> {
        let meta =
            std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            let made = self.make_dir(to)?;
            return self.own(&made, Some(&meta));
        }
        if !kind.is_file() && !kind.is_symlink() {
            return Err(format!(
                "{}: only files, directories and symlinks can be copied into an image",
                to.display()
            ));
        }
        let path = inroot::resolve_parent(self.root, to)
            .map_err(|e| format!("{}: {e}", to.display()))?
            .ok_or_else(|| format!("{}: a file cannot replace /", from.display()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        // Replace, never write through: a symlink already there is not followed.
        match std::fs::symlink_metadata(&path) {
            Ok(old) if !old.is_dir() => {
                std::fs::remove_file(&path).map_err(|e| format!("replace {}: {e}", to.display()))?
            }
            _ => {}
        }
        if kind.is_symlink() {
            let link = std::fs::read_link(from).map_err(|e| format!("{}: {e}", from.display()))?;
            std::os::unix::fs::symlink(link, &path)
                .map_err(|e| format!("{}: {e}", to.display()))?;
        } else {
            std::fs::copy(from, &path)
                .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        }
        self.own(&path, Some(&meta))
    }
}

/// A COPY or ADD of context sources into a layer's tree.
struct CopyStep<'a> {
    context: &'a Context,
    tree: Tree<'a>,
    /// Where an ADD unpacks an archive before its entries go into the layer.
    scratch: &'a Path,
}

impl CopyStep<'_> {
    /// Copy `sources` to `dest` in the image (a directory when `into_dir`); with
    /// `extract`, local archives are unpacked into it.
    fn sources(
        &self,
        sources: &[context::Source],
        dest: &Path,
        into_dir: bool,
        extract: bool,
    ) -> Result<(), String> {
        for source in sources {
            let from = self.context.root.join(&source.path);
            if source.is_dir {
                self.tree.make_dir(dest)?;
                for entry in self.context.under(&source.path) {
                    let relative = entry
                        .strip_prefix(&source.path)
                        .map_err(|e| e.to_string())?;
                    self.tree
                        .copy(&self.context.root.join(entry), &dest.join(relative))?;
                }
                continue;
            }
            let name = source.path.file_name().ok_or("a source without a name")?;
            // A symlink named like an archive is copied as the link: unpacking it would
            // read whatever host file it points at.
            let is_file = from.symlink_metadata().is_ok_and(|m| m.is_file());
            if extract && is_archive(&source.path) && is_file {
                self.tree.make_dir(dest)?;
                let unpacked = self.unpack(&from, dest);
                let _ = std::fs::remove_dir_all(self.scratch);
                unpacked.map_err(|e| format!("extract {}: {e}", source.path.display()))?;
                continue;
            }
            let to = if into_dir {
                dest.join(name)
            } else {
                dest.to_path_buf()
            };
            self.tree.copy(&from, &to)?;
        }
        Ok(())
    }

    /// Unpack `archive` into the scratch directory (tar, as root: owners and modes
    /// kept; nothing there to follow), then copy its entries into `dest` in the image
    /// through the layer, as they are.
    fn unpack(&self, archive: &Path, dest: &Path) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(self.scratch);
        std::fs::create_dir_all(self.scratch)
            .map_err(|e| format!("create {}: {e}", self.scratch.display()))?;
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(self.scratch)
            .status()
            .map_err(|e| format!("run tar: {e}"))?;
        if !status.success() {
            return Err(format!("tar {status}"));
        }
        let as_archived = Tree {
            root: self.tree.root,
            owner: None,
            mode: None,
        };
        for entry in walkdir::WalkDir::new(self.scratch).min_depth(1) {
            let entry = entry.map_err(|e| e.to_string())?;
            let relative = entry
                .path()
                .strip_prefix(self.scratch)
                .map_err(|e| e.to_string())?;
            as_archived.copy(entry.path(), &dest.join(relative))?;
        }
        Ok(())
    }
}

fn is_archive(path: &Path) -> bool {
    let name = path.to_string_lossy();
    [
        ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// An overlay of `chain` (lowest first) over `bottom`, with a fresh upper dir
/// `<work>/diff`, mounted at `<work>/merged`.
struct Overlay {
    merged: PathBuf,
}

impl Overlay {
    async fn mount(bottom: &Path, chain: &[PathBuf], work: &Path) -> Result<Overlay, BuildError> {
        let prepare = |source| BuildError::PrepareDir {
            path: work.to_owned(),
            source,
        };
        for dir in ["diff", "work", "merged"] {
            tokio::fs::create_dir_all(work.join(dir))
                .await
                .map_err(prepare)?;
        }
        let lower: Vec<String> = chain
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .chain(std::iter::once(bottom.display().to_string()))
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            work.join("diff").display(),
            work.join("work").display()
        );
        let merged = work.join("merged");
        crate::layer::mount(&["-t", "overlay", "overlay", "-o", &options], &merged).await?;
        Ok(Overlay { merged })
    }

    async fn unmount(self) {
        let _ = Command::new("umount").arg(&self.merged).status().await;
        let work = self.merged.with_file_name("work");
        let _ = tokio::fs::remove_dir_all(&work).await;
        let _ = tokio::fs::remove_dir(&self.merged).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A tree whose steps made `/h` a symlink to `outside` (a host path) and
    /// `/etc/passwd` one to `outside/passwd`.
    fn hostile_tree(dir: &Path) -> (PathBuf, PathBuf) {
        let (root, outside) = (dir.join("root"), dir.join("outside"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), "host").unwrap();
        symlink(&outside, root.join("h")).unwrap();
        symlink(outside.join("passwd"), root.join("etc/passwd")).unwrap();
        (root, outside)
    }

    #[test]
    fn copies_follow_the_trees_symlinks_inside_it_never_out() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = hostile_tree(dir.path());
        let source = dir.path().join("source");
        std::fs::write(&source, "image").unwrap();
        let tree = Tree {
            root: &root,
            owner: Some((0, 0)),
            mode: None,
        };
        tree.copy(&source, Path::new("/h/passwd")).unwrap();
        tree.copy(&source, Path::new("/etc/passwd")).unwrap();
        tree.make_dir(Path::new("/h/sub")).unwrap();

        assert_eq!(
            std::fs::read_to_string(outside.join("passwd")).unwrap(),
            "host"
        );
        assert!(!outside.join("sub").exists());
        let followed = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read_to_string(followed.join("passwd")).unwrap(),
            "image"
        );
        assert!(followed.join("sub").is_dir());
        let replaced = root.join("etc/passwd");
        assert!(!replaced.symlink_metadata().unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(replaced).unwrap(), "image");
    }

    #[test]
    fn an_archive_is_added_as_archived_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = hostile_tree(dir.path());
        let context_dir = dir.path().join("context");
        std::fs::create_dir_all(&context_dir).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut tool = tar::Header::new_gnu();
        tool.set_size(2);
        tool.set_mode(0o4755);
        tool.set_uid(1000);
        tool.set_gid(1000);
        tool.set_mtime(0);
        tar.append_data(&mut tool, "bin/tool", &b"#!"[..]).unwrap();
        std::fs::write(context_dir.join("app.tar"), tar.into_inner().unwrap()).unwrap();
        let context = Context::open(&context_dir).unwrap();
        let copy = CopyStep {
            context: &context,
            tree: Tree {
                root: &root,
                owner: Some((0, 0)),
                mode: None,
            },
            scratch: &dir.path().join("scratch"),
        };
        let sources = context.resolve("app.tar").unwrap();
        copy.sources(&sources, Path::new("/h/"), true, true)
            .unwrap();

        let tool = root
            .join(outside.strip_prefix("/").unwrap())
            .join("bin/tool");
        let meta = tool.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
        assert!(!outside.join("bin").exists());
        assert!(!dir.path().join("scratch").exists());
    }
}
