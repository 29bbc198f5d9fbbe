//! `GET /files` (download) and `POST /files` (upload), envd's plain-HTTP file transfer.
//!
//! Downloads stream the file, gzip-compressed when the client accepts it and the file's
//! first 64 KiB shrink to half or less; otherwise as they are. Uploads follow the
//! destination's symlinks and stream to a hidden temp file beside the file they reach
//! ([`TEMP_PREFIX`]), which gets the user's ownership and `X-Metadata-*` xattrs, is
//! fsynced, and is renamed over it only when complete: a reader never sees a
//! half-written file, and a failed upload leaves nothing behind. What a rename would
//! replace rather than update (a device, a FIFO, a file with several hard links, a
//! /proc/sys knob) is written in place, as envd writes every file, so not atomically
//! ([`Landing`]). Each file is capped at `--max-upload-bytes`.
//!
//! File I/O runs on the agent's blocking threads ([`blocking`]) a chunk at a time, so a
//! slow disk or a large file never stalls the runtime, and a slow client holds no thread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use flate2::write::GzEncoder;
use futures_util::{Stream, StreamExt};
use silo_protocol::envd::WriteInfo;
use tempfile::TempPath;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::check_files;
use crate::blocking;
use crate::error::{Error, HttpFailure};
use crate::filesystem::entry::{validate_metadata, write_metadata, MetadataWritten};
use crate::filesystem::{chown_to, create_dirs, fs_type};
use crate::state::AppState;
use crate::users::User;
use silo_protocol::files::{FileOp, FilesQuery};

/// Name prefix of the temp files of uploads and of moves across filesystems (watchers
/// hide them).
pub const TEMP_PREFIX: &str = ".silo-upload-";

const CHUNK: usize = 64 * 1024;
/// How much of a download is compressed first, to decide whether gzip pays.
const SAMPLE: u64 = 64 * 1024;
const METADATA_HEADER: &str = "x-metadata-";

/// Does `Accept-Encoding` allow gzip (present, and not `q=0`)?
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

pub async fn download(
    State(state): State<AppState>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpFailure> {
    let (user, _) = state.user(q.username())?;
    check_files(&state, &headers, FileOp::Read, &q)?;
    let raw = q
        .path
        .as_deref()
        .ok_or_else(|| Error::InvalidArgument("the path parameter is required".into()))?;
    let path = state.resolve_path(raw, &user)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let gzip_accepted = accepts_gzip(&headers);
    let (head, first, rest) = blocking::run(move || open_download(&path, gzip_accepted)).await?;
    let body = match rest {
        Some(reader) => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
            tokio::spawn(pump(reader, first, tx));
            Body::from_stream(ReceiverStream::new(rx))
        }
        None => Body::from(first),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={name:?}")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if head.gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    } else if let Some(len) = head.len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    // Otherwise the body goes chunked.
    Ok(resp)
}

/// What the response's headers need to know before its body flows.
#[derive(Debug)]
struct Head {
    /// The body's length when known before it is read ([`known_len`]).
    len: Option<u64>,
    gzip: bool,
}

/// Open a download: what its headers say, its body's first bytes (the first [`SAMPLE`]
/// bytes of the file, gzipped if that pays and the client accepts it) and the reader of
/// the rest; none when those bytes are the whole file (the body then needs no further
/// trip to a blocking thread).
fn open_download(path: &Path, gzip_accepted: bool) -> Result<(Head, Bytes, Option<Reader>), Error> {
    let (file, len, sample) = open_for_download(path)?;
    // Read short of the sample's size: the file ended there.
    let first_len = sample.len();
    let (encoding, first) = match gzip_accepted.then(|| gzip_if_it_halves(&sample)).flatten() {
        Some(mut encoder) => {
            let first = std::mem::take(encoder.get_mut());
            (Encoding::Gzip(encoder), first)
        }
        None => (Encoding::Identity, sample),
    };
    let gzip = matches!(encoding, Encoding::Gzip(_));
    if (first_len as u64) < SAMPLE {
        let mut whole = first;
        whole.extend_from_slice(
            &encoding
                .finish()
                .map_err(|e| Error::io(format!("compress {}", path.display()), e))?,
        );
        return Ok((Head { len, gzip }, Bytes::from(whole), None));
    }
    let reader = Reader {
        file,
        encoding: Some(encoding),
        buf: Vec::new(),
    };
    Ok((Head { len, gzip }, Bytes::from(first), Some(reader)))
}

/// The file at `path`, its length if known ([`known_len`]) and its first [`SAMPLE`]
/// bytes (read from it).
fn open_for_download(path: &Path) -> Result<(std::fs::File, Option<u64>, Vec<u8>), Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    // Without blocking: opening a FIFO waits for a writer, which would hold one of the
    // agent's few file threads for as long as none comes.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is a directory",
            path.display()
        )));
    }
    if meta.file_type().is_fifo() {
        return Err(Error::InvalidArgument(format!(
            "{} is a named pipe (FIFO): read it with a command, e.g. `cat`",
            path.display()
        )));
    }
    if meta.is_file() {
        // Reads of a regular file never block anyway; a device's may, and then the
        // download fails rather than waiting on a file thread.
        clear_nonblocking(&file).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    }
    let mut sample = Vec::new();
    (&mut file)
        .take(SAMPLE)
        .read_to_end(&mut sample)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let len = known_len(&meta, sample.len());
    Ok((file, len, sample))
}

/// How long a download is, going by its stat and its first `read` bytes; `None` when
/// only reading it all can tell. Pseudo-files are regular files whose size says nothing
/// (/proc reports 0, sysfs 4096): a sample that reached the end is the whole file, and a
/// size below what was read already is not to be believed. A wrong Content-Length
/// truncates the body or breaks the response.
fn known_len(meta: &std::fs::Metadata, read: usize) -> Option<u64> {
    let read = read as u64;
    if read < SAMPLE {
        Some(read)
    } else {
        (meta.is_file() && meta.len() >= read).then_some(meta.len())
    }
}

/// Gzip at its fast level, if it halves `sample` at least: then the encoder, holding
/// the sample's compressed form, goes on with the rest of the file. The SDKs accept
/// gzip on every download (their HTTP clients' default), but compressing costs more
/// than it saves on a fast link unless the data shrinks a lot (under gVisor ~60 MiB/s
/// against ~250 MiB/s sent as is), and random, compressed or encoded data barely
/// shrinks at all. Sending it as is answers such a request as well (identity is always
/// acceptable).
fn gzip_if_it_halves(sample: &[u8]) -> Option<GzEncoder<Vec<u8>>> {
    if sample.is_empty() {
        return None;
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(CHUNK), flate2::Compression::fast());
    // A sync flush puts all of the sample's compressed bytes in the buffer.
    encoder
        .write_all(sample)
        .and_then(|()| encoder.flush())
        .ok()?;
    (encoder.get_ref().len() <= sample.len() / 2).then_some(encoder)
}

/// How a download's bytes go on the wire.
enum Encoding {
    Identity,
    Gzip(GzEncoder<Vec<u8>>),
}

impl Encoding {
    /// What is ready to send once `data` went in (gzip sends in chunks of [`CHUNK`]).
    fn push(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoding::Identity => Ok(Bytes::copy_from_slice(data)),
            Encoding::Gzip(encoder) => {
                encoder.write_all(data)?;
                Ok(if encoder.get_ref().len() >= CHUNK {
                    Bytes::from(std::mem::take(encoder.get_mut()))
                } else {
                    Bytes::new()
                })
            }
        }
    }

    /// What is left to send at the end of the file.
    fn finish(self) -> std::io::Result<Bytes> {
        match self {
            Encoding::Identity => Ok(Bytes::new()),
            Encoding::Gzip(encoder) => encoder.finish().map(Bytes::from),
        }
    }
}

/// What a download reads in one trip to a blocking thread: a trip costs ~0.3 ms under
/// gVisor, and 64 KiB reads halved a 32 MiB download's throughput (218 -> 109 MiB/s).
const READ_BLOCK: usize = 1 << 20;

/// The rest of a download, read [`READ_BLOCK`] at a time.
struct Reader {
    file: std::fs::File,
    /// `None` once the file's end was read.
    encoding: Option<Encoding>,
    buf: Vec<u8>,
}

impl Reader {
    /// What the next read of the file gives to send (gzip may give nothing yet), with
    /// what the encoding held at the end; `None` after that.
    fn read(&mut self) -> std::io::Result<Option<Bytes>> {
        let Some(encoding) = self.encoding.as_mut() else {
            return Ok(None);
        };
        if self.buf.is_empty() {
            self.buf = vec![0; READ_BLOCK];
        }
        let n = loop {
            match self.file.read(&mut self.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => break read?,
            }
        };
        if n == 0 {
            return self.encoding.take().map(Encoding::finish).transpose();
        }
        encoding.push(&self.buf[..n]).map(Some)
    }
}

/// Sends `first`, then the rest of the file, each read on a blocking thread only for
/// as long as it takes: a slow client holds no thread. An error cuts the response
/// short, so the client sees a failed transfer; a client that went away stops it.
async fn pump(mut reader: Reader, first: Bytes, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let mut bytes = first;
    loop {
        if !bytes.is_empty() && tx.send(Ok(bytes)).await.is_err() {
            return;
        }
        let read = blocking::run(move || {
            let read = reader.read();
            Ok((reader, read))
        })
        .await;
        let failed = match read {
            Ok((back, Ok(Some(next)))) => {
                (reader, bytes) = (back, next);
                continue;
            }
            Ok((_, Ok(None))) => return,
            Ok((_, Err(e))) => e,
            Err(e) => std::io::Error::other(e),
        };
        let _ = tx.send(Err(failed)).await;
        return;
    }
}

pub async fn upload(
    State(state): State<AppState>,
    Query(q): Query<FilesQuery>,
    req: Request,
) -> Result<Json<Vec<WriteInfo>>, HttpFailure> {
    let (user, _) = state.user(q.username())?;
    check_files(&state, req.headers(), FileOp::Write, &q)?;
    let metadata = metadata_headers(req.headers())?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let gzip = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    let limit = state.max_upload_bytes;

    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &state)
            .await
            .map_err(|e| Error::InvalidArgument(format!("invalid multipart body: {e}")))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| Error::InvalidArgument(format!("invalid multipart body: {e}")))?;
            let Some(field) = field else { break };
            // As with envd: only `file` parts are files (a form's other fields are
            // skipped), each named by `?path=` if given, else by its filename, whole.
            if field.name() != Some("file") {
                continue;
            }
            let raw = match (q.path.as_deref(), field.file_name()) {
                (Some(p), _) => p.to_string(),
                (None, Some(f)) => f.to_string(),
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "a file part has no filename, and there is no path parameter".into(),
                    )
                    .into())
                }
            };
            let dest = state.resolve_path(&raw, &user)?;
            // The second would overwrite the first; what was written before stays.
            if written
                .iter()
                .any(|w: &WriteInfo| Path::new(&w.path) == dest)
            {
                return Err(Error::InvalidArgument(format!(
                    "several files to {} in one upload: only the first was written",
                    dest.display()
                ))
                .into());
            }
            let chunks = futures_util::stream::unfold(field, |mut f| async move {
                match f.chunk().await {
                    Ok(Some(c)) => Some((Ok(c), f)),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(Error::InvalidArgument(format!("reading upload: {e}"))),
                        f,
                    )),
                }
            });
            written.push(write_file(dest, &user, chunks, false, limit, &metadata).await?);
        }
    } else if content_type.is_empty() || content_type.starts_with("application/octet-stream") {
        let raw = q.path.as_deref().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::InvalidArgument("the path parameter is required for octet-stream uploads".into())
        })?;
        let dest = state.resolve_path(raw, &user)?;
        let chunks = req
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(|e| Error::InvalidArgument(format!("reading upload: {e}"))));
        written.push(write_file(dest, &user, chunks, gzip, limit, &metadata).await?);
    } else {
        return Err(Error::UnsupportedMediaType(format!(
            "uploads are multipart/form-data or application/octet-stream, not {content_type:?}"
        ))
        .into());
    }
    // A multipart body without a `file` part writes nothing and answers `[]`, as envd does.
    Ok(Json(written))
}

/// `X-Metadata-<key>: value` headers, as `key → value`, checked before anything is
/// written.
fn metadata_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(METADATA_HEADER) {
            if key.is_empty() {
                continue;
            }
            let value = value.to_str().map_err(|_| {
                Error::InvalidArgument(format!("metadata {key:?} is not visible ASCII"))
            })?;
            out.insert(key.to_string(), value.to_string());
        }
    }
    validate_metadata(&out)?;
    Ok(out)
}

/// Stream `chunks` into `dest` (see the module docs).
async fn write_file(
    dest: PathBuf,
    user: &User,
    chunks: impl Stream<Item = Result<Bytes, Error>>,
    gzip: bool,
    limit: u64,
    metadata: &BTreeMap<String, String>,
) -> Result<WriteInfo, Error> {
    let (tx, rx) = mpsc::channel::<Piece>(8);
    let feed = async move {
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            // A closed channel means the writer stopped early; it says why.
            if tx.send(Piece::Data(chunk?)).await.is_err() {
                return Ok(());
            }
        }
        let _ = tx.send(Piece::Done).await;
        Ok(())
    };
    let landed = land(
        dest.clone(),
        user.clone(),
        rx,
        Sinking { gzip, limit },
        metadata.clone(),
    );
    // A failed feed drops its sender without `Done`: the writer discards the file.
    let (fed, landed): (Result<(), Error>, _) = tokio::join!(feed, landed);
    fed?;
    let written = landed?;

    Ok(WriteInfo {
        name: dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dest.to_string_lossy().into_owned(),
        entry_type: "file".into(),
        // What was stored, as envd reads it back.
        metadata: (written == MetadataWritten::Stored && !metadata.is_empty())
            .then(|| metadata.clone()),
    })
}

/// Write what `rx` brings into the file `dest` names, the file work on blocking threads,
/// each only for as long as it takes: a slow client holds no thread. A trip to a thread
/// costs ~0.3 ms under gVisor, so what has come meanwhile goes in one: a small upload
/// opens, writes and commits its file in a single trip.
async fn land(
    dest: PathBuf,
    user: User,
    mut rx: mpsc::Receiver<Piece>,
    sinking: Sinking,
    metadata: BTreeMap<String, String>,
) -> Result<MetadataWritten, Error> {
    let cut_short = Error::InvalidArgument(format!("upload to {} was cut short", dest.display()));
    let mut landing = Landed {
        file: FileState::Unopened(dest, sinking),
        user,
        metadata,
    };
    let mut pieces = Vec::new();
    loop {
        if rx.recv_many(&mut pieces, 8).await == 0 {
            return Err(cut_short);
        }
        let batch = std::mem::take(&mut pieces);
        match blocking::run(move || landing.take(&batch)).await? {
            Landed {
                file: FileState::Committed(written),
                ..
            } => return Ok(written),
            more => landing = more,
        }
    }
}

/// An upload between trips to a blocking thread.
struct Landed {
    file: FileState,
    user: User,
    metadata: BTreeMap<String, String>,
}

enum FileState {
    /// Nothing has come yet: where it goes.
    Unopened(PathBuf, Sinking),
    Open(Upload),
    Committed(MetadataWritten),
}

impl Landed {
    /// Write `pieces` (the file opened first if it is not yet), committing it if they
    /// end the upload.
    fn take(mut self, pieces: &[Piece]) -> Result<Landed, Error> {
        let mut upload = match self.file {
            FileState::Unopened(dest, sinking) => Upload::begin(&dest, &self.user, sinking)?,
            FileState::Open(upload) => upload,
            FileState::Committed(_) => return Ok(self),
        };
        for piece in pieces {
            match piece {
                Piece::Data(chunk) => upload.write(chunk)?,
                Piece::Done => {
                    let written = upload.commit(&self.user, &self.metadata)?;
                    self.file = FileState::Committed(written);
                    return Ok(self);
                }
            }
        }
        self.file = FileState::Open(upload);
        Ok(self)
    }
}

/// Where an upload lands: the destination with its symlinks followed (the link stays, its
/// target takes the data, as a write through the link does), and how.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    landing: Landing,
}

#[derive(Debug, PartialEq, Eq)]
enum Landing {
    /// Absent, or a regular file with one link: a temp file beside it, renamed over it
    /// once complete, keeping the mode of the file it replaces (new files are 0644).
    Replace { mode: u32 },
    /// A regular file with several links: truncated and written in place, so the links
    /// stay one file. Not atomic: a failed upload leaves it cut short.
    InPlace,
    /// A device, FIFO or file of a kernel filesystem (/proc/sys, sysfs): written in
    /// place and left as it is otherwise (owner, xattrs), as it is the system's, not a
    /// file of the user's. Renaming over it would put a plain file in its place.
    Special,
}

/// Filesystems whose files are the kernel's knobs (`statfs` magic numbers): they take
/// writes but no new files.
const KERNEL_FS_MAGIC: &[i64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x7363_6673, // securityfs
    0x6265_6570, // configfs
];

/// How many symlinks a destination may go through (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

impl Target {
    fn of(dest: &Path) -> Result<Target, Error> {
        let path = follow_links(dest)?;
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target {
                    path,
                    landing: Landing::Replace { mode: 0o644 },
                })
            }
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is a directory",
                dest.display()
            )));
        }
        let landing =
            if !meta.is_file() || fs_type(&path).is_some_and(|t| KERNEL_FS_MAGIC.contains(&t)) {
                Landing::Special
            } else if meta.nlink() > 1 {
                Landing::InPlace
            } else {
                Landing::Replace {
                    mode: meta.permissions().mode() & 0o7777,
                }
            };
        Ok(Target { path, landing })
    }

    fn dir(&self) -> Result<&Path, Error> {
        self.path
            .parent()
            .ok_or_else(|| Error::InvalidArgument("cannot write to /".into()))
    }
}

/// `dest` with its symlinks followed, also when the last one points at nothing yet (the
/// upload then creates its target). A path below a missing directory is as it is: it
/// holds no link yet.
fn follow_links(dest: &Path) -> Result<PathBuf, Error> {
    let mut path = dest.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(path);
        };
        let parent = match std::fs::canonicalize(parent) {
            Ok(parent) => parent,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(Error::io(format!("resolve {}", parent.display()), e)),
        };
        let real = parent.join(name);
        match std::fs::read_link(&real) {
            // A relative target is relative to the link's directory; an absolute one
            // replaces it in the join.
            Ok(target) => path = parent.join(target),
            // Not a link, or nothing there.
            Err(_) => return Ok(real),
        }
    }
    Err(Error::InvalidArgument(format!(
        "{}: too many levels of symbolic links",
        dest.display()
    )))
}

/// What an upload's writer receives. Only an explicit `Done` commits the file: if the
/// request dies midway (the channel just closes), the temp file is discarded.
enum Piece {
    Data(Bytes),
    Done,
}

/// Caps what is written, counting decoded bytes.
struct Capped<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(std::io::Error::from(std::io::ErrorKind::FileTooLarge));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How an upload's bytes go into its file: gunzipped or not, up to `limit` bytes.
#[derive(Debug, Clone, Copy)]
struct Sinking {
    gzip: bool,
    limit: u64,
}

/// The file being written, plain or through a gzip decoder.
enum Sink<W: Write> {
    Plain(Capped<W>),
    Gzip(Box<flate2::write::GzDecoder<Capped<W>>>),
}

impl<W: Write> Sink<W> {
    fn new(inner: W, how: Sinking) -> Self {
        let capped = Capped {
            inner,
            written: 0,
            limit: how.limit,
        };
        if how.gzip {
            Sink::Gzip(Box::new(flate2::write::GzDecoder::new(capped)))
        } else {
            Sink::Plain(capped)
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.write_all(data),
            Sink::Gzip(w) => w.write_all(data),
        }
    }

    /// Flush what is buffered (for gzip, checking the stream was complete) and give the
    /// file back.
    fn finish(self) -> std::io::Result<W> {
        match self {
            Sink::Plain(mut w) => w.flush().map(|()| w.inner),
            Sink::Gzip(w) => w.finish().map(|w| w.inner),
        }
    }
}

/// How an upload completes, by its [`Landing`].
enum Finish {
    /// The temp file (deleted if dropped) is given `mode`, the user's ownership and
    /// metadata, then renamed over the target.
    Rename { temp: TempPath, mode: u32 },
    /// The target, written in place, gets the user's ownership and metadata.
    InPlace,
    /// The system's file: left as it is.
    Special,
}

/// An upload's file while it is written, on blocking threads.
struct Upload {
    /// The target, symlinks followed.
    path: PathBuf,
    sink: Sink<std::fs::File>,
    finish: Finish,
    sinking: Sinking,
}

impl Upload {
    /// Open what `dest` takes the upload into, making its missing directories.
    fn begin(dest: &Path, user: &User, sinking: Sinking) -> Result<Upload, Error> {
        let target = Target::of(dest)?;
        let dir = target.dir()?;
        create_dirs(dir, user)?;
        let path = target.path.as_path();
        let opened = |e| Error::io(format!("open {}", path.display()), e);
        let (file, finish) = match target.landing {
            Landing::Replace { mode } => {
                let (file, temp) = tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .tempfile_in(dir)
                    .map_err(|e| Error::io(format!("create temp file for {}", path.display()), e))?
                    .into_parts();
                (file, Finish::Rename { temp, mode })
            }
            Landing::InPlace => (open_in_place(path).map_err(opened)?, Finish::InPlace),
            Landing::Special => (open_in_place(path).map_err(opened)?, Finish::Special),
        };
        Ok(Upload {
            sink: Sink::new(file, sinking),
            finish,
            sinking,
            path: target.path,
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.sink
            .write_all(data)
            .map_err(|e| self.error("write", e))
    }

    /// Complete the file (see [`Finish`]), fsynced.
    fn commit(
        self,
        user: &User,
        metadata: &BTreeMap<String, String>,
    ) -> Result<MetadataWritten, Error> {
        let Upload {
            path,
            sink,
            finish,
            sinking,
        } = self;
        let error = |what: &str, e| Upload::error_for(&path, sinking, what, e);
        let file = sink.finish().map_err(|e| error("write", e))?;
        let give_to_user = |path: &Path| {
            chown_to(path, user)?;
            write_metadata(path, metadata)
        };
        match finish {
            Finish::Rename { temp, mode } => {
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| error("chmod", e))?;
                let written = give_to_user(&temp)?;
                file.sync_all().map_err(|e| error("fsync", e))?;
                temp.persist(&path)
                    .map_err(|e| error("rename into", e.error))?;
                Ok(written)
            }
            Finish::InPlace => {
                let written = give_to_user(&path)?;
                file.sync_all().map_err(|e| error("fsync", e))?;
                Ok(written)
            }
            Finish::Special => Ok(MetadataWritten::NotStored),
        }
    }

    fn error(&self, what: &str, e: std::io::Error) -> Error {
        Upload::error_for(&self.path, self.sinking, what, e)
    }

    /// `e`, met doing `what` to the upload into `path`: over the limit, bad gzip, or the
    /// OS's error.
    fn error_for(path: &Path, sinking: Sinking, what: &str, e: std::io::Error) -> Error {
        let ctx = format!("{what} {}", path.display());
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            Error::TooLarge(format!(
                "upload to {} is over the {} byte limit",
                path.display(),
                sinking.limit
            ))
        } else if sinking.gzip
            && matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            Error::InvalidArgument(format!("{ctx}: invalid gzip data: {e}"))
        } else {
            Error::io(ctx, e)
        }
    }
}

/// `path` opened to be overwritten. Without blocking: a FIFO that no one reads is an
/// error (ENXIO) rather than a writer thread stuck until someone does; writes then
/// block as usual.
fn open_in_place(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    clear_nonblocking(&file)?;
    Ok(file)
}

/// Make I/O on `file`, opened with `O_NONBLOCK`, block again.
fn clear_nonblocking(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor the file owns; the results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_that_halves_is_worth_compressing() {
        let text = "abc".repeat(1000);
        let mut encoder = gzip_if_it_halves(text.as_bytes()).expect("text halves");
        // The encoder goes on from the sample: its output so far and the rest are one gzip.
        let mut gzip = std::mem::take(encoder.get_mut());
        encoder.write_all(b"and the rest").unwrap();
        gzip.extend(encoder.finish().unwrap());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text + "and the rest");
        // xorshift64: as incompressible as an image or an archive.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert!(gzip_if_it_halves(&noise).is_none());
        assert!(gzip_if_it_halves(b"").is_none());
    }

    #[test]
    fn a_fifo_is_refused_for_download_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        match open_for_download(&fifo) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("FIFO"), "{msg}"),
            other => panic!("{:?}", other.map(|(_, len, _)| len)),
        }
    }

    #[test]
    fn download_length_is_what_a_pseudo_file_holds() {
        // /proc/loadavg's stat says 0 bytes.
        let (_, len, sample) = open_for_download(Path::new("/proc/loadavg")).unwrap();
        assert!(!sample.is_empty());
        assert_eq!(len, Some(sample.len() as u64));

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; 3 * SAMPLE as usize]).unwrap();
        let (_, len, sample) = open_for_download(&big).unwrap();
        assert_eq!((len, sample.len() as u64), (Some(3 * SAMPLE), SAMPLE));
        let meta = std::fs::metadata(&big).unwrap();
        assert_eq!(known_len(&meta, SAMPLE as usize), Some(3 * SAMPLE));

        // A regular file claiming less than was read (a large /proc file), or no regular
        // file at all, is sent chunked.
        let small = dir.path().join("small");
        std::fs::write(&small, b"0123").unwrap();
        let meta = std::fs::metadata(&small).unwrap();
        assert_eq!(known_len(&meta, SAMPLE as usize), None);
        let meta = std::fs::metadata("/dev/zero").unwrap();
        assert_eq!(known_len(&meta, SAMPLE as usize), None);
        assert_eq!(known_len(&meta, 0), Some(0));
    }

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[test]
    fn metadata_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-owner", HeaderValue::from_static("alice"));
        h.insert("x-other", HeaderValue::from_static("x"));
        let m = metadata_headers(&h).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["owner"], "alice");
        // Refused before anything is written.
        h.insert(
            "x-metadata-big",
            HeaderValue::from_str(&"v".repeat(5000)).unwrap(),
        );
        assert!(matches!(
            metadata_headers(&h),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// Upload `data` to `dest` as the writer thread does.
    fn upload(dest: &Path, data: &[u8]) -> Result<(), Error> {
        upload_with_metadata(dest, data, &BTreeMap::new()).map(drop)
    }

    fn upload_with_metadata(
        dest: &Path,
        data: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<MetadataWritten, Error> {
        let user = crate::users::Users::default().lookup("root").unwrap();
        let sinking = Sinking {
            gzip: false,
            limit: 1 << 20,
        };
        let mut upload = Upload::begin(dest, &user, sinking)?;
        upload.write(data)?;
        upload.commit(&user, metadata)
    }

    #[tokio::test]
    async fn an_upload_cut_short_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "previous").unwrap();
        let (tx, rx) = mpsc::channel(2);
        tx.send(Piece::Data(Bytes::from_static(b"new")))
            .await
            .unwrap();
        drop(tx);
        let user = crate::users::Users::default().lookup("root").unwrap();
        let sinking = Sinking {
            gzip: false,
            limit: 1 << 20,
        };
        let landed = land(file.clone(), user, rx, sinking, BTreeMap::new()).await;
        assert!(
            matches!(landed, Err(Error::InvalidArgument(_))),
            "{landed:?}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The whole body of a download of `path`, as the client gets it (still gzipped).
    fn download(path: &Path, gzip_accepted: bool) -> (Head, Vec<u8>) {
        let (head, first, rest) = open_download(path, gzip_accepted).unwrap();
        let mut body = first.to_vec();
        if let Some(mut reader) = rest {
            while let Some(bytes) = reader.read().unwrap() {
                body.extend_from_slice(&bytes);
            }
        }
        (head, body)
    }

    #[test]
    fn a_download_is_the_whole_file_block_by_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let sample = SAMPLE as usize;
        // Within the sample, exactly it, just past it, and over two read blocks.
        for size in [100, sample, sample + 1, 2 * READ_BLOCK + 5] {
            let text: String = "line of text\n".chars().cycle().take(size).collect();
            std::fs::write(&file, &text).unwrap();

            let (head, body) = download(&file, false);
            assert_eq!((head.len, head.gzip), (Some(size as u64), false), "{size}");
            assert_eq!(body, text.as_bytes(), "{size}");

            let (head, body) = download(&file, true);
            assert!(head.gzip, "{size}");
            let mut plain = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut plain)
                .unwrap();
            assert_eq!(plain, text, "{size}");
        }
    }

    #[test]
    fn metadata_a_file_cannot_take_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "previous").unwrap();
        // Past the up-front check, as a filesystem with smaller limits would refuse it.
        let huge = BTreeMap::from([("k".to_string(), "v".repeat(70_000))]);
        let err = upload_with_metadata(&file, b"new", &huge).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(std::fs::read(&file).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let fine = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let written = upload_with_metadata(&file, b"new", &fine).unwrap();
        assert_eq!(written, MetadataWritten::Stored);
        // A kernel file is written but takes no metadata.
        let written = upload_with_metadata(Path::new("/dev/null"), b"x", &fine).unwrap();
        assert_eq!(written, MetadataWritten::NotStored);
    }

    #[test]
    fn upload_through_a_symlink_updates_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.txt");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let link = dir.path().join("sub/link");
        std::os::unix::fs::symlink("../target.txt", &link).unwrap();
        upload(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);

        // A link to nothing yet: its target is created.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("sub/made.txt", &dangling).unwrap();
        upload(&dangling, b"made").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("sub/made.txt")).unwrap(),
            b"made"
        );

        let a = dir.path().join("a");
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert!(matches!(upload(&a, b"x"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn upload_keeps_hard_links_linked() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "old contents").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        assert_eq!(Target::of(&a).unwrap().landing, Landing::InPlace);
        upload(&a, b"new").unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);

        // Written in place, the file keeps its xattrs: an upload replaces the metadata
        // set rather than adding to it.
        let one = |k: &str| BTreeMap::from([(k.to_string(), "v".to_string())]);
        upload_with_metadata(&a, b"x", &one("old")).unwrap();
        upload_with_metadata(&a, b"y", &one("new")).unwrap();
        let read = crate::filesystem::entry::read_metadata(&b).unwrap();
        assert_eq!(read, one("new"));
    }

    #[test]
    fn upload_to_a_device_or_fifo_writes_into_it() {
        use std::os::unix::fs::FileTypeExt;
        let null = Path::new("/dev/null");
        assert_eq!(Target::of(null).unwrap().landing, Landing::Special);
        upload(null, b"x").unwrap();
        assert!(std::fs::metadata(null)
            .unwrap()
            .file_type()
            .is_char_device());
        // /proc/sys is made of regular files, but takes no new ones.
        let knob = Path::new("/proc/sys/kernel/hostname");
        assert_eq!(Target::of(knob).unwrap().landing, Landing::Special);

        // A FIFO that no one reads is an error, not a writer waiting for a reader.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(upload(&fifo, b"x").is_err());
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn upload_replaces_a_plain_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "first version, longer").unwrap();
        assert_eq!(
            Target::of(&file).unwrap().landing,
            Landing::Replace { mode: 0o644 }
        );
        upload(&file, b"second").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second");
        assert!(matches!(
            Target::of(dir.path()),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// POST a multipart body of `(name, filename, data)` parts to `/files?{query}`.
    async fn post_multipart(
        query: &str,
        parts: &[(&str, Option<&str>, &str)],
    ) -> (axum::http::StatusCode, String) {
        use clap::Parser;
        let config = crate::config::Config::parse_from(["silo-agent"]);
        let reaper = crate::process::Reaper::start().unwrap();
        let app = crate::app::router(AppState::new(&config, reaper));
        let mut body = String::new();
        for (name, filename, data) in parts {
            let filename = filename
                .map(|f| format!("; filename=\"{f}\""))
                .unwrap_or_default();
            body += &format!(
                "--B\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n{data}\r\n"
            );
        }
        body += "--B--\r\n";
        let req = axum::http::Request::post(format!("/files?{query}"))
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=B")
            .body(Body::from(body))
            .unwrap();
        crate::app::tests::status(&app, req).await
    }

    #[tokio::test]
    async fn multipart_takes_file_parts_only_and_each_path_once() {
        use axum::http::StatusCode;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let (a_str, b_str) = (a.to_str().unwrap(), b.to_str().unwrap());

        // A leading form field is not the file `?path=` names.
        let (status, body) = post_multipart(
            &format!("path={a_str}"),
            &[("note", None, "text"), ("file", Some("x.txt"), "content")],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(std::fs::read(&a).unwrap(), b"content");

        // Parts are named by their filename; a part not named `file` is no file.
        let (status, body) = post_multipart(
            "",
            &[
                ("other", Some(b_str), "other"),
                ("file", Some(b_str), "file"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(std::fs::read(&b).unwrap(), b"file");

        // Two files to one path: the first is written, the request refused.
        for (query, names) in [
            (format!("path={a_str}"), [Some("1"), Some("2")]),
            (String::new(), [Some(a_str), Some(a_str)]),
        ] {
            let (status, body) = post_multipart(
                &query,
                &[("file", names[0], "first"), ("file", names[1], "second")],
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(std::fs::read(&a).unwrap(), b"first");
        }

        let (status, _) = post_multipart("", &[("file", None, "x")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // No file part at all: nothing written, and no error.
        let (status, body) = post_multipart(&format!("path={a_str}"), &[("note", None, "x")]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
        let (status, body) = post_multipart("", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
    }

    #[test]
    fn capped_writer_stops_at_limit() {
        let mut out = Vec::new();
        let mut c = Capped {
            inner: &mut out,
            written: 0,
            limit: 4,
        };
        c.write_all(b"abcd").unwrap();
        let err = c.write_all(b"e").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
    }
}
