//! Template builds run by the server: E2B's build API and `silo template build` both
//! come here.
//!
//! 1. [`Builder::request`]: a build id, recorded `waiting`, with the resources asked for.
//! 2. Files arrive by content hash ([`Builder::has_upload`], [`Builder::store_upload`]):
//!    tars (gzipped or not) kept in `<templates>/.uploads/<hash>`, so an unchanged
//!    context is never sent twice.
//! 3. [`Builder::start`]: the steps (E2B's, or a Dockerfile) are checked at once (a bad
//!    step is a 400, not a failed build later), then built in the background, one build
//!    at a time: the uploads unpacked into a context dir, the layers built
//!    ([`silo_templates::build_dockerfile`]), then, if the template has a start command,
//!    a sandbox booted from the unpublished build must pass its ready command
//!    ([`Manager::trial`]). Only then is the build published; a failure registers
//!    nothing. Every stage, and RUN output up to a cap (`build_log`), goes to the
//!    build's log in the catalog; logs of builds behind the template's current one are
//!    pruned as builds end.
//! 4. [`Builder::status`]: status, reason and the log from an offset.
//!
//! A build may be asked for as `name:tag` and with more `tags`; once it is ready, those
//! tags and `default` name it (in the catalog, with its recipe hash: its directory).
//!
//! [`Builder::shutdown`] (the server stopping) cancels the builds under way and those
//! waiting: a running step is ended and what it holds released as after a failed one,
//! and each build is failed as [`INTERRUPTED`] before the server exits.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use silo_catalog::{
    BuildLogEntry, BuildRecord, BuildStatus, CatalogError, SandboxState, TagRecord, DEFAULT_TAG,
};
use silo_protocol::rest::Resources;
use silo_protocol::templates::{BuildRequest, BuildStart};
use silo_templates::dockerfile::{self, Dockerfile};
use silo_templates::registry::RegistryAccess;
use silo_templates::{BuildRunsc, Built, Progress, Stage, StartCommand, StepNetwork};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::build_log::BuildLog;
use crate::sandbox::{check_tag, write_resources, Manager, SandboxError, TemplateRef};

/// The largest upload taken (one COPY's files, or a whole build context).
pub const MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// Log entries per status answer, as E2B's API pages them.
pub const LOG_PAGE: u64 = 100;
/// Why a build failed that the server stopped in the middle of: at a graceful stop
/// ([`Builder::shutdown`]), or at the next start for a server that was killed (what
/// that left on the host is removed then, `silo_templates::remove_dead_builds`).
pub const INTERRUPTED: &str = "interrupted: the server stopped during the build; start it again";
/// silo's own templates, built on the host by `silo template build -n
/// base|code-interpreter` (setup does it), not through the API.
pub const BUILT_IN: &[&str] = &["base", "code-interpreter", "code-interpreter-v1"];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("upload is larger than {MAX_UPLOAD_BYTES} bytes")]
    TooLarge,
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl From<CatalogError> for TemplateError {
    fn from(err: CatalogError) -> Self {
        TemplateError::Sandbox(err.into())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TemplateError {
    let context = context.into();
    move |source| TemplateError::Io { context, source }
}

/// What a requested build was asked for until it starts.
struct Requested {
    template: String,
    resources: Resources,
    /// The tags it takes when it is ready, besides `default`.
    tags: Vec<String>,
}

/// A build recorded and waiting for its files and steps.
pub struct NewBuild {
    pub build: BuildRecord,
    /// The tags that will name it once it is ready, `default` last.
    pub tags: Vec<String>,
}

/// A build's status and the page of its log asked for.
pub struct BuildReport {
    pub build: BuildRecord,
    pub log: Vec<BuildLogEntry>,
}

/// How the builder builds and what it keeps (`silo serve`'s flags).
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Registries spoken to over plain http (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// How long the build cache (layers, unpacked images, uploaded contexts) keeps
    /// what no build used (`--build-cache-days`).
    pub cache_unused_for: std::time::Duration,
}

/// `--build-cache-days` unless given.
pub const DEFAULT_CACHE_DAYS: u32 = 7;

impl Default for BuildSettings {
    fn default() -> BuildSettings {
        BuildSettings {
            insecure_registries: Vec::new(),
            cache_unused_for: std::time::Duration::from_secs(
                u64::from(DEFAULT_CACHE_DAYS) * 24 * 3600,
            ),
        }
    }
}

pub struct Builder {
    manager: Arc<Manager>,
    dir: PathBuf,
    runsc: BuildRunsc,
    /// Each RUN step's network: a sandbox's with the default rules (`crate::step_network`).
    network: Arc<dyn StepNetwork>,
    settings: BuildSettings,
    requested: Mutex<HashMap<String, Requested>>,
    /// Upload URLs handed out and not used yet: token → files hash. The SDK uploads to
    /// the URL without its API key (E2B's are presigned), so the URL carries the right.
    upload_tokens: Mutex<HashMap<String, String>>,
    /// Held while an upload is looked up (and marked used) or pruned: one found is not
    /// removed before the build that wants it.
    uploads_gate: Mutex<()>,
    /// One build at a time: builds share the layer store's scratch names, and each
    /// wants the host's cores.
    running: tokio::sync::Mutex<()>,
    /// Cancelled by [`Builder::shutdown`]: every build stops.
    stopping: CancellationToken,
    /// The started builds, for [`Builder::shutdown`] to wait for.
    builds: TaskTracker,
}

impl Builder {
    /// The builder of the templates in `manager`'s template dir; builds that a previous
    /// run left unfinished are failed, and their contexts removed (the rest of what they
    /// left is `silo_templates::remove_dead_builds`' to remove).
    pub fn new(
        manager: Arc<Manager>,
        runsc: BuildRunsc,
        network: Arc<dyn StepNetwork>,
        settings: BuildSettings,
    ) -> Result<Arc<Builder>, TemplateError> {
        let dir = manager.templates().dir().to_owned();
        let failed = manager.catalog().fail_unfinished_builds(INTERRUPTED)?;
        if !failed.is_empty() {
            tracing::warn!(
                builds = ?failed,
                "builds left unfinished by the previous run were failed"
            );
        }
        manager.catalog().prune_build_logs()?;
        let _ = std::fs::remove_dir_all(dir.join(".contexts"));
        if let Ok(entries) = std::fs::read_dir(dir.join(".uploads")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Arc::new(Builder {
            manager,
            dir,
            runsc,
            network,
            settings,
            requested: Mutex::default(),
            upload_tokens: Mutex::default(),
            uploads_gate: Mutex::default(),
            running: tokio::sync::Mutex::new(()),
            stopping: CancellationToken::new(),
            builds: TaskTracker::new(),
        }))
    }

    fn requested(&self) -> std::sync::MutexGuard<'_, HashMap<String, Requested>> {
        self.requested.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a new build of the template `req.name` (`name` or `name:tag`), to be
    /// tagged with that tag and `req.tags` once ready.
    pub fn request(&self, req: &BuildRequest) -> Result<NewBuild, TemplateError> {
        let named = TemplateRef::parse(req.name.as_deref().unwrap_or_default())?;
        let name = self.manager.templates().canonical(named.name)?;
        let given: Vec<String> = named
            .tag
            .map(str::to_owned)
            .into_iter()
            .chain(req.tags.iter().flatten().cloned())
            .collect();
        let mut tags = if given.is_empty() {
            Vec::new()
        } else {
            checked_tags(&given)?
        };
        // It takes `default` anyway, last.
        tags.retain(|t| t != DEFAULT_TAG);
        if BUILT_IN.contains(&name) {
            return Err(TemplateError::Invalid(format!(
                "{name:?} is one of silo's own templates (built by `silo template build -n {name}`); give yours another name, and start it FROM {name}"
            )));
        }
        let build = self
            .manager
            .catalog()
            .insert_build(&uuid::Uuid::new_v4().to_string(), name)?;
        self.requested().insert(
            build.id.clone(),
            Requested {
                template: name.to_owned(),
                resources: Resources {
                    cpu_count: req.cpu_count,
                    memory_mb: req.memory_mb,
                    disk_size_mb: req.disk_size_mb,
                },
                tags: tags.clone(),
            },
        );
        tags.push(DEFAULT_TAG.to_owned());
        Ok(NewBuild { build, tags })
    }

    fn upload_path(&self, hash: &str) -> Result<PathBuf, TemplateError> {
        let valid = (8..=128).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(TemplateError::Invalid(format!(
                "files hash {hash:?} is not a hex digest"
            )));
        }
        Ok(self.dir.join(".uploads").join(hash.to_ascii_lowercase()))
    }

    /// Whether the files with this hash were uploaded before (then kept for the build
    /// that wants them).
    pub fn has_upload(&self, template: &str, hash: &str) -> Result<bool, TemplateError> {
        self.manager.templates().canonical(template)?;
        let path = self.upload_path(hash)?;
        let _gate = self.uploads_gate.lock().unwrap_or_else(|p| p.into_inner());
        let present = path.is_file();
        if present {
            silo_templates::touch(&path);
        }
        Ok(present)
    }

    /// A one-time token for uploading the files with `hash` (see [`Builder::upload`]).
    pub fn upload_token(&self, hash: &str) -> Result<String, TemplateError> {
        self.upload_path(hash)?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut tokens = self.upload_tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Tokens never used are dropped in bulk rather than tracked by age.
        if tokens.len() >= 10_000 {
            tokens.clear();
        }
        tokens.insert(token.clone(), hash.to_owned());
        Ok(token)
    }

    /// Keep the upload a token was handed out for.
    pub async fn upload(
        &self,
        token: &str,
        body: impl AsyncRead + Unpin,
    ) -> Result<(), TemplateError> {
        let hash = self
            .upload_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token)
            .ok_or_else(|| {
                TemplateError::NotFound(
                    "this upload URL is unknown or used: ask GET /templates/{id}/files/{hash} for a new one".into(),
                )
            })?;
        self.store_upload(&hash, body).await
    }

    /// Keep an uploaded tar under its hash (written whole, then renamed into place).
    async fn store_upload(
        &self,
        hash: &str,
        body: impl AsyncRead + Unpin,
    ) -> Result<(), TemplateError> {
        let path = self.upload_path(hash)?;
        let dir = path.parent().expect("uploads have a dir");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io(format!("create {}", dir.display())))?;
        let tmp = dir.join(format!(".{hash}-{}", uuid::Uuid::new_v4()));
        let written = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(io("create the upload file"))?;
            let mut limited = tokio::io::AsyncReadExt::take(body, MAX_UPLOAD_BYTES + 1);
            let size = tokio::io::copy(&mut limited, &mut file)
                .await
                .map_err(io("receive the upload"))?;
            if size > MAX_UPLOAD_BYTES {
                return Err(TemplateError::TooLarge);
            }
            file.flush().await.map_err(io("write the upload"))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(io("keep the upload"))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Check what to build, then build it in the background.
    pub fn start(
        self: &Arc<Self>,
        template: &str,
        build_id: &str,
        start: BuildStart,
    ) -> Result<(), TemplateError> {
        let catalog = self.manager.catalog();
        let build = catalog
            .build(build_id)?
            .filter(|b| b.template == template)
            .ok_or_else(|| {
                TemplateError::NotFound(format!(
                    "build {build_id} of template {template:?} was not found; request one with POST /v3/templates"
                ))
            })?;
        let requested = self.requested().remove(build_id);
        let Some(requested) = requested.filter(|_| build.status == BuildStatus::Waiting) else {
            return Err(TemplateError::Conflict(format!(
                "build {build_id} is {}: it can be started once",
                build.status.as_str()
            )));
        };
        let plan = match self.plan(&start) {
            Ok(plan) => plan,
            Err(err) => {
                let reason = err.to_string();
                catalog
                    .append_build_logs(build_id, &[BuildLogEntry::now("error", reason.clone())])?;
                catalog.set_build_status(build_id, BuildStatus::Error, Some(&reason), None)?;
                return Err(err);
            }
        };
        let builder = Arc::clone(self);
        let build_id = build_id.to_owned();
        self.builds.spawn(async move {
            builder.run(&build_id, requested, plan).await;
        });
        Ok(())
    }

    /// Stop the builds under way and those waiting for their turn, and wait until each
    /// has released what it held and is recorded as failed with [`INTERRUPTED`]. A
    /// build checking its sandbox ([`Manager::trial`]) stops waiting for the ready
    /// command, and the sandbox is killed.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        self.builds.close();
        self.builds.wait().await;
        // Builds requested and never started are left: nothing will start them now.
        match self.manager.catalog().fail_unfinished_builds(INTERRUPTED) {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => tracing::info!(builds = ?failed, "builds never started were failed"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot fail the builds never started; the next start does")
            }
        }
    }

    /// The Dockerfile to build and the uploads it copies from, or why it cannot be built.
    fn plan(&self, start: &BuildStart) -> Result<Plan, TemplateError> {
        let invalid = |e: dockerfile::ParseError| TemplateError::Invalid(e.to_string());
        let (dockerfile, mut uploads) = match &start.dockerfile {
            Some(text) => (
                dockerfile::parse(text).map_err(invalid)?,
                start.context_hash.iter().cloned().collect::<Vec<_>>(),
            ),
            None => (
                silo_templates::steps::to_dockerfile(start).map_err(invalid)?,
                start
                    .steps
                    .iter()
                    .filter_map(|s| s.files_hash.clone())
                    .collect(),
            ),
        };
        uploads.dedup();
        for hash in &uploads {
            if !self.upload_path(hash)?.is_file() {
                return Err(TemplateError::Invalid(format!(
                    "the files with hash {hash} were not uploaded: PUT them to the url GET /templates/{{id}}/files/{hash} gives"
                )));
            }
        }
        let force_from = if start.force {
            Some(1)
        } else {
            start.steps.iter().position(|s| s.force).map(|i| i + 1)
        };
        let credentials = match &start.from_image_registry {
            None => None,
            Some(c) if c.kind == "registry" => c.username.clone().zip(c.password.clone()),
            Some(c) => {
                return Err(TemplateError::Invalid(format!(
                    "registry credentials of type {:?} are not supported by silo: give a username and password (type \"registry\")",
                    c.kind
                )))
            }
        };
        let command = StartCommand {
            start_cmd: start.start_cmd.clone().filter(|c| !c.trim().is_empty()),
            ready_cmd: start.ready_cmd.clone().filter(|c| !c.trim().is_empty()),
        };
        Ok(Plan {
            dockerfile,
            uploads,
            build_args: start.build_args.clone().into_iter().collect(),
            force_from,
            start: (command != StartCommand::default()).then_some(command),
            registry: RegistryAccess {
                insecure: self.settings.insecure_registries.clone(),
                credentials,
            },
        })
    }

    async fn run(&self, build_id: &str, requested: Requested, plan: Plan) {
        let log = {
            let manager = Arc::clone(&self.manager);
            let build_id = build_id.to_owned();
            BuildLog::start(move |lines| {
                if let Err(e) = manager.catalog().append_build_logs(&build_id, lines) {
                    tracing::warn!(build_id, error = %e, "cannot write the build log");
                }
            })
        };
        let _turn = match self.running.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                log.line(
                    "info",
                    "waiting for the build before this one to finish".into(),
                );
                tokio::select! {
                    turn = self.running.lock() => turn,
                    () = self.stopping.cancelled() => {
                        log.line("error", INTERRUPTED.into());
                        let failed = Outcome::Failed {
                            reason: INTERRUPTED.into(),
                            step: None,
                        };
                        self.end(build_id, log, failed).await;
                        return;
                    }
                }
            }
        };
        let catalog = self.manager.catalog();
        let _ = catalog.set_build_status(build_id, BuildStatus::Building, None, None);
        let template = &requested.template;
        log.line("info", format!("building template {template} ({build_id})"));
        let started = std::time::Instant::now();
        let failed_step = Mutex::new(None::<String>);
        let result = self
            .build(build_id, &requested, &plan, &|progress| match progress {
                Progress::Stage(Stage::Instruction {
                    index,
                    total,
                    text,
                    cached,
                }) => {
                    *failed_step.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(index.to_string());
                    let cached = if cached { " (cached)" } else { "" };
                    log.line("info", format!("step {index}/{total}{cached}: {text}"));
                }
                Progress::Stage(Stage::Publish) => {
                    *failed_step.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some("finalize".into());
                    log.line("info", "flattening the layers into the template".into());
                }
                Progress::Stage(Stage::Image { reference }) => {
                    log.line("info", format!("unpacking the image {reference}"));
                }
                Progress::Stage(Stage::Cached) => {
                    log.line("info", "this exact template is built already".into());
                }
                Progress::Stage(_) => {}
                Progress::Line(line) => log.output(line),
            })
            .await;
        let outcome = match result {
            Ok(hash) => {
                log.line(
                    "info",
                    format!(
                        "template {template} is ready ({:.1}s)",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Outcome::Ready {
                    hash,
                    tags: requested.tags,
                }
            }
            Err(err) => {
                let reason = match &err {
                    BuildFailure::Build(silo_templates::BuildError::Cancelled)
                    | BuildFailure::Trial(SandboxError::Interrupted) => INTERRUPTED.to_owned(),
                    _ => crate::error_chain(&err),
                };
                log.line("error", reason.clone());
                let step = match &err {
                    // Step 0 is FROM: E2B calls it "base".
                    BuildFailure::Build(silo_templates::BuildError::Step { index: 0, .. }) => {
                        Some("base".to_owned())
                    }
                    BuildFailure::Build(silo_templates::BuildError::Step { index, .. }) => {
                        Some(index.to_string())
                    }
                    BuildFailure::Trial(_) => Some("finalize".to_owned()),
                    _ => failed_step
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                };
                Outcome::Failed { reason, step }
            }
        };
        self.end(build_id, log, outcome).await;
        // Still this build's turn: no other build reads what is pruned here.
        self.prune(template).await;
        self.prune_cache().await;
    }

    /// Remove what the build cache has not used for `--build-cache-days`: layers and
    /// unpacked images (`silo_templates::prune_cache`), and uploaded contexts; during a
    /// build's turn.
    async fn prune_cache(&self) {
        let unused_for = self.settings.cache_unused_for;
        let mut removed = silo_templates::prune_cache(&self.dir, unused_for).await;
        removed.extend(self.prune_uploads(unused_for));
        if !removed.is_empty() {
            tracing::info!(
                ?removed,
                days = unused_for.as_secs() / (24 * 3600),
                "removed build cache entries no build used for days"
            );
        }
    }

    fn prune_uploads(&self, unused_for: std::time::Duration) -> Vec<PathBuf> {
        let _gate = self.uploads_gate.lock().unwrap_or_else(|p| p.into_inner());
        let unused = silo_templates::unused_entries(&self.dir.join(".uploads"), unused_for);
        let mut removed = Vec::new();
        for upload in unused {
            match std::fs::remove_file(&upload) {
                Ok(()) => removed.push(upload),
                Err(e) => {
                    tracing::warn!(path = %upload.display(), error = %e, "cannot remove an unused upload");
                }
            }
        }
        removed
    }

    /// Remove the builds of `template` nothing needs any more ([`Templates::prune`]),
    /// during a build's turn.
    ///
    /// [`Templates::prune`]: crate::sandbox::Templates::prune
    async fn prune(&self, template: &str) {
        let pruned = self
            .manager
            .templates()
            .prune(self.manager.catalog(), template);
        let pruned = match pruned {
            Ok(pruned) => pruned,
            Err(e) => {
                tracing::warn!(template, error = %e, "cannot prune the template's unused builds");
                return;
            }
        };
        for build in pruned {
            match silo_templates::remove_build_dir(&build).await {
                Ok(()) => {
                    tracing::info!(template, build = %build.display(), "removed an unused build")
                }
                Err(e) => {
                    tracing::warn!(template, build = %build.display(), error = %e, "cannot remove an unused build")
                }
            }
        }
    }

    /// [`Builder::prune`] every template but silo's own (pruned by `silo template build
    /// --prune`): what sandboxes or tags held until the server stopped; and the cache.
    pub async fn prune_all(&self) {
        let _turn = self.running.lock().await;
        for template in self.templates() {
            if !BUILT_IN.contains(&template.as_str()) {
                self.prune(&template).await;
            }
        }
        self.prune_cache().await;
    }

    /// Record a build's end, once its log has all its lines.
    async fn end(&self, build_id: &str, log: BuildLog, outcome: Outcome) {
        // Clients read the log to its end once the status says the build ended.
        log.finish().await;
        let catalog = self.manager.catalog();
        let recorded = match &outcome {
            Outcome::Ready { hash, tags } => catalog.set_build_ready(build_id, hash, tags),
            Outcome::Failed { reason, step } => catalog.set_build_status(
                build_id,
                BuildStatus::Error,
                Some(reason),
                step.as_deref(),
            ),
        };
        if let Err(e) = recorded {
            tracing::error!(build_id, error = %e, "cannot record the build's end");
        }
        if let Err(e) = catalog.prune_build_logs() {
            tracing::warn!(build_id, error = %e, "cannot prune old build logs");
        }
    }

    /// Build, and return the published build's recipe hash.
    async fn build(
        &self,
        build_id: &str,
        requested: &Requested,
        plan: &Plan,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<String, BuildFailure> {
        let context = self.dir.join(".contexts").join(build_id);
        let unpacked = self.unpack(&plan.uploads, &context).await;
        let built = match unpacked {
            Ok(()) => {
                silo_templates::build_dockerfile(
                    &silo_templates::DockerfileBuild {
                        templates_dir: &self.dir,
                        name: &requested.template,
                        dockerfile: &plan.dockerfile,
                        context: &context,
                        build_args: &plan.build_args,
                        runsc: &self.runsc,
                        network: &*self.network,
                        force_from: plan.force_from,
                        start: plan.start.clone(),
                        templates: &|from| self.parent(from),
                        registry: &plan.registry,
                        cancel: &self.stopping,
                    },
                    progress,
                )
                .await
            }
            Err(e) => Err(silo_templates::BuildError::Context(e)),
        };
        let _ = tokio::fs::remove_dir_all(&context).await;
        let published = match built.map_err(BuildFailure::Build)? {
            Built::Cached(done) => done,
            Built::Unpublished(pending) => {
                let checked = async {
                    write_resources(pending.rootfs(), &requested.resources)?;
                    if plan.start.is_some() {
                        progress(Progress::Line(
                            "booting a sandbox to run the start command and wait for the ready command".into(),
                        ));
                        self.manager
                            .trial(&requested.template, pending.rootfs(), &self.stopping)
                            .await?;
                    }
                    Ok::<_, SandboxError>(())
                }
                .await;
                if let Err(e) = checked {
                    pending.discard().await;
                    return Err(BuildFailure::Trial(e));
                }
                pending.publish().await.map_err(BuildFailure::Build)?
            }
        };
        write_resources(&published.rootfs, &requested.resources).map_err(BuildFailure::Trial)?;
        Ok(published.hash)
    }

    /// The build of a silo template a FROM names (`name`, `name:tag`, an alias), as a
    /// sandbox created by that name would start from. Read during a build's turn, when
    /// no prune runs.
    fn parent(&self, from: &str) -> Option<silo_templates::TemplatePath> {
        let named = TemplateRef::parse(from).ok()?;
        let name = self.manager.template_named(named.name).ok()?;
        let rootfs = self
            .manager
            .templates()
            .tagged_rootfs(self.manager.catalog(), &name, named.tag)
            .ok()?;
        let hash = rootfs.parent()?.file_name()?.to_string_lossy().into_owned();
        Some(silo_templates::TemplatePath { rootfs, hash })
    }

    /// Unpack the uploads (tars, gzipped or not) into one context dir.
    async fn unpack(&self, uploads: &[String], context: &Path) -> Result<(), String> {
        let _ = tokio::fs::remove_dir_all(context).await;
        std::fs::create_dir_all(context)
            .map_err(|e| format!("create the build context {}: {e}", context.display()))?;
        for hash in uploads {
            let path = self.upload_path(hash).map_err(|e| e.to_string())?;
            let context = context.to_owned();
            tokio::task::spawn_blocking(move || unpack_tar(&path, &context))
                .await
                .map_err(|e| format!("unpacking the upload {hash}: {e}"))?
                .map_err(|e| format!("unpacking the upload {hash}: {e}"))?;
        }
        Ok(())
    }

    /// A build's status and its log from `offset` (at most [`LOG_PAGE`] entries).
    pub fn status(
        &self,
        template: &str,
        build_id: &str,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<BuildReport, TemplateError> {
        let catalog = self.manager.catalog();
        let build = catalog
            .build(build_id)?
            .filter(|b| b.template == template)
            .ok_or_else(|| {
                TemplateError::NotFound(format!(
                    "build {build_id} of template {template:?} was not found"
                ))
            })?;
        let limit = limit.unwrap_or(LOG_PAGE).min(LOG_PAGE);
        let log = catalog.build_logs(build_id, offset, limit)?;
        Ok(BuildReport { build, log })
    }

    /// A built template: its aliases, builds, resources and times.
    pub fn summary(&self, name: &str) -> Result<TemplateSummary, TemplateError> {
        let catalog = self.manager.catalog();
        // What a create of the bare name starts from.
        let rootfs = self
            .manager
            .templates()
            .tagged_rootfs(catalog, name, None)?;
        let default_build = catalog.tagged_build(name, DEFAULT_TAG)?.map(|b| b.id);
        let defaults = self.manager.defaults();
        let resources = crate::sandbox::resources_of(&rootfs)?;
        let modified = |path: &Path| {
            path.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64)
        };
        let builds = catalog.builds_of(name)?;
        let updated_at_ms = modified(&rootfs);
        // The first build recorded, or (built outside the API) the oldest time on disk.
        let created_at_ms = builds
            .last()
            .map(|b| b.created_at_ms)
            .unwrap_or_else(|| modified(&self.dir.join(name)).min(updated_at_ms));
        Ok(TemplateSummary {
            name: name.to_owned(),
            aliases: catalog.aliases_of(name)?,
            default_build,
            builds,
            cpu_count: resources.cpu_count.unwrap_or(defaults.cpu_count),
            memory_mb: resources.memory_mb.unwrap_or(defaults.memory_mb),
            disk_size_mb: resources.disk_size_mb.unwrap_or(defaults.disk_size_mb),
            created_at_ms,
            updated_at_ms,
            config: silo_templates::TemplateConfig::of(&rootfs).unwrap_or_default(),
        })
    }

    /// The templates with a complete build, by name.
    pub fn templates(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.') && self.manager.templates().is_built(name))
            .collect();
        names.sort();
        names
    }

    /// A template by name or alias: its canonical name, if it is built.
    pub fn resolve(&self, name_or_alias: &str) -> Result<String, TemplateError> {
        let name = self.manager.templates().canonical(name_or_alias)?;
        if self.manager.templates().is_built(name) {
            return Ok(name.to_owned());
        }
        match self.manager.catalog().alias(name)? {
            Some(target) => Ok(target),
            None => Err(TemplateError::NotFound(format!(
                "template {name_or_alias:?} was not found (`silo template list` shows what is built)"
            ))),
        }
    }

    /// Point `tags` at the build `target` (`name:tag`, `name` for its default) names;
    /// tags taken move. Returns the build and the tags given, each once.
    pub fn assign_tags(
        &self,
        target: &str,
        tags: &[String],
    ) -> Result<(BuildRecord, Vec<String>), TemplateError> {
        let named = TemplateRef::parse(target)?;
        let tags = checked_tags(tags)?;
        let name = self.resolve(named.name)?;
        let tag = named.tag.unwrap_or(DEFAULT_TAG);
        let catalog = self.manager.catalog();
        let build = match catalog.tagged_build(&name, tag)? {
            Some(build) => build,
            None => {
                let templates = self.manager.templates();
                return Err(templates.tag_not_found(catalog, &name, tag)?.into());
            }
        };
        catalog.assign_tags(&build.id, &tags)?;
        Ok((build, tags))
    }

    /// Remove `tags` of the template `name`, all or none.
    pub fn remove_tags(&self, name: &str, tags: &[String]) -> Result<(), TemplateError> {
        let named = TemplateRef::parse(name)?;
        if let Some(tag) = named.tag {
            return Err(TemplateError::Invalid(format!(
                "give the template's name without a tag ({:?}), and {tag:?} among the tags",
                named.name
            )));
        }
        let tags = checked_tags(tags)?;
        if tags.iter().any(|t| t == DEFAULT_TAG) {
            return Err(TemplateError::Invalid(format!(
                "the tag {DEFAULT_TAG:?} names the template's newest build and cannot be removed; assign it to another build instead"
            )));
        }
        let name = self.resolve(named.name)?;
        let missing = self.manager.catalog().remove_tags(&name, &tags)?;
        match missing.first() {
            None => Ok(()),
            Some(tag) => Err(self
                .manager
                .templates()
                .tag_not_found(self.manager.catalog(), &name, tag)?
                .into()),
        }
    }

    /// The tags of a template (by name or alias), by name.
    pub fn tags(&self, name_or_alias: &str) -> Result<Vec<TagRecord>, TemplateError> {
        let name = self.resolve(name_or_alias)?;
        Ok(self.manager.catalog().tags_of(&name)?)
    }

    pub fn aliases(&self, template: &str) -> Result<Vec<String>, TemplateError> {
        Ok(self.manager.catalog().aliases_of(template)?)
    }

    pub fn delete_alias(&self, alias: &str) -> Result<(), TemplateError> {
        if self.manager.catalog().delete_alias(alias)? {
            Ok(())
        } else {
            Err(TemplateError::NotFound(format!(
                "alias {alias:?} was not found"
            )))
        }
    }

    /// Point `alias` at a built template.
    pub fn set_alias(&self, alias: &str, template: &str) -> Result<(), TemplateError> {
        let alias = self.manager.templates().canonical(alias)?;
        let template = self.resolve(template)?;
        if self.manager.templates().is_built(alias) {
            return Err(TemplateError::Conflict(format!(
                "{alias:?} is a template's own name; an alias must not hide it"
            )));
        }
        self.manager.catalog().set_alias(alias, &template)?;
        Ok(())
    }

    /// Delete a template (every build, its aliases and build records), unless a
    /// sandbox or snapshot still uses it.
    pub async fn delete(&self, name_or_alias: &str) -> Result<(), TemplateError> {
        let name = self.resolve(name_or_alias)?;
        if BUILT_IN.contains(&name.as_str()) {
            return Err(TemplateError::Invalid(format!(
                "{name:?} is one of silo's own templates; other templates start from it"
            )));
        }
        let catalog = self.manager.catalog();
        let aliases = catalog.aliases_of(&name)?;
        let template_dir = self.dir.join(&name);
        // Its rootfs says which template a sandbox booted from, whatever name, alias or
        // tag it was asked for by; a sandbox from before silo recorded it, its name.
        let uses_it = |sandbox: &silo_catalog::SandboxRecord| match &sandbox.rootfs {
            Some(rootfs) => Path::new(rootfs).starts_with(&template_dir),
            None => {
                let asked = TemplateRef::parse(&sandbox.template_id).map(|r| r.name);
                asked.is_ok_and(|template| {
                    template == name
                        || aliases.iter().any(|a| a == template)
                        || self.manager.templates().canonical(template).ok() == Some(name.as_str())
                })
            }
        };
        let live = [
            SandboxState::Creating,
            SandboxState::Running,
            SandboxState::Pausing,
            SandboxState::Paused,
            SandboxState::Resuming,
        ];
        let users: Vec<String> = catalog
            .sandboxes_in(&live)?
            .into_iter()
            .filter(|s| uses_it(s))
            // A sandbox booting for the pool is no one's (it is drained below).
            .filter(|s| !s.metadata.contains_key(crate::sandbox::POOL_METADATA))
            .map(|s| s.id.to_string())
            .collect();
        if !users.is_empty() {
            return Err(TemplateError::Conflict(format!(
                "template {name:?} is in use by sandbox(es) {}: kill them first",
                users.join(", ")
            )));
        }
        let snapshots: Vec<String> = catalog
            .snapshots(None)?
            .into_iter()
            .filter(|s| Path::new(&s.rootfs).starts_with(&template_dir))
            .map(|s| s.id)
            .collect();
        if !snapshots.is_empty() {
            return Err(TemplateError::Conflict(format!(
                "template {name:?} is in use by snapshot(s) {}: delete them first",
                snapshots.join(", ")
            )));
        }
        // Its pooled sandboxes are no one's: they go with it.
        self.manager.drain_pool(&name).await;
        catalog.delete_template(&name)?;
        tokio::fs::remove_dir_all(&template_dir)
            .await
            .map_err(io(format!("remove {}", template_dir.display())))
    }
}

/// A built template, for listings.
pub struct TemplateSummary {
    pub name: String,
    pub aliases: Vec<String>,
    /// The build its bare name starts (tagged `default`); none for a template built on
    /// the host or before tags.
    pub default_build: Option<String>,
    /// Newest first.
    pub builds: Vec<BuildRecord>,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub created_at_ms: i64,
    /// When its newest build was made (or made the newest again).
    pub updated_at_ms: i64,
    pub config: silo_templates::TemplateConfig,
}

/// Tags given to assign or remove: at least one, each valid, each once.
fn checked_tags(tags: &[String]) -> Result<Vec<String>, TemplateError> {
    if tags.is_empty() {
        return Err(TemplateError::Invalid("no tags given".into()));
    }
    let mut checked: Vec<String> = Vec::new();
    for tag in tags {
        let tag = check_tag(tag)?;
        if !checked.iter().any(|t| t == tag) {
            checked.push(tag.to_owned());
        }
    }
    Ok(checked)
}

/// How a build ended.
enum Outcome {
    /// Published under its recipe `hash`; `tags` (and `default`) name it now.
    Ready { hash: String, tags: Vec<String> },
    Failed {
        reason: String,
        /// The step it failed at ("1", ..., "base" or "finalize").
        step: Option<String>,
    },
}

/// What a started build will do.
struct Plan {
    dockerfile: Dockerfile,
    uploads: Vec<String>,
    build_args: HashMap<String, String>,
    force_from: Option<usize>,
    start: Option<StartCommand>,
    registry: RegistryAccess,
}

/// Why a build failed: its steps, or its check.
#[derive(Debug, thiserror::Error)]
enum BuildFailure {
    #[error(transparent)]
    Build(silo_templates::BuildError),
    #[error("the template's sandbox did not become ready")]
    Trial(#[source] SandboxError),
}

/// Unpack a tar (gzipped or not) into `into`; entries that would land outside it are
/// refused by the tar crate.
fn unpack_tar(path: &Path, into: &Path) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    archive.unpack(into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_templates::dockerbuild::NetworkError;
    use silo_templates::StepNet;
    use tokio::io::AsyncBufReadExt;

    /// Step networks that are only names, and which of them were given back.
    #[derive(Default)]
    struct Networks {
        acquired: Mutex<Vec<String>>,
        released: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl StepNetwork for Networks {
        async fn acquire(&self) -> Result<StepNet, NetworkError> {
            let mut acquired = self.acquired.lock().unwrap();
            let id = format!("step-{}", acquired.len());
            acquired.push(id.clone());
            Ok(StepNet {
                netns: "/nonexistent/netns".into(),
                id,
            })
        }

        async fn release(&self, net: &StepNet) -> Result<(), NetworkError> {
            self.released.lock().unwrap().push(net.id.clone());
            Ok(())
        }

        fn prepare(&self, _runsc: &mut tokio::process::Command) {}
    }

    /// A builder over a fake runtime, its templates dir holding an empty `base`, its
    /// RUN steps run by `runsc` (a script standing in for runsc), and a build of the
    /// template `app` from `dockerfile`, requested but not started.
    fn builder_with_build(
        runsc: PathBuf,
        network: Arc<Networks>,
    ) -> (Arc<Builder>, String, tempfile::TempDir) {
        let (manager, dir) =
            crate::sandbox::fake::manager(Arc::new(crate::sandbox::fake::FakeRuntime::default()));
        std::fs::create_dir_all(manager.templates().dir().join("base/0123/rootfs")).unwrap();
        let build_runsc = BuildRunsc {
            binary: runsc,
            platform: "systrap".into(),
            root: dir.path().join("runsc-root"),
        };
        let builder =
            Builder::new(manager, build_runsc, network, BuildSettings::default()).unwrap();
        let new = builder
            .request(&BuildRequest {
                name: Some("app".into()),
                ..BuildRequest::default()
            })
            .unwrap();
        (builder, new.build.id, dir)
    }

    fn start(builder: &Arc<Builder>, build_id: &str, dockerfile: &str) {
        let start = BuildStart {
            dockerfile: Some(dockerfile.into()),
            ..BuildStart::default()
        };
        builder.start("app", build_id, start).unwrap();
    }

    /// The build failed as interrupted, the reason also its log's last line.
    fn assert_interrupted(builder: &Builder, build_id: &str) {
        let report = builder.status("app", build_id, 0, None).unwrap();
        assert_eq!(report.build.status, BuildStatus::Error);
        assert_eq!(report.build.reason.as_deref(), Some(INTERRUPTED));
        let last = report.log.last().expect("a log");
        assert_eq!(
            (last.level.as_str(), last.message.as_str()),
            ("error", INTERRUPTED)
        );
    }

    #[tokio::test]
    async fn a_build_asked_for_as_name_tag_takes_its_tags_and_default_when_ready() {
        let (builder, first, _dir) =
            builder_with_build("/nonexistent/runsc".into(), Arc::default());
        let new = builder
            .request(&BuildRequest {
                name: Some("app:v1".into()),
                tags: Some(vec!["stable".into(), "v1".into(), "default".into()]),
                ..BuildRequest::default()
            })
            .unwrap();
        assert_eq!(new.build.template, "app");
        assert_eq!(new.tags, ["v1", "stable", "default"]);
        for (name, tags) in [("app:", vec![]), ("app", vec!["a b".to_owned()])] {
            let bad = builder.request(&BuildRequest {
                name: Some(name.into()),
                tags: Some(tags),
                ..BuildRequest::default()
            });
            assert!(
                matches!(
                    bad,
                    Err(TemplateError::Sandbox(SandboxError::InvalidRequest(_)))
                ),
                "{name}"
            );
        }

        // No RUN step: no runsc needed. The same recipe twice is one directory. One
        // after the other: the build that ends last is the default.
        for id in [&first, &new.build.id] {
            start(&builder, id, "FROM base\nENV A=1");
            builder.builds.close();
            builder.builds.wait().await;
            builder.builds.reopen();
        }
        let catalog = builder.manager.catalog();
        let tagged = |tag| catalog.tagged_build("app", tag).unwrap().map(|b| b.id);
        assert_eq!(tagged("v1"), Some(new.build.id.clone()));
        assert_eq!(tagged("stable"), Some(new.build.id.clone()));
        assert_eq!(tagged("default"), Some(new.build.id.clone()));
        let hash = catalog.build(&first).unwrap().unwrap().hash.unwrap();
        assert!(builder.dir.join("app").join(&hash).join("rootfs").is_dir());
        assert_eq!(
            catalog.build(&new.build.id).unwrap().unwrap().hash,
            Some(hash)
        );
    }

    /// Build `dockerfile` as `name` (`name:tag`) to its end; the ENV WHICH it has.
    async fn built_which(builder: &Arc<Builder>, name: &str, dockerfile: &str) -> String {
        let new = builder
            .request(&BuildRequest {
                name: Some(name.into()),
                ..BuildRequest::default()
            })
            .unwrap();
        let template = new.build.template.clone();
        let start = BuildStart {
            dockerfile: Some(dockerfile.into()),
            ..BuildStart::default()
        };
        builder.start(&template, &new.build.id, start).unwrap();
        builder.builds.close();
        builder.builds.wait().await;
        builder.builds.reopen();
        let built = builder
            .manager
            .catalog()
            .build(&new.build.id)
            .unwrap()
            .unwrap();
        assert_eq!(
            built.status,
            BuildStatus::Ready,
            "{name}: {:?}",
            built.reason
        );
        let rootfs = builder
            .dir
            .join(&template)
            .join(built.hash.unwrap())
            .join("rootfs");
        silo_templates::TemplateConfig::of(&rootfs).unwrap().env["WHICH"].clone()
    }

    #[tokio::test]
    async fn from_names_a_template_as_a_create_would_tag_and_alias_included() {
        // No RUN step: no runsc needed.
        let (builder, _, _dir) = builder_with_build("/nonexistent/runsc".into(), Arc::default());
        built_which(&builder, "app:v1", "FROM base\nENV WHICH=one").await;
        built_which(&builder, "app", "FROM base\nENV WHICH=two").await;
        builder.manager.catalog().set_alias("nick", "app").unwrap();
        let child = |from: &str, n: u32| format!("FROM {from}\nENV C={n}");
        assert_eq!(
            built_which(&builder, "child", &child("app:v1", 1)).await,
            "one"
        );
        assert_eq!(
            built_which(&builder, "child", &child("app", 2)).await,
            "two"
        );
        assert_eq!(
            built_which(&builder, "child", &child("nick:v1", 3)).await,
            "one"
        );
        // The bare name follows `default` wherever it is assigned.
        builder.assign_tags("app:v1", &["default".into()]).unwrap();
        assert_eq!(
            built_which(&builder, "child", &child("app", 4)).await,
            "one"
        );
    }

    #[tokio::test]
    async fn uploads_no_build_looked_for_lately_are_pruned() {
        let (builder, _, _dir) = builder_with_build("/nonexistent/runsc".into(), Arc::default());
        let uploads = builder.dir.join(".uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let week_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 86400);
        for name in ["aaaaaaaa", "bbbbbbbb", ".cccccccc-being-written"] {
            let file = std::fs::File::create(uploads.join(name)).unwrap();
            file.set_modified(week_ago).unwrap();
        }
        // A client asked whether it has these files: they stay for its build.
        assert!(builder.has_upload("app", "BBBBBBBB").unwrap());
        let removed = builder.prune_uploads(std::time::Duration::from_secs(86400));
        assert_eq!(removed, [uploads.join("aaaaaaaa")]);
        assert!(uploads.join("bbbbbbbb").is_file());
        assert!(uploads.join(".cccccccc-being-written").is_file());
        assert!(!builder.has_upload("app", "aaaaaaaa").unwrap());
    }

    #[tokio::test]
    async fn builds_waiting_or_never_started_are_failed_as_interrupted_at_shutdown() {
        let (builder, waiting, _dir) =
            builder_with_build("/nonexistent/runsc".into(), Arc::default());
        let never_started = builder
            .request(&BuildRequest {
                name: Some("app".into()),
                ..BuildRequest::default()
            })
            .unwrap()
            .build
            .id;
        // Another build's turn, never ending.
        let _turn = builder.running.lock().await;
        start(&builder, &waiting, "FROM base\nRUN true");
        builder.shutdown().await;
        assert_interrupted(&builder, &waiting);
        assert_interrupted(&builder, &never_started);
    }

    #[tokio::test]
    async fn a_build_stopped_in_a_run_step_ends_the_step_releases_all_and_is_interrupted() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // The step's root is an overlay, mounted as root only.
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        // The stand-in for runsc: `run` tells its pid through a FIFO, then sleeps.
        let (runsc, calls, fifo) = (
            scratch.path().join("runsc"),
            scratch.path().join("calls"),
            scratch.path().join("step-pid"),
        );
        std::fs::write(
            &runsc,
            format!(
                "#!/bin/sh\necho \"$*\" >> {calls}\ncase \" $* \" in\n  *\" run \"*) echo $$ > {fifo}; exec sleep 600 ;;\nesac\n",
                calls = calls.display(),
                fifo = fifo.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&runsc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Also open for writing: no end of file before the step writes.
        let mut pid_pipe = tokio::io::BufReader::new(
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&fifo)
                .unwrap(),
        );
        let network = Arc::new(Networks::default());
        let (builder, build_id, _dir) = builder_with_build(runsc, Arc::clone(&network));
        let templates = builder.dir.clone();

        start(&builder, &build_id, "FROM base\nRUN sleep 600");
        let builds = builder.builds.clone();
        builds.close();
        let mut pid = String::new();
        tokio::select! {
            read = pid_pipe.read_line(&mut pid) => {
                read.unwrap();
            }
            () = builds.wait() => {
                let log = builder.status("app", &build_id, 0, None).unwrap().log;
                panic!("the build ended before its step ran: {log:?}");
            }
        }
        builder.shutdown().await;

        assert_interrupted(&builder, &build_id);
        let build = builder.status("app", &build_id, 0, None).unwrap().build;
        assert_eq!(build.step.as_deref(), Some("1"));
        // The step's process is ended and reaped, its container deleted after it.
        assert!(!Path::new("/proc").join(pid.trim()).exists(), "{pid}");
        let calls = std::fs::read_to_string(&calls).unwrap();
        let verbs: Vec<&str> = calls
            .lines()
            .filter_map(|call| call.split(' ').find(|a| !a.starts_with('-')))
            .collect();
        assert_eq!(verbs, ["run", "delete"], "{calls}");
        assert!(calls.contains("delete --force silo-build-"), "{calls}");
        // Its network given back, its overlay unmounted, its temp dirs removed.
        assert_eq!(
            *network.released.lock().unwrap(),
            *network.acquired.lock().unwrap()
        );
        assert_eq!(network.released.lock().unwrap().len(), 1);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mountinfo
                .lines()
                .any(|l| l.contains(&*templates.to_string_lossy())),
            "{mountinfo}"
        );
        let layers: Vec<_> = std::fs::read_dir(templates.join(".layers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(layers.is_empty(), "{layers:?}");
        assert!(!templates.join(".contexts").join(&build_id).exists());
        assert!(!templates.join("app").exists());
    }

    #[test]
    fn unpacks_plain_and_gzipped_tars_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let make = |gzip: bool| -> PathBuf {
            let path = dir.path().join(if gzip { "a.tgz" } else { "a.tar" });
            let file = std::fs::File::create(&path).unwrap();
            let writer: Box<dyn std::io::Write> = if gzip {
                Box::new(flate2::write::GzEncoder::new(
                    file,
                    flate2::Compression::fast(),
                ))
            } else {
                Box::new(file)
            };
            let mut tar = tar::Builder::new(writer);
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "sub/hi.txt", &b"hi"[..])
                .unwrap();
            tar.into_inner().unwrap().flush().unwrap();
            path
        };
        for gzip in [false, true] {
            let into = dir.path().join(format!("out-{gzip}"));
            std::fs::create_dir_all(&into).unwrap();
            unpack_tar(&make(gzip), &into).unwrap();
            assert_eq!(std::fs::read(into.join("sub/hi.txt")).unwrap(), b"hi");
        }
        // A member named ../escape is refused, not written beside the target.
        let evil = dir.path().join("evil.tar");
        let mut bytes = Vec::new();
        {
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            let mut tar = tar::Builder::new(&mut bytes);
            tar.append(&header, &b"x"[..]).unwrap();
            tar.finish().unwrap();
        }
        std::fs::write(&evil, bytes).unwrap();
        let into = dir.path().join("jail");
        std::fs::create_dir_all(&into).unwrap();
        let _ = unpack_tar(&evil, &into);
        assert!(!dir.path().join("escape").exists());
    }
}
