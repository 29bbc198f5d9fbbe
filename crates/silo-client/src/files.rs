//! A sandbox's files, through envd as the E2B SDK reaches them: `GET`/`POST /files` for
//! contents, the Connect unary `filesystem.Filesystem/ListDir` for listings. Paths are
//! the sandbox's own; relative ones and `~` resolve against the default user's home, and
//! everything runs as that user (no `username` is sent).

use futures_util::StreamExt;
use silo_protocol::connect;
use silo_protocol::envd::{EntryInfo, ListDirRequest, ListDirResponse, WriteInfo};
use silo_protocol::ports::ENVD;
use silo_protocol::rest::Sandbox;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::{Client, ClientError, Result};

impl Client {
    /// The contents of `path`, refused with [`ClientError::TooLarge`] past `limit` bytes
    /// (read as it streams, so a huge file never sits in memory whole).
    pub async fn read_file(&self, sandbox: &Sandbox, path: &str, limit: usize) -> Result<Vec<u8>> {
        let req = self
            .sandbox_request(reqwest::Method::GET, sandbox, ENVD, "/files")
            .query(&[("path", path)]);
        let resp = self.send(req).await?;
        let too_large = || ClientError::TooLarge {
            what: path.to_owned(),
            limit,
        };
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream();
        let mut contents = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| ClientError::Stream(err.to_string()))?;
            if contents.len() + chunk.len() > limit {
                return Err(too_large());
            }
            contents.extend_from_slice(&chunk);
        }
        Ok(contents)
    }

    /// Write `contents` to `path` (parents created, an existing file replaced).
    pub async fn write_file(
        &self,
        sandbox: &Sandbox,
        path: &str,
        contents: Vec<u8>,
    ) -> Result<WriteInfo> {
        self.upload_file(sandbox, path, None, std::io::Cursor::new(contents))
            .await
    }

    /// The entries of directory `path`, `depth` levels down (1: its children only).
    pub async fn list_dir(
        &self,
        sandbox: &Sandbox,
        path: &str,
        depth: u32,
    ) -> Result<Vec<EntryInfo>> {
        let req = self
            .sandbox_request(
                reqwest::Method::POST,
                sandbox,
                ENVD,
                "/filesystem.Filesystem/ListDir",
            )
            .header("content-type", connect::CONTENT_TYPE_UNARY)
            .header("connect-protocol-version", "1")
            .json(&ListDirRequest {
                path: path.to_owned(),
                depth,
            });
        let listing: ListDirResponse = self.json(req).await?;
        Ok(listing.entries)
    }

    /// Stream `path`'s contents, read as `user` (the default user if `None`), into `to`;
    /// the number of bytes written.
    pub async fn download_file(
        &self,
        sandbox: &Sandbox,
        path: &str,
        user: Option<&str>,
        to: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64> {
        let req = self
            .sandbox_request(reqwest::Method::GET, sandbox, ENVD, "/files")
            .query(&files_query(path, user));
        let mut body = self.send(req).await?.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| ClientError::Stream(err.to_string()))?;
            to.write_all(&chunk)
                .await
                .map_err(ClientError::LocalWrite)?;
            written += chunk.len() as u64;
        }
        to.flush().await.map_err(ClientError::LocalWrite)?;
        Ok(written)
    }

    /// Write what `from` reads to `path` as `user` (parents created, an existing file
    /// replaced), streamed. The sandbox lands it whole or not at all: a stream cut short
    /// leaves the old file as it was.
    pub async fn upload_file(
        &self,
        sandbox: &Sandbox,
        path: &str,
        user: Option<&str>,
        from: impl AsyncRead + Send + 'static,
    ) -> Result<WriteInfo> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(from));
        let req = self
            .sandbox_request(reqwest::Method::POST, sandbox, ENVD, "/files")
            .query(&files_query(path, user))
            .header("content-type", "application/octet-stream")
            .body(body);
        let written: Vec<WriteInfo> = self.json(req).await?;
        written
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Stream("the upload answered no file".into()))
    }
}

/// `/files`' query: the path, and the user only when one is asked for (envd's default
/// user otherwise, as the SDK does).
fn files_query<'a>(path: &'a str, user: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut query = vec![("path", path)];
    query.extend(user.map(|user| ("username", user)));
    query
}
