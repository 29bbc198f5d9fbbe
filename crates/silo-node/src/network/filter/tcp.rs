//! TCP to ports 80 and 443, redirected here by the firewall: allowed by host name or
//! address, then relayed to where the sandbox was going.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::sniff::{server_name, Sniffed};
use super::{Rules, Slot};
use crate::network::policy::{Cidr, EgressPolicy};

/// Longest wait for the client's first bytes, and for the connection out.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello or a request head bigger than this names no host we look for.
const SNIFF_LIMIT: usize = 16 * 1024;
/// TLS fatal alert `access_denied`: the client reports it instead of a bare reset.
const TLS_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

/// Relay each connection in a task of its own. Beyond the sandbox's or the overall cap
/// on connections held (`all`), a new one is closed at once.
pub(super) async fn serve(
    listener: TcpListener,
    rules: Rules,
    blocked: Arc<[Cidr]>,
    all: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (conn, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "egress filter: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else { continue };
        // Only a sandbox with host-name rules is redirected here; anyone else is not
        // served (the port is open on every host address).
        let Some(sandbox) = rules.of(*peer.ip()) else {
            continue;
        };
        let Some(slot) = Slot::take(&sandbox.connections, &all) else {
            // Not logged each time: a sandbox at its cap could flood the log.
            continue;
        };
        let blocked = blocked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = sandbox.gone.cancelled() => {}
                () = relay(conn, peer, &sandbox.policy, &blocked) => {}
            }
            drop(slot);
        });
    }
}

async fn relay(mut conn: TcpStream, peer: SocketAddrV4, policy: &EgressPolicy, blocked: &[Cidr]) {
    let Ok(dst) = getsockopt(&conn, OriginalDst) else {
        return;
    };
    let dst = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(dst.sin_addr.s_addr)),
        u16::from_be(dst.sin_port),
    );
    // The firewall redirects no blocked destination; this guards against a change there.
    if blocked.iter().any(|c| c.contains(*dst.ip())) {
        return;
    }
    let (head, name) = sniff(&mut conn).await;
    if !policy.permits(*dst.ip(), name.as_deref()) {
        tracing::info!(sandbox = %peer.ip(), %dst, name = name.as_deref().unwrap_or("-"), "egress denied by host-name rules");
        let _ = conn.write_all(&refusal(&head, name.as_deref())).await;
        return;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(upstream)) => upstream,
        _ => return,
    };
    let mut upstream = upstream;
    if upstream.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
}

/// Read until the host name shows (or cannot); returns the bytes read and the name.
async fn sniff(conn: &mut TcpStream) -> (Vec<u8>, Option<String>) {
    let mut head = Vec::with_capacity(2048);
    let read = async {
        loop {
            match server_name(&head) {
                Sniffed::Name(name) => return Some(name),
                Sniffed::NoName => return None,
                Sniffed::Incomplete if head.len() >= SNIFF_LIMIT => return None,
                Sniffed::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let name = tokio::time::timeout(SNIFF_TIMEOUT, read)
        .await
        .ok()
        .flatten();
    (head, name)
}

/// What a refused client reads: a TLS alert, or an HTTP 403 that says why.
fn refusal(head: &[u8], name: Option<&str>) -> Vec<u8> {
    if head.first() == Some(&0x16) {
        return TLS_ACCESS_DENIED.to_vec();
    }
    let body = format!(
        "silo: this sandbox's network rules do not allow {}\n",
        name.unwrap_or("this destination")
    );
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
