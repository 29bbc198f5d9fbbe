//! Directory watching: `WatchDir` (a server stream, used by the async SDK) and the polling
//! trio `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (used by the sync SDK).
//!
//! Both sit on a [`DirWatcher`]: inotify on the directory (and, when recursive, on every
//! directory below it, including ones created later), with events mapped the way envd's
//! fsnotify maps them: create and moved-to are CREATE, modify is WRITE, delete is REMOVE,
//! moved-from is RENAME, attrib is CHMOD. Names are relative to the watched directory.
//!
//! `POST /files` writes through a hidden temp file that it renames into place
//! ([`crate::files::TEMP_PREFIX`]). Watchers hide the temp file and report the rename as
//! what an in-place write reports (CREATE, CHMOD, WRITE), so clients see the same events
//! as with envd.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use silo_protocol::envd::{
    CreateWatcherResponse, Empty, EventType, FilesystemEvent, GetWatcherEventsRequest,
    GetWatcherEventsResponse, RemoveWatcherRequest, WatchDirRequest, WatchDirResponse,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, OwnedMutexGuard};

use super::entry::entry_info;
use super::fs_type;
use crate::auth::RpcUser;
use crate::blocking;
use crate::error::Error;
use crate::files::TEMP_PREFIX;
use crate::rpc::{self, StreamOptions, StreamRequest, Unary};
use crate::state::AppState;
use crate::users::UserDb;

const EVENT_BUFFER: usize = 64 * 1024;

/// Filesystems on which inotify sees only local changes (`statfs` magic numbers).
const NETWORK_FS_MAGIC: &[i64] = &[
    0x6969,      // NFS
    0xFF53_4D42, // CIFS
    0x517B,      // SMB
    0xFE53_4D42, // SMB2
    0x6573_5546, // FUSE
];

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MODIFY
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MOVE_SELF
        | WatchMask::ATTRIB
}

fn is_temp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// An inotify event as read, before [`DirWatcher::translate`].
struct Queued {
    wd: WatchDescriptor,
    mask: EventMask,
    cookie: u32,
    name: Option<OsString>,
}

/// One inotify instance watching a directory (tree).
pub struct DirWatcher {
    inotify: Inotify,
    root: PathBuf,
    recursive: bool,
    include_entry: bool,
    user_db: UserDb,
    /// Watched directories, relative to `root`.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Cookies of renames away from an upload temp file.
    temp_moves: HashSet<u32>,
    buf: Vec<u8>,
}

impl DirWatcher {
    /// Start watching; the returned descriptor becomes readable when events are queued.
    fn new(
        root: PathBuf,
        req: &WatchDirRequest,
        user_db: UserDb,
    ) -> Result<(DirWatcher, AsyncFd<OwnedFd>), Error> {
        let meta = std::fs::metadata(&root)
            .map_err(|e| Error::io(format!("watch {}", root.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        if !req.allow_network_mounts && on_network_mount(&root) {
            return Err(Error::FailedPrecondition(format!(
                "{} is on a network mount; set allowNetworkMounts to watch it anyway",
                root.display()
            )));
        }
        let inotify = Inotify::init().map_err(|e| Error::io("create inotify instance", e))?;
        let fd = inotify
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| {
                // SAFETY: an OwnedFd stays open, and the same descriptor, while it is owned.
                unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
            })
            .map_err(|e| Error::io("register inotify instance", e))?;
        let mut w = DirWatcher {
            inotify,
            root,
            recursive: req.recursive,
            include_entry: req.include_entry,
            user_db,
            dirs: HashMap::new(),
            temp_moves: HashSet::new(),
            buf: vec![0; EVENT_BUFFER],
        };
        w.add_tree(PathBuf::new())?;
        Ok((w, fd))
    }

    /// Watch `rel` (relative to the root) and, when recursive, every directory below it.
    fn add_tree(&mut self, rel: PathBuf) -> Result<(), Error> {
        let abs = self.root.join(&rel);
        // The root may be named through a symlink; below it, a link is an entry, not a
        // directory to watch.
        let follow = if rel.as_os_str().is_empty() {
            WatchMask::empty()
        } else {
            WatchMask::DONT_FOLLOW
        };
        let wd = self
            .inotify
            .watches()
            .add(&abs, mask() | follow)
            .map_err(|e| Error::io(format!("watch {}", abs.display()), e))?;
        self.dirs.insert(wd, rel.clone());
        if self.recursive {
            if let Ok(read) = std::fs::read_dir(&abs) {
                for entry in read.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        // A directory that vanished meanwhile is not an error.
                        let _ = self.add_tree(rel.join(entry.file_name()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything queued right now, as read. Never waits.
    fn read_queued(&mut self) -> Vec<Queued> {
        let mut queued = Vec::new();
        // Until WouldBlock: the queue is empty.
        while let Ok(events) = self.inotify.read_events(&mut self.buf) {
            for e in events {
                queued.push(Queued {
                    wd: e.wd,
                    mask: e.mask,
                    cookie: e.cookie,
                    name: e.name.map(OsStr::to_os_string),
                });
            }
        }
        queued
    }

    /// Whether translating `queued` touches the filesystem (describing entries, watching
    /// new directories), so that it is better done on a blocking thread.
    fn touches_filesystem(&self, queued: &[Queued]) -> bool {
        (self.include_entry && !queued.is_empty())
            || queued.iter().any(|e| self.watches_new_dir(e.mask))
    }

    /// Whether an event of `mask` is a directory to watch too.
    fn watches_new_dir(&self, mask: EventMask) -> bool {
        self.recursive
            && mask.contains(EventMask::ISDIR)
            && mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
    }

    /// `queued` as envd reports it.
    fn translate(&mut self, queued: Vec<Queued>) -> Vec<FilesystemEvent> {
        let mut out = Vec::new();
        for Queued {
            wd,
            mask,
            cookie,
            name,
        } in queued
        {
            if mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&wd);
                continue;
            }
            let Some(dir) = self.dirs.get(&wd).cloned() else {
                continue;
            };
            let rel = match &name {
                Some(n) => dir.join(n),
                None => dir.clone(),
            };
            let from_temp = name.as_deref().is_some_and(is_temp);
            if mask.contains(EventMask::MOVED_FROM) && from_temp {
                self.temp_moves.insert(cookie);
                continue;
            }
            if from_temp {
                continue;
            }
            if mask.contains(EventMask::MOVED_TO) && self.temp_moves.remove(&cookie) {
                for t in [EventType::Create, EventType::Chmod, EventType::Write] {
                    out.push(self.event(&rel, t));
                }
                continue;
            }
            if self.watches_new_dir(mask) {
                let _ = self.add_tree(rel.clone());
            }
            let kind = if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                EventType::Create
            } else if mask.contains(EventMask::MODIFY) {
                EventType::Write
            } else if mask.intersects(EventMask::DELETE | EventMask::DELETE_SELF) {
                EventType::Remove
            } else if mask.intersects(EventMask::MOVED_FROM | EventMask::MOVE_SELF) {
                EventType::Rename
            } else if mask.contains(EventMask::ATTRIB) {
                EventType::Chmod
            } else {
                continue;
            };
            out.push(self.event(&rel, kind));
        }
        out
    }

    fn event(&self, rel: &Path, kind: EventType) -> FilesystemEvent {
        let entry = if self.include_entry && !matches!(kind, EventType::Remove | EventType::Rename)
        {
            entry_info(&self.root.join(rel), &self.user_db.load()).ok()
        } else {
            None
        };
        FilesystemEvent {
            name: rel.to_string_lossy().into_owned(),
            event_type: kind,
            entry,
        }
    }
}

fn on_network_mount(path: &Path) -> bool {
    fs_type(path).is_some_and(|t| NETWORK_FS_MAGIC.contains(&t))
}

/// Wait until the inotify queue has something, then let `f` drain it.
async fn wait_readable(fd: &AsyncFd<OwnedFd>) -> bool {
    match fd.readable().await {
        Ok(mut guard) => {
            // The caller drains until the queue is empty, so clearing is safe.
            guard.clear_ready();
            true
        }
        Err(_) => false,
    }
}

/// Start watching on a blocking thread: a recursive watch reads the whole tree.
async fn open(
    state: &AppState,
    username: Option<&str>,
    req: WatchDirRequest,
) -> Result<(DirWatcher, AsyncFd<OwnedFd>), Error> {
    let (user, _) = state.user(username)?;
    let root = state.resolve_path(&req.path, &user)?;
    let user_db = state.user_db.clone();
    blocking::run(move || DirWatcher::new(root, &req, user_db)).await
}

/// What the watcher `holder` holds has queued, translated: on a blocking thread when that
/// touches the filesystem, here otherwise (no trip to a thread for a plain batch).
async fn drain<H: Send + 'static>(
    mut holder: H,
    watcher: fn(&mut H) -> &mut DirWatcher,
) -> Result<(H, Vec<FilesystemEvent>), Error> {
    let w = watcher(&mut holder);
    let queued = w.read_queued();
    if !w.touches_filesystem(&queued) {
        let events = w.translate(queued);
        return Ok((holder, events));
    }
    blocking::run(move || {
        let events = watcher(&mut holder).translate(queued);
        Ok((holder, events))
    })
    .await
}

pub async fn watch_dir(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    opts: StreamOptions,
    StreamRequest(req): StreamRequest<WatchDirRequest>,
) -> Response {
    let (mut watcher, fd) = match open(&state, username.as_deref(), req).await {
        Ok(w) => w,
        Err(e) => return rpc::stream_error(e),
    };
    let (tx, rx) = mpsc::channel(256);
    let _ = tx.try_send(Ok(WatchDirResponse::Start {}));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ready = wait_readable(&fd) => {
                    if !ready {
                        return;
                    }
                }
                // Stop watching as soon as the client is gone, even if nothing changes.
                _ = tx.closed() => return,
            }
            let events;
            (watcher, events) = match drain(watcher, |w| w).await {
                Ok(drained) => drained,
                Err(_) => return,
            };
            for ev in events {
                if tx
                    .send(Ok(WatchDirResponse::Filesystem(Box::new(ev))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let keepalive = opts.keepalive.map(|d| (d, WatchDirResponse::Keepalive {}));
    rpc::server_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        keepalive,
        opts.timeout,
    )
}

/// A watcher polled through `GetWatcherEvents`.
struct Polled {
    inner: Arc<tokio::sync::Mutex<Pending>>,
    /// The background drain, stopped with the watcher (it holds a descriptor of the
    /// inotify instance, which would otherwise keep the watches alive).
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
}

/// A polled watcher and the events it has for the next poll.
struct Pending {
    watcher: DirWatcher,
    events: Vec<FilesystemEvent>,
}

impl Polled {
    /// Move what inotify has queued into the pending events; returns them, locked.
    async fn collect(&self) -> Result<OwnedMutexGuard<Pending>, Error> {
        let pending = self.inner.clone().lock_owned().await;
        let (mut pending, events) = drain(pending, |p| &mut p.watcher).await?;
        pending.events.extend(events);
        Ok(pending)
    }
}

impl Drop for Polled {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// The polled watchers, by id.
#[derive(Default)]
pub struct Watchers {
    next_id: AtomicU64,
    map: Mutex<HashMap<String, Arc<Polled>>>,
}

impl Watchers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Polled>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Polled>, Error> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("watcher {id:?} not found")))
    }
}

pub async fn create_watcher(
    State(state): State<AppState>,
    RpcUser(username): RpcUser,
    Unary(req): Unary<WatchDirRequest>,
) -> Result<Json<CreateWatcherResponse>, Error> {
    let (watcher, fd) = open(&state, username.as_deref(), req).await?;
    let id = format!(
        "w{}",
        state.watchers.next_id.fetch_add(1, Ordering::Relaxed) + 1
    );
    let polled = Arc::new(Polled {
        inner: Arc::new(tokio::sync::Mutex::new(Pending {
            watcher,
            events: Vec::new(),
        })),
        task: std::sync::OnceLock::new(),
    });
    let weak: Weak<Polled> = Arc::downgrade(&polled);
    // Drain in the background too, so that directories created below a recursive watch
    // are watched before anything is written in them.
    let task = tokio::spawn(async move {
        while wait_readable(&fd).await {
            let Some(polled) = weak.upgrade() else {
                return;
            };
            if polled.collect().await.is_err() {
                return;
            }
        }
    });
    let _ = polled.task.set(task.abort_handle());
    state.watchers.map().insert(id.clone(), polled);
    Ok(Json(CreateWatcherResponse { watcher_id: id }))
}

pub async fn get_watcher_events(
    State(state): State<AppState>,
    Unary(req): Unary<GetWatcherEventsRequest>,
) -> Result<Json<GetWatcherEventsResponse>, Error> {
    let polled = state.watchers.get(&req.watcher_id)?;
    let events = std::mem::take(&mut polled.collect().await?.events);
    Ok(Json(GetWatcherEventsResponse { events }))
}

pub async fn remove_watcher(
    State(state): State<AppState>,
    Unary(req): Unary<RemoveWatcherRequest>,
) -> Result<Json<Empty>, Error> {
    state
        .watchers
        .map()
        .remove(&req.watcher_id)
        .ok_or_else(|| Error::NotFound(format!("watcher {:?} not found", req.watcher_id)))?;
    Ok(Json(Empty {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_to_a_directory_is_watched_as_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let users = UserDb::new(dir.path().join("passwd"), dir.path().join("group"));
        let req = WatchDirRequest {
            recursive: true,
            ..Default::default()
        };
        let (watcher, _fd) = DirWatcher::new(dir.path().join("link"), &req, users).unwrap();
        std::fs::write(real.join("f.txt"), "x").unwrap();
        let (_, events) = drain(watcher, |w| w).await.unwrap();
        let events: Vec<_> = events.into_iter().map(|e| (e.event_type, e.name)).collect();
        assert_eq!(
            events,
            [
                (EventType::Create, "f.txt".to_string()),
                (EventType::Write, "f.txt".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn only_entries_and_new_directories_take_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let users = UserDb::new(dir.path().join("passwd"), dir.path().join("group"));
        let watch = |recursive, include_entry| {
            let req = WatchDirRequest {
                recursive,
                include_entry,
                ..Default::default()
            };
            DirWatcher::new(dir.path().to_path_buf(), &req, users.clone())
                .unwrap()
                .0
        };
        let (mut plain, mut recursive, mut described) =
            (watch(false, false), watch(true, false), watch(false, true));

        std::fs::write(dir.path().join("f.txt"), "x").unwrap();
        let queued = plain.read_queued();
        assert!(!queued.is_empty() && !plain.touches_filesystem(&queued));
        let queued = recursive.read_queued();
        assert!(!recursive.touches_filesystem(&queued));
        let queued = described.read_queued();
        assert!(described.touches_filesystem(&queued));

        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let queued = plain.read_queued();
        assert!(!plain.touches_filesystem(&queued));
        let queued = recursive.read_queued();
        assert!(recursive.touches_filesystem(&queued));
        assert!(!described.touches_filesystem(&[]));
    }
}
