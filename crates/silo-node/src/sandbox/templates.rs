//! Template names → the rootfs a sandbox starts from.
//!
//! A template build lives at `<dir>/<name>/<build-hash>/rootfs` and is renamed into place
//! only when complete, so any such directory is usable. `name:tag` is the build the
//! catalog's tag names; `name` is `name:default`, or, for a template with no default
//! tag (built on the host, or before tags), its newest build on disk. Beside the
//! rootfs, `resources.json` may give the template's default resources
//! ([`Resources`]; what it leaves out is the server's default), which `silo template build --cpu-count/--memory-mb/
//! --disk-size-mb` writes.
//!
//! Builds no one needs any more are pruned ([`Templates::prune`]): a build stays while a
//! tag names it, while the bare name means it, and while a sandbox or snapshot stands on
//! it. A create holds its build ([`Pin`]) from resolving the name until its row names
//! the rootfs, so a prune never takes a build from under a sandbox about to boot on it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use silo_catalog::{Catalog, SandboxState, DEFAULT_TAG};
use silo_protocol::rest::Resources;

use super::SandboxError;

/// A build's resources file, beside its rootfs.
pub const RESOURCES_FILE: &str = "resources.json";

/// Names the SDKs use for silo's templates.
const ALIASES: &[(&str, &str)] = &[("code-interpreter-v1", "code-interpreter")];

/// Builds held by creates under way: rootfs → how many.
type Pins = Arc<Mutex<HashMap<PathBuf, usize>>>;

/// Where a pruned build waits to be removed (a crash meanwhile leaves it to the next
/// prune): hidden, as unfinished builds are, so nothing resolves to it.
const PRUNED_PREFIX: &str = ".pruned-";

#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
    pins: Pins,
}

/// A build's rootfs held against [`Templates::prune`] while it, or a clone, lives.
#[derive(Debug, Clone)]
pub struct Pin {
    /// Never read: the last one dropped releases the pin.
    _held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    pins: Pins,
    rootfs: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        if let Some(count) = pins.get_mut(&self.rootfs) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.rootfs);
            }
        }
    }
}

fn lock(pins: &Pins) -> std::sync::MutexGuard<'_, HashMap<PathBuf, usize>> {
    pins.lock().unwrap_or_else(|p| p.into_inner())
}

impl Templates {
    pub fn new(dir: PathBuf) -> Templates {
        Templates {
            dir,
            pins: Pins::default(),
        }
    }

    /// The canonical name of a template (aliases resolved), if the name is acceptable.
    pub fn canonical<'a>(&self, name: &'a str) -> Result<&'a str, SandboxError> {
        if !is_name(name) {
            return Err(SandboxError::InvalidRequest(format!(
                "invalid template name {name:?}: use letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, canonical)| canonical))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` (canonical) has a complete build.
    pub fn is_built(&self, name: &str) -> bool {
        newest_build(&self.dir.join(name)).is_some()
    }

    /// The rootfs of the build of `name` (canonical) that `tag` names, `default` if
    /// none is given.
    pub fn tagged_rootfs(
        &self,
        catalog: &Catalog,
        name: &str,
        tag: Option<&str>,
    ) -> Result<PathBuf, SandboxError> {
        let tag = tag.unwrap_or(DEFAULT_TAG);
        let Some(build) = catalog.tagged_build(name, tag)? else {
            if tag == DEFAULT_TAG {
                return self.rootfs(name);
            }
            return Err(self.tag_not_found(catalog, name, tag)?);
        };
        // Tags name only ready builds, whose rows have their hash.
        let rootfs = build
            .hash
            .map(|hash| self.dir.join(name).join(hash).join("rootfs"))
            .filter(|rootfs| rootfs.is_dir());
        rootfs.ok_or_else(|| {
            SandboxError::BrokenTemplate(format!(
                "build {} of template {name:?} (tag {tag:?}) has no files under {}; build it again",
                build.id,
                self.dir.join(name).display()
            ))
        })
    }

    /// [`Templates::tagged_rootfs`], held against a prune until the [`Pin`] is dropped.
    pub fn pinned_rootfs(
        &self,
        catalog: &Catalog,
        name: &str,
        tag: Option<&str>,
    ) -> Result<(PathBuf, Pin), SandboxError> {
        // Resolved under the lock a prune takes: it sees the pin, or the create sees
        // the build gone (and a tag moved on).
        let mut pins = lock(&self.pins);
        let rootfs = self.tagged_rootfs(catalog, name, tag)?;
        *pins.entry(rootfs.clone()).or_default() += 1;
        let pin = Pin {
            _held: Arc::new(Held {
                pins: Arc::clone(&self.pins),
                rootfs: rootfs.clone(),
            }),
        };
        Ok((rootfs, pin))
    }

    /// Hide the builds of `name` (canonical) that nothing needs any more: no tag names
    /// it, it is not what the bare name means, no sandbox but a killed one and no
    /// snapshot stands on it, and no create is resolving to it. Returns them (moved
    /// aside, with those a crash left) for the caller to remove from disk.
    pub fn prune(&self, catalog: &Catalog, name: &str) -> Result<Vec<PathBuf>, SandboxError> {
        let canonical = self.canonical(name)?;
        let template_dir = self.dir.join(canonical);
        let pins = lock(&self.pins);
        let mut kept: HashSet<PathBuf> = pins.keys().cloned().collect();
        let live: Vec<SandboxState> = SandboxState::ALL
            .into_iter()
            .filter(|state| state.is_live())
            .collect();
        for sandbox in catalog.sandboxes_in(&live)? {
            match sandbox.rootfs {
                Some(rootfs) => kept.insert(PathBuf::from(rootfs)),
                // Booted before silo recorded its rootfs: which build is unknown.
                None => return Ok(Vec::new()),
            };
        }
        kept.extend(
            catalog
                .snapshots(None)?
                .into_iter()
                .map(|snapshot| PathBuf::from(snapshot.rootfs)),
        );
        let tagged = catalog.tagged_hashes(canonical)?;
        if tagged.is_empty() {
            kept.extend(newest_build(&template_dir));
        }
        kept.extend(
            tagged
                .iter()
                .map(|hash| template_dir.join(hash).join("rootfs")),
        );
        let Ok(entries) = std::fs::read_dir(&template_dir) else {
            return Ok(Vec::new());
        };
        let mut pruned = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let build = entry.path();
            if file_name.starts_with(PRUNED_PREFIX) {
                pruned.push(build);
                continue;
            }
            // Unfinished builds are hidden; their builder removes them.
            if file_name.starts_with('.') || kept.iter().any(|rootfs| rootfs.starts_with(&build)) {
                continue;
            }
            let aside = template_dir.join(format!("{PRUNED_PREFIX}{file_name}"));
            std::fs::rename(&build, &aside).map_err(|e| {
                SandboxError::BrokenTemplate(format!(
                    "cannot move the unused build {} aside: {e}",
                    build.display()
                ))
            })?;
            pruned.push(aside);
        }
        Ok(pruned)
    }

    /// Why `tag` of `name` names nothing: the template is unknown, or which tags it has
    /// (`default` alone for a template built before tags).
    pub fn tag_not_found(
        &self,
        catalog: &Catalog,
        name: &str,
        tag: &str,
    ) -> Result<SandboxError, SandboxError> {
        let mut tags: Vec<String> = catalog.tags_of(name)?.into_iter().map(|t| t.tag).collect();
        if tags.is_empty() && self.is_built(name) {
            tags.push(DEFAULT_TAG.to_owned());
        }
        if tags.is_empty() {
            return Ok(SandboxError::TemplateNotFound(name.to_owned()));
        }
        Ok(SandboxError::TagNotFound {
            template: name.to_owned(),
            tag: tag.to_owned(),
            tags,
        })
    }

    /// The rootfs of the newest complete build of `name`.
    pub fn rootfs(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let canonical = self.canonical(name)?;
        newest_build(&self.dir.join(canonical))
            .ok_or_else(|| SandboxError::TemplateNotFound(canonical.to_owned()))
    }
}

/// Whether `name` may name a template or a tag: it becomes a directory's name.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// A template as E2B names it: `name` or `name:tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateRef<'a> {
    pub name: &'a str,
    pub tag: Option<&'a str>,
}

impl<'a> TemplateRef<'a> {
    /// Split `name:tag`; the tag, when there is one, must be a valid name.
    pub fn parse(text: &'a str) -> Result<TemplateRef<'a>, SandboxError> {
        match text.split_once(':') {
            None => Ok(TemplateRef {
                name: text,
                tag: None,
            }),
            Some((name, tag)) => Ok(TemplateRef {
                name,
                tag: Some(check_tag(tag)?),
            }),
        }
    }
}

/// `tag`, if it is acceptable as a tag.
pub fn check_tag(tag: &str) -> Result<&str, SandboxError> {
    if is_name(tag) {
        Ok(tag)
    } else {
        Err(SandboxError::InvalidRequest(format!(
            "invalid tag {tag:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// The resources of the build whose rootfs is `rootfs` (none set when it has no file).
pub fn resources_of(rootfs: &Path) -> Result<Resources, SandboxError> {
    let Some(path) = rootfs.parent().map(|build| build.join(RESOURCES_FILE)) else {
        return Ok(Resources::default());
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            SandboxError::BrokenTemplate(format!(
                "template resources {} are unreadable: {e}; fix or rebuild the template",
                path.display()
            ))
        }),
        Err(_) => Ok(Resources::default()),
    }
}

/// Set a build's default resources: those given replace the ones written before.
/// Returns what the build has now.
pub fn write_resources(rootfs: &Path, given: &Resources) -> Result<Resources, SandboxError> {
    let resources = given.or(resources_of(rootfs)?);
    let Some(build) = rootfs.parent() else {
        return Ok(resources);
    };
    let path = build.join(RESOURCES_FILE);
    let tmp = build.join(format!(".{RESOURCES_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(&resources).expect("resources serialize");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            SandboxError::BrokenTemplate(format!("cannot write {}: {e}", path.display()))
        })?;
    Ok(resources)
}

fn newest_build(template_dir: &Path) -> Option<PathBuf> {
    silo_templates::newest_build(template_dir).map(|build| build.rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_newest_complete_build_and_aliases() {
        let dir = std::env::temp_dir().join(format!("silo-templates-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("code-interpreter/aaa/rootfs")).unwrap();
        std::fs::create_dir_all(dir.join("code-interpreter/partial")).unwrap();
        let templates = Templates::new(dir.clone());
        assert_eq!(
            templates.rootfs("code-interpreter-v1").unwrap(),
            dir.join("code-interpreter/aaa/rootfs")
        );
        assert!(matches!(
            templates.rootfs("base"),
            Err(SandboxError::TemplateNotFound(_))
        ));
        for bad in ["", "../etc", ".hidden", "a/b"] {
            assert!(matches!(
                templates.rootfs(bad),
                Err(SandboxError::InvalidRequest(_))
            ));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_template_ref_is_a_name_and_maybe_a_tag() {
        let parsed = |text| TemplateRef::parse(text).map(|r| (r.name, r.tag)).ok();
        assert_eq!(parsed("app"), Some(("app", None)));
        assert_eq!(parsed("app:v1.2"), Some(("app", Some("v1.2"))));
        for bad in ["app:", "app:a:b", "app:../x", "app:.x"] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_tag_names_its_builds_rootfs_and_a_bare_name_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let templates = Templates::new(dir.path().to_owned());
        let catalog = Catalog::open_in_memory().unwrap();
        for hash in ["h1", "h2"] {
            std::fs::create_dir_all(dir.path().join("app").join(hash).join("rootfs")).unwrap();
        }
        let rootfs = |hash: &str| dir.path().join("app").join(hash).join("rootfs");
        // Built before tags: the newest build on disk.
        assert!(templates.tagged_rootfs(&catalog, "app", None).is_ok());
        let err = templates
            .tagged_rootfs(&catalog, "app", Some("v1"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"template "app" has no tag "v1"; its tags: default"#
        );

        catalog.insert_build("b1", "app").unwrap();
        catalog.set_build_ready("b1", "h1", &["v1".into()]).unwrap();
        catalog.insert_build("b2", "app").unwrap();
        catalog.set_build_ready("b2", "h2", &["v2".into()]).unwrap();
        let found = |tag| templates.tagged_rootfs(&catalog, "app", tag).unwrap();
        assert_eq!(found(Some("v1")), rootfs("h1"));
        assert_eq!(found(Some("v2")), rootfs("h2"));
        assert_eq!(found(None), rootfs("h2"));
        assert_eq!(found(Some("default")), rootfs("h2"));
        let err = templates
            .tagged_rootfs(&catalog, "app", Some("v3"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"template "app" has no tag "v3"; its tags: default, v1, v2"#
        );
        assert!(matches!(
            templates.tagged_rootfs(&catalog, "web", Some("v1")),
            Err(SandboxError::TemplateNotFound(_))
        ));
        // A tagged build whose files are gone is the server's fault, not a missing tag.
        std::fs::remove_dir_all(rootfs("h1")).unwrap();
        assert!(matches!(
            templates.tagged_rootfs(&catalog, "app", Some("v1")),
            Err(SandboxError::BrokenTemplate(_))
        ));
    }

    #[test]
    fn a_prune_takes_only_builds_nothing_holds() {
        let dir = tempfile::tempdir().unwrap();
        let templates = Templates::new(dir.path().to_owned());
        let catalog = Catalog::open_in_memory().unwrap();
        let app = dir.path().join("app");
        let rootfs = |hash: &str| app.join(hash).join("rootfs");
        for build in [
            "tagged", "default", "running", "saved", "pinned", "unused", ".tmp-x",
        ] {
            std::fs::create_dir_all(rootfs(build)).unwrap();
        }
        std::fs::create_dir_all(app.join(".pruned-crashed")).unwrap();
        for (id, hash, tags) in [
            ("b1", "tagged", vec!["v1".to_owned()]),
            ("b2", "pinned", vec!["gone".to_owned()]),
            ("b3", "default", vec![]),
        ] {
            catalog.insert_build(id, "app").unwrap();
            catalog.set_build_ready(id, hash, &tags).unwrap();
        }
        let mut running = silo_catalog::testing::record(SandboxState::Running);
        running.rootfs = Some(rootfs("running").display().to_string());
        catalog.insert_sandbox(&running).unwrap();
        let mut killed = silo_catalog::testing::record(SandboxState::Killed);
        killed.rootfs = Some(rootfs("unused").display().to_string());
        catalog.insert_sandbox(&killed).unwrap();
        catalog
            .insert_snapshot(&silo_catalog::SnapshotRecord {
                id: "snap".into(),
                name: None,
                sandbox_id: running.id.clone(),
                template_id: "app".into(),
                rootfs: rootfs("saved").display().to_string(),
                cpu_count: 1,
                memory_mb: 256,
                disk_size_mb: 512,
                env_vars: Default::default(),
                access_token: None,
                created_at_ms: 0,
            })
            .unwrap();
        // A create resolved `app:gone`, then the tag was removed before its row exists.
        let (pinned_at, pin) = templates
            .pinned_rootfs(&catalog, "app", Some("gone"))
            .unwrap();
        assert_eq!(pinned_at, rootfs("pinned"));
        catalog.remove_tags("app", &["gone".into()]).unwrap();

        let mut pruned = templates.prune(&catalog, "app").unwrap();
        pruned.sort();
        assert_eq!(
            pruned,
            [app.join(".pruned-crashed"), app.join(".pruned-unused")]
        );
        for kept in ["tagged", "default", "running", "saved", "pinned", ".tmp-x"] {
            assert!(rootfs(kept).is_dir(), "{kept}");
        }
        assert_eq!(
            templates.tagged_rootfs(&catalog, "app", None).unwrap(),
            rootfs("default")
        );

        drop(pin);
        let pruned = templates.prune(&catalog, "app").unwrap();
        assert!(pruned.contains(&app.join(".pruned-pinned")), "{pruned:?}");
        assert!(!rootfs("pinned").exists());

        // A live sandbox of unknown rootfs (booted before silo recorded it): nothing goes.
        let mut old = silo_catalog::testing::record(SandboxState::Paused);
        old.template_id = "app".into();
        catalog.insert_sandbox(&old).unwrap();
        catalog.remove_tags("app", &["v1".into()]).unwrap();
        assert_eq!(
            templates.prune(&catalog, "app").unwrap(),
            Vec::<PathBuf>::new()
        );
        assert!(rootfs("tagged").is_dir());
    }

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
        let now = write_resources(&rootfs, &cpus).unwrap();
        let read = resources_of(&rootfs).unwrap();
        assert_eq!(now, read);
        assert_eq!((read.cpu_count, read.memory_mb), (Some(1), Some(384)));
    }

    #[test]
    fn reads_a_builds_resources() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("base/h/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        assert_eq!(resources_of(&rootfs).unwrap(), Resources::default());
        std::fs::write(
            dir.path().join("base/h").join(RESOURCES_FILE),
            r#"{"memoryMB":384}"#,
        )
        .unwrap();
        let read = resources_of(&rootfs).unwrap();
        assert_eq!((read.memory_mb, read.cpu_count), (Some(384), None));
        std::fs::write(dir.path().join("base/h").join(RESOURCES_FILE), "nonsense").unwrap();
        // The server's files, not the request, are wrong.
        assert!(matches!(
            resources_of(&rootfs),
            Err(SandboxError::BrokenTemplate(_))
        ));
    }
}
