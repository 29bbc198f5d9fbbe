//! OCI images as the bottom of a Dockerfile build (`FROM oci:<layout dir>[:tag]`).
//!
//! An image in an OCI image layout (what `skopeo copy ... oci:dir:tag`, `umoci` or
//! `docker buildx --output type=oci` write) is unpacked once per manifest digest into
//! `<templates_dir>/.images/<digest>/rootfs`, layer by layer with whiteouts applied, and
//! made fit for silo: user `user` (uid 1000, in group `sudo`), `sudo` served by the
//! agent, hostname, hosts, resolver and the agent's mount point. The image's Env,
//! WorkingDir and User become its `template.json`, the starting state of the build.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::{path_in, symlink, write, BuildError, Progress, Stage, TemplatePath};
use crate::cache::{self, Slot};
use crate::dockerbuild::{TemplateConfig, TEMPLATE_CONFIG_FILE};

/// The prefix of a FROM that names an OCI image layout.
pub const LAYOUT_PREFIX: &str = "oci:";

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// `oci:<dir>[:<tag>]` split into the directory and the tag (if any).
pub fn parse_layout_ref(from: &str) -> Option<(&str, Option<&str>)> {
    let rest = from.strip_prefix(LAYOUT_PREFIX)?;
    Some(match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => (dir, Some(tag)),
        _ => (rest, None),
    })
}

/// The image in the layout at `layout` (tagged `tag`, or its only one), unpacked and
/// prepared under `templates_dir`, or reused.
pub async fn from_layout(
    templates_dir: &Path,
    layout: &Path,
    tag: Option<&str>,
    progress: &mut (impl FnMut(Progress) + Send),
) -> Result<TemplatePath, BuildError> {
    let manifest_digest = select_manifest(layout, tag).map_err(BuildError::Context)?;
    let manifest: Manifest = read_json(layout, &manifest_digest).map_err(BuildError::Context)?;
    let key = digest_hex(&manifest_digest).map_err(BuildError::Context)?;
    let work = match cache::slot(&templates_dir.join(".images"), &key[..16]).await? {
        Slot::Cached(done) => {
            // Kept by the cache's prune while builds use it.
            cache::touch(&done.rootfs);
            return Ok(done);
        }
        Slot::Build(work) => work,
    };
    progress(Progress::Stage(Stage::Image {
        reference: format!("{} ({} layers)", layout.display(), manifest.layers.len()),
    }));
    let unpacked = async {
        let layout_dir = layout.to_owned();
        let rootfs = work.rootfs.clone();
        let layers: Vec<(String, String)> = manifest
            .layers
            .iter()
            .map(|l| (l.media_type.clone(), l.digest.clone()))
            .collect();
        tokio::task::spawn_blocking(move || unpack_layers(&layout_dir, &layers, &rootfs))
            .await
            .map_err(|e| BuildError::Context(e.to_string()))?
            .map_err(BuildError::Context)?;
        let config: ImageConfig =
            read_json(layout, &manifest.config.digest).map_err(BuildError::Context)?;
        let config = template_config(config.config.unwrap_or_default());
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        let path = work
            .rootfs
            .parent()
            .expect("rootfs has a parent")
            .join(TEMPLATE_CONFIG_FILE);
        std::fs::write(&path, json).map_err(|source| BuildError::Configure { path, source })?;
        prepare(&work.rootfs).await
    }
    .await;
    match unpacked {
        Ok(()) => work.publish().await,
        Err(e) => {
            work.discard().await;
            Err(e)
        }
    }
}

/// The digest of the manifest to use: the one tagged `tag`, or the only one; an index
/// (multi-platform image) resolves to its linux/amd64 manifest.
fn select_manifest(layout: &Path, tag: Option<&str>) -> Result<String, String> {
    let index: Index = serde_json::from_slice(
        &std::fs::read(layout.join("index.json"))
            .map_err(|e| format!("{} is not an OCI image layout: {e}", layout.display()))?,
    )
    .map_err(|e| format!("{}/index.json: {e}", layout.display()))?;
    fn named(d: &Descriptor) -> Option<&str> {
        d.annotations.get(REF_NAME).map(String::as_str)
    }
    let chosen = match tag {
        Some(tag) => index.manifests.iter().find(|d| named(d) == Some(tag)),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => None,
    };
    let Some(chosen) = chosen else {
        let tags: Vec<&str> = index.manifests.iter().filter_map(named).collect();
        return Err(format!(
            "no image {} in {}; it has: {}",
            tag.map_or("without a tag".to_owned(), |t| format!("tagged {t:?}")),
            layout.display(),
            if tags.is_empty() {
                "(no tags)".to_owned()
            } else {
                tags.join(", ")
            }
        ));
    };
    if chosen.media_type == INDEX || chosen.media_type == DOCKER_LIST {
        let nested: Index = read_json(layout, &chosen.digest)?;
        let arch = oci_arch();
        return nested
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .map(|d| d.digest.clone())
            .ok_or_else(|| format!("the image has no linux/{arch} variant"));
    }
    if !chosen.media_type.is_empty()
        && chosen.media_type != MANIFEST
        && chosen.media_type != DOCKER_MANIFEST
    {
        return Err(format!("unsupported manifest type {}", chosen.media_type));
    }
    Ok(chosen.digest.clone())
}

/// This host's architecture as OCI platforms name it.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn digest_hex(digest: &str) -> Result<String, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("unsupported digest {digest:?} (only sha256)"))?;
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(format!("malformed digest {digest:?}"))
    }
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    Ok(layout.join("blobs/sha256").join(digest_hex(digest)?))
}

fn read_json<T: serde::de::DeserializeOwned>(layout: &Path, digest: &str) -> Result<T, String> {
    let path = blob(layout, digest)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Apply the layers, lowest first: each one's whiteouts delete from the layers below,
/// then its files are written (the tar crate keeps every entry inside `rootfs`).
fn unpack_layers(layout: &Path, layers: &[(String, String)], rootfs: &Path) -> Result<(), String> {
    std::fs::create_dir_all(rootfs).map_err(|e| e.to_string())?;
    for (media_type, digest) in layers {
        let path = blob(layout, digest)?;
        let open = || -> Result<Box<dyn Read>, String> {
            let file =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if media_type.ends_with("gzip") {
                Ok(Box::new(flate2::read::GzDecoder::new(file)))
            } else if media_type.ends_with("tar") || media_type.is_empty() {
                Ok(Box::new(file))
            } else {
                Err(format!(
                    "layer {digest}: unsupported media type {media_type} (gzip or plain tar only)"
                ))
            }
        };
        let layer_err = |e: std::io::Error| format!("layer {digest}: {e}");
        let mut whiteouts = Vec::new();
        for entry in tar::Archive::new(open()?).entries().map_err(layer_err)? {
            let entry = entry.map_err(layer_err)?;
            let name = entry.path().map_err(layer_err)?.into_owned();
            if let Some(file) = name.file_name().and_then(|f| f.to_str()) {
                if let Some(target) = file.strip_prefix(".wh.") {
                    whiteouts.push((
                        name.parent().map(Path::to_path_buf).unwrap_or_default(),
                        target.to_owned(),
                    ));
                }
            }
        }
        // A lower layer's symlinks are followed inside the tree (a whiteout under
        // `x -> /` must not empty the host's root).
        let whiteout_err = |dir: &Path, e: std::io::Error| {
            format!("layer {digest}: whiteout in {}: {e}", dir.display())
        };
        for (dir, target) in whiteouts {
            if target == ".wh..opq" {
                let dir =
                    crate::inroot::resolve(rootfs, &dir).map_err(|e| whiteout_err(&dir, e))?;
                if let Ok(children) = std::fs::read_dir(&dir) {
                    for child in children.flatten() {
                        remove_any(&child.path());
                    }
                }
            } else if let Some(path) = crate::inroot::resolve_parent(rootfs, &dir.join(&target))
                .map_err(|e| whiteout_err(&dir, e))?
            {
                remove_any(&path);
            }
        }
        let mut archive = tar::Archive::new(open()?);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        archive.set_unpack_xattrs(false);
        for entry in archive.entries().map_err(layer_err)? {
            let mut entry = entry.map_err(layer_err)?;
            let is_whiteout = entry
                .path()
                .map_err(layer_err)?
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(".wh."));
            if is_whiteout
                || entry.header().entry_type().is_character_special()
                || entry.header().entry_type().is_block_special()
            {
                continue; // devices come from the sandbox's own /dev
            }
            entry.unpack_in(rootfs).map_err(layer_err)?;
        }
    }
    Ok(())
}

fn remove_any(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(e) = removed {
        tracing::warn!(path = %path.display(), error = %e, "applying a whiteout");
    }
}

fn template_config(run: RunConfig) -> TemplateConfig {
    TemplateConfig {
        env: run
            .env
            .unwrap_or_default()
            .iter()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        labels: run.labels.unwrap_or_default(),
        start: None,
    }
}

/// Make the tree fit for silo's agent and SDK defaults: user `user` (uid 1000, home
/// /home/user, in group `sudo`), `sudo` served by the agent, and the host files.
async fn prepare(rootfs: &Path) -> Result<(), BuildError> {
    let read = |rel: &str| -> Result<String, BuildError> {
        Ok(std::fs::read_to_string(path_in(rootfs, rel)?).unwrap_or_default())
    };
    let has = |text: &str, name: &str| text.lines().any(|l| l.split(':').next() == Some(name));
    let shell = if path_in(rootfs, "bin/bash")?.exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let mut passwd = read("etc/passwd")?;
    if !has(&passwd, "root") {
        passwd.push_str("root:x:0:0:root:/root:/bin/sh\n");
    }
    if !has(&passwd, "user") {
        passwd.push_str(&format!("user:x:1000:1000::/home/user:{shell}\n"));
    }
    let mut group = read("etc/group")?;
    if !has(&group, "root") {
        group.push_str("root:x:0:\n");
    }
    if !has(&group, "user") {
        group.push_str("user:x:1000:\n");
    }
    if has(&group, "sudo") {
        group = group
            .lines()
            .map(|l| {
                let in_sudo = l
                    .split(':')
                    .nth(3)
                    .is_some_and(|m| m.split(',').any(|u| u == "user"));
                match l.starts_with("sudo:") && !in_sudo {
                    true if l.ends_with(':') => format!("{l}user\n"),
                    true => format!("{l},user\n"),
                    false => format!("{l}\n"),
                }
            })
            .collect();
    } else {
        group.push_str("sudo:x:27:user\n");
    }
    let etc = path_in(rootfs, "etc")?;
    std::fs::create_dir_all(&etc).map_err(|source| BuildError::Configure { path: etc, source })?;
    write(rootfs, "etc/passwd", &passwd, 0o644).await?;
    write(rootfs, "etc/group", &group, 0o644).await?;
    for (dir, mode, owner) in [
        ("home/user", 0o755, 1000),
        ("tmp", 0o1777, 0),
        ("usr/bin", 0o755, 0),
    ] {
        let path = path_in(rootfs, dir)?;
        let made = std::fs::create_dir_all(&path)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            })
            .and_then(|()| std::os::unix::fs::lchown(&path, Some(owner), Some(owner)));
        made.map_err(|source| BuildError::Configure { path, source })?;
    }
    symlink(rootfs, "usr/bin/sudo", "/opt/silo/silo-agent").await?;
    crate::base::fast_login_profile(rootfs).await?;
    crate::base::configure_host_files(rootfs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_refs_split_dir_and_tag() {
        assert_eq!(parse_layout_ref("oci:img"), Some(("img", None)));
        assert_eq!(
            parse_layout_ref("oci:images/app:1.2"),
            Some(("images/app", Some("1.2")))
        );
        assert_eq!(parse_layout_ref("base"), None);
    }

    #[test]
    fn image_config_becomes_the_template_config() {
        let run: RunConfig = serde_json::from_str(
            r#"{"Env":["PATH=/usr/bin","A=b=c"],"WorkingDir":"/srv","User":"","Labels":{"x":"y"}}"#,
        )
        .unwrap();
        let config = template_config(run);
        assert_eq!(config.env.get("A").map(String::as_str), Some("b=c"));
        assert_eq!(config.workdir.as_deref(), Some("/srv"));
        assert_eq!(config.user, None);
        assert_eq!(config.labels.get("x").map(String::as_str), Some("y"));
    }

    /// A plain tar layer of `entries` (path, symlink target or `None` for an empty
    /// file) in `layout`'s blobs; its digest.
    fn layer(layout: &Path, entries: &[(&str, Option<&Path>)]) -> String {
        use sha2::{Digest, Sha256};
        let mut tar = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut header, path, target).unwrap();
                }
                None => tar
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap(),
            }
        }
        let bytes = tar.into_inner().unwrap();
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn whiteouts_under_a_lower_layers_symlink_stay_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "a host file").unwrap();
        let layout = dir.path().join("layout");
        let links = layer(&layout, &[("x", Some(&outside)), ("y", Some(&outside))]);
        let whiteouts = layer(&layout, &[("x/.wh..opq", None), ("y/.wh.keep", None)]);
        let tar = "application/vnd.oci.image.layer.v1.tar".to_owned();
        let rootfs = dir.path().join("rootfs");
        unpack_layers(&layout, &[(tar.clone(), links), (tar, whiteouts)], &rootfs).unwrap();
        assert!(
            outside.join("keep").exists(),
            "the host's file is left alone"
        );
    }
}
