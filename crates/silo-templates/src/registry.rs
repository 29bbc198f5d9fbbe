//! Pulling an image from a registry (the OCI distribution API, which Docker Hub, GHCR and
//! `docker-registry` serve) into an OCI image layout, so [`crate::image`] unpacks it like
//! any other: `FROM python:3.12` or `FROM 127.0.0.1:5000/team/app:v1`.
//!
//! Anonymous, basic and bearer-token (Docker Hub's) access; https unless the registry is
//! one the server was told is plain http (`--insecure-registry`). Blobs are checked
//! against their digest and kept in the layout, so a second pull of the same image
//! fetches only its manifest. A layer may be gigabytes: it is streamed to a file beside
//! its place while hashed, and renamed into place only once its digest is checked
//! ([`BlobWriter`]), so memory stays flat and a blob is in the layout whole or not at all.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
/// Manifests and indexes are a few KiB; the largest real ones are well under this.
const MANIFEST_LIMIT: usize = 4 << 20;

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
    let mut session = Session::new(image, access)?;
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| format!("create {}: {e}", blobs.display()))?;
    remove_partials(&blobs);
    let (media_type, manifest) = session.manifest(&image.reference).await?;
    let digest = format!(
        "sha256:{}",
        crate::dockerbuild::hex(&Sha256::digest(&manifest))
    );
    // Pinned by digest: the registry must answer exactly that manifest.
    if image.reference.starts_with("sha256:") && !image.reference.eq_ignore_ascii_case(&digest) {
        return Err(format!(
            "{}: the registry answered a manifest whose digest is {digest}",
            image.name()
        ));
    }
    save(&blobs, &digest, &manifest).await?;
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
        let (_, bytes) = session.manifest(&chosen).await?;
        save(&blobs, &chosen, &bytes).await?;
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
        if blobs.join(blob_hex(blob_digest)?).is_file() {
            continue;
        }
        session.download(blob_digest, &blobs).await?;
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

impl<'a> Session<'a> {
    fn new(image: &'a ImageRef, access: &'a RegistryAccess) -> Result<Session<'a>, String> {
        let scheme = if access.insecure.contains(&image.registry) {
            "http"
        } else {
            "https"
        };
        Ok(Session {
            http: reqwest::Client::builder()
                .user_agent(concat!("silo/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())?,
            base: format!("{scheme}://{}/v2/{}", image.registry, image.repository),
            image,
            access,
            token: None,
        })
    }

    /// GET `path` under the repository, authenticating as the registry asks; the
    /// response, once it is a success.
    async fn send(&mut self, path: &str, manifest: bool) -> Result<reqwest::Response, String> {
        let url = format!("{}/{path}", self.base);
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
            let resp = req.send().await.map_err(|e| self.unreachable(e))?;
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
            return Ok(resp);
        }
        Err(format!(
            "{} refused the token it issued",
            self.image.registry
        ))
    }

    fn unreachable(&self, e: reqwest::Error) -> String {
        format!("cannot reach the registry {}: {e}", self.image.registry)
    }

    /// The manifest (or index) `reference` names: its media type and bytes (small:
    /// held in memory to be parsed, so a larger answer is refused).
    async fn manifest(&mut self, reference: &str) -> Result<(String, Vec<u8>), String> {
        let mut resp = self.send(&format!("manifests/{reference}"), true).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            if bytes.len() + chunk.len() > MANIFEST_LIMIT {
                return Err(format!(
                    "the manifest {reference} is over {} MiB: not an image manifest",
                    MANIFEST_LIMIT >> 20
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((media_type, bytes))
    }

    /// Stream the blob `digest` into `blobs`, checked against it chunk by chunk.
    async fn download(&mut self, digest: &str, blobs: &Path) -> Result<(), String> {
        let mut writer = BlobWriter::create(blobs, digest).await?;
        let mut resp = self.send(&format!("blobs/{digest}"), false).await?;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            writer.write(&chunk).await?;
        }
        writer.finish().await
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

/// The hex of a `sha256:` digest, the blob's file name in the layout; refused unless it
/// is one (a digest comes from the registry: it must not name another path).
fn blob_hex(digest: &str) -> Result<&str, String> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported blob digest {digest:?}"))
}

/// Keep `bytes` (already in memory) as the blob `digest`, if they are it.
async fn save(blobs: &Path, digest: &str, bytes: &[u8]) -> Result<(), String> {
    let mut writer = BlobWriter::create(blobs, digest).await?;
    writer.write(bytes).await?;
    writer.finish().await
}

/// Remove the partial blobs of pulls a crash cut short (one build runs at a time).
fn remove_partials(blobs: &Path) {
    for entry in std::fs::read_dir(blobs).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(PARTIAL) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

const PARTIAL: &str = ".partial";

/// A blob being written: to `.<hex>.partial` beside its place, hashed as it goes, and
/// renamed to `<hex>` by [`BlobWriter::finish`] only if the hash is its digest. Dropped
/// unfinished (a failed or cut pull), it removes what it wrote.
struct BlobWriter {
    file: tokio::fs::File,
    hasher: Sha256,
    digest: String,
    partial: PathBuf,
    path: PathBuf,
    kept: bool,
}

impl BlobWriter {
    async fn create(blobs: &Path, digest: &str) -> Result<BlobWriter, String> {
        let hex = blob_hex(digest)?;
        let partial = blobs.join(format!(".{hex}{PARTIAL}"));
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| format!("create {}: {e}", partial.display()))?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            digest: digest.to_owned(),
            path: blobs.join(hex),
            partial,
            kept: false,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| format!("write {}: {e}", self.partial.display()))
    }

    /// Check the digest, then put the blob in place (on disk first, so that a crash
    /// never leaves a blob under its name with other bytes).
    async fn finish(mut self) -> Result<(), String> {
        let actual = crate::dockerbuild::hex(&std::mem::take(&mut self.hasher).finalize());
        if blob_hex(&self.digest)? != actual {
            return Err(format!(
                "the registry sent sha256:{actual} for {}",
                self.digest
            ));
        }
        let write_err = |e: std::io::Error| format!("write {}: {e}", self.path.display());
        self.file.sync_all().await.map_err(write_err)?;
        tokio::fs::rename(&self.partial, &self.path)
            .await
            .map_err(write_err)?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", crate::dockerbuild::hex(&Sha256::digest(data)))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_blob_is_kept_whole_and_only_when_it_is_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = digest_of(&data);
        let hex = blob_hex(&digest).unwrap().to_owned();
        let mut writer = BlobWriter::create(dir.path(), &digest).await.unwrap();
        for chunk in data.chunks(8192) {
            writer.write(chunk).await.unwrap();
        }
        writer.finish().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(&hex)).unwrap(), data);
        assert_eq!(entries(dir.path()), std::slice::from_ref(&hex));

        // Not the bytes the digest names: nothing is kept.
        let other = digest_of(b"other");
        let mut writer = BlobWriter::create(dir.path(), &other).await.unwrap();
        writer.write(&data).await.unwrap();
        let err = writer.finish().await.unwrap_err();
        assert!(
            err.contains(&format!("the registry sent {digest} for {other}")),
            "{err}"
        );
        // Cut short: nothing is kept either.
        let mut writer = BlobWriter::create(dir.path(), &other).await.unwrap();
        writer.write(b"oth").await.unwrap();
        drop(writer);
        assert_eq!(entries(dir.path()), [hex]);
        // A digest that would name another path is refused before anything is written.
        let sha512 = format!("sha512:{}", "a".repeat(64));
        for bad in ["sha256:../../../etc/passwd", "md5:abc", &sha512] {
            assert!(BlobWriter::create(dir.path(), bad).await.is_err(), "{bad}");
        }
    }

    /// A registry at the address returned that answers one request with `response`.
    async fn answer_once(response: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let _ = conn.write_all(&response).await;
        });
        address
    }

    #[tokio::test]
    async fn a_pinned_image_takes_only_its_own_manifest_and_no_huge_one() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            manifest.len()
        )
        .into_bytes();
        response.extend_from_slice(manifest);
        let registry = answer_once(response).await;
        let pinned = format!("sha256:{}", "0".repeat(64));
        let image = ImageRef::parse(&format!("{registry}/silo/test@{pinned}")).unwrap();
        let access = RegistryAccess {
            insecure: vec![registry.clone()],
            credentials: None,
        };
        let err = pull(&image, &access, dir.path()).await.unwrap_err();
        assert!(
            err.contains("the registry answered a manifest whose digest is"),
            "{err}"
        );
        assert_eq!(
            entries(&dir.path().join("blobs/sha256")),
            Vec::<String>::new()
        );

        let huge = MANIFEST_LIMIT + 1;
        let mut response =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {huge}\r\nconnection: close\r\n\r\n")
                .into_bytes();
        response.resize(response.len() + huge, b' ');
        let registry = answer_once(response).await;
        let image = ImageRef::parse(&format!("{registry}/silo/test:v1")).unwrap();
        let access = RegistryAccess {
            insecure: vec![registry.clone()],
            credentials: None,
        };
        let err = pull(&image, &access, dir.path()).await.unwrap_err();
        assert!(err.contains("is over 4 MiB"), "{err}");
    }

    #[tokio::test]
    async fn a_layer_is_streamed_to_disk_and_a_cut_download_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 1 << 20];
        let digest = digest_of(&data);
        // Cut after 64 KiB of the 1 MiB promised, then whole.
        for (sent, whole) in [(64 << 10, false), (data.len(), true)] {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                data.len()
            )
            .into_bytes();
            response.extend_from_slice(&data[..sent]);
            let registry = answer_once(response).await;
            let image = ImageRef::parse(&format!("{registry}/silo/test:v1")).unwrap();
            let access = RegistryAccess {
                insecure: vec![registry.clone()],
                credentials: None,
            };
            let mut session = Session::new(&image, &access).unwrap();
            let result = session.download(&digest, dir.path()).await;
            assert_eq!(result.is_ok(), whole, "{result:?}");
            let kept = if whole {
                vec![blob_hex(&digest).unwrap().to_owned()]
            } else {
                Vec::new()
            };
            assert_eq!(entries(dir.path()), kept);
        }
        assert_eq!(
            std::fs::read(dir.path().join(blob_hex(&digest).unwrap())).unwrap(),
            data
        );
    }

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
