//! Pulling an image from a registry (the OCI distribution API, which Docker Hub, GHCR and
//! `docker-registry` serve) into an OCI image layout, so [`crate::image`] unpacks it like
//! any other: `FROM python:3.12` or `FROM 127.0.0.1:5000/team/app:v1`.
//!
//! Anonymous, basic and bearer-token (Docker Hub's) access; https unless the registry is
//! one the server was told is plain http (`--insecure-registry`). Blobs are checked
//! against their digest and kept in the layout, so a second pull of the same image
//! fetches only its manifest.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Where an image is: `registry/repository:tag` (or `@sha256:...`), Docker Hub's
/// shorthands expanded (`python:3` is `registry-1.docker.io/library/python:3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

const DOCKER_HUB: &str = "registry-1.docker.io";

impl ImageRef {
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        let bad = || {
            format!("{image:?} is not an image reference (like python:3.12 or registry.example.com/team/app:v1)")
        };
        let (name, reference) = match image.split_once('@') {
            Some((name, digest)) => (name, digest.to_owned()),
            None => match image.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_owned()),
                _ => (image, "latest".to_owned()),
            },
        };
        let (registry, repository) = match name.split_once('/') {
            Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => {
                (host.to_owned(), rest.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        let registry = match registry.as_str() {
            "docker.io" | "index.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
                })
        };
        if !valid(&repository) || !valid(&reference) || repository.contains("..") {
            return Err(bad());
        }
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }

    /// The name the image gets in the layout's index.
    pub fn name(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.reference)
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// `host:port`s spoken to over plain http.
    pub insecure: Vec<String>,
    /// A user name and password for the registry of the image being pulled.
    pub credentials: Option<(String, String)>,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

struct Session<'a> {
    http: reqwest::Client,
    base: String,
    image: &'a ImageRef,
    access: &'a RegistryAccess,
    token: Option<String>,
}

/// Pull `image` into the OCI layout at `layout` (created if missing), naming it
/// [`ImageRef::name`] in its index.
pub async fn pull(image: &ImageRef, access: &RegistryAccess, layout: &Path) -> Result<(), String> {
    let scheme = if access.insecure.contains(&image.registry) {
        "http"
    } else {
        "https"
    };
    let mut session = Session {
        http: reqwest::Client::builder()
            .user_agent(concat!("silo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?,
        base: format!("{scheme}://{}/v2/{}", image.registry, image.repository),
        image,
        access,
        token: None,
    };
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("create {}: {e}", blobs.display()))?;
    let (media_type, manifest) = session
        .get(&format!("manifests/{}", image.reference), true)
        .await?;
    let digest = store(&blobs, &manifest)?;
    // A multi-platform index is stored whole; image.rs picks this host's variant, and
    // the blobs of that variant are fetched here.
    let platform_manifest = if media_type.contains("index") || media_type.contains("list") {
        let index: serde_json::Value =
            serde_json::from_slice(&manifest).map_err(|e| format!("image index: {e}"))?;
        let arch = crate::image::oci_arch();
        let chosen = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("{} has no linux/{arch} variant", image.name()))?
            .to_owned();
        let (_, bytes) = session.get(&format!("manifests/{chosen}"), true).await?;
        check(&chosen, &bytes)?;
        store(&blobs, &bytes)?;
        bytes
    } else {
        manifest
    };
    let parsed: serde_json::Value =
        serde_json::from_slice(&platform_manifest).map_err(|e| format!("image manifest: {e}"))?;
    let wanted = std::iter::once(&parsed["config"])
        .chain(parsed["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str());
    for blob_digest in wanted {
        let hex = blob_digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("unsupported blob digest {blob_digest:?}"))?;
        if blobs.join(hex).is_file() {
            continue;
        }
        let (_, bytes) = session.get(&format!("blobs/{blob_digest}"), false).await?;
        check(blob_digest, &bytes)?;
        store(&blobs, &bytes)?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": 0,
            "annotations": { "org.opencontainers.image.ref.name": image.name() },
        }],
    });
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .and_then(|()| std::fs::write(layout.join("index.json"), index.to_string()))
    .map_err(|e| format!("write the image layout: {e}"))
}

impl Session<'_> {
    /// GET `path` under the repository, authenticating as the registry asks.
    async fn get(&mut self, path: &str, manifest: bool) -> Result<(String, Vec<u8>), String> {
        let url = format!("{}/{path}", self.base);
        let unreachable =
            |e: reqwest::Error| format!("cannot reach the registry {}: {e}", self.image.registry);
        for attempt in 0..2 {
            let mut req = self.http.get(&url);
            if manifest {
                req = req.header(reqwest::header::ACCEPT, ACCEPT);
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            } else if let Some((user, password)) = &self.access.credentials {
                req = req.basic_auth(user, Some(password));
            }
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(params) = challenge.strip_prefix("Bearer ") {
                    self.token = Some(self.bearer_token(params).await?);
                    continue;
                }
            }
            if !status.is_success() {
                let hint = match status.as_u16() {
                    401 | 403 => ": the registry wants credentials this build does not have",
                    404 => ": no such image or tag",
                    _ => "",
                };
                return Err(format!(
                    "{} answered {status} for {path}{hint}",
                    self.image.name()
                ));
            }
            let media_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or_default()
                .trim()
                .to_owned();
            let bytes = resp.bytes().await.map_err(unreachable)?;
            return Ok((media_type, bytes.to_vec()));
        }
        Err(format!(
            "{} refused the token it issued",
            self.image.registry
        ))
    }

    /// A token from the realm a `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
    /// challenge names.
    async fn bearer_token(&self, params: &str) -> Result<String, String> {
        let mut realm = None;
        let mut query = Vec::new();
        for part in params.split(',') {
            if let Some((key, value)) = part.trim().split_once('=') {
                let value = value.trim_matches('"').to_owned();
                match key {
                    "realm" => realm = Some(value),
                    "service" | "scope" => query.push((key.to_owned(), value)),
                    _ => {}
                }
            }
        }
        let realm = realm.ok_or("the registry's auth challenge names no realm")?;
        let mut req = self.http.get(&realm).query(&query);
        if let Some((user, password)) = &self.access.credentials {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the registry's token service {realm}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "the token service {realm} answered {}",
                resp.status()
            ));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("the token service {realm}: {e}"))?;
        body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("the token service {realm} gave no token"))
    }
}

/// Refuse bytes that are not what their digest says.
fn check(digest: &str, bytes: &[u8]) -> Result<(), String> {
    let actual = format!("sha256:{}", crate::dockerbuild::hex(&Sha256::digest(bytes)));
    if actual == digest {
        Ok(())
    } else {
        Err(format!("the registry sent {actual} for {digest}"))
    }
}

/// Keep a blob under its digest; returns the digest.
fn store(blobs: &Path, bytes: &[u8]) -> Result<String, String> {
    let hex = crate::dockerbuild::hex(&Sha256::digest(bytes));
    let path = blobs.join(&hex);
    let tmp = blobs.join(format!(".{hex}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(format!("sha256:{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_like_docker() {
        let r = ImageRef::parse("python:3.12").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            (DOCKER_HUB, "library/python", "3.12")
        );
        let r = ImageRef::parse("ghcr.io/team/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.reference.as_str()),
            ("ghcr.io", "latest")
        );
        let r = ImageRef::parse("127.0.0.1:5000/silo/test:v1").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "silo/test", "v1")
        );
        let r = ImageRef::parse("team/app@sha256:abc").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str()),
            ("team/app", "sha256:abc")
        );
        assert!(ImageRef::parse("bad name:1").is_err());
    }
}
