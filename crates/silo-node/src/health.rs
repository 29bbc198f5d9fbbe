//! One readiness probe: `GET /health` over plain HTTP/1.1, success on any 2xx.
//!
//! Hand-written on purpose: one request line and one status line do not need an HTTP
//! client crate in the node.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe `http://addr/health` once. The error says what went wrong, for the caller's
/// eventual timeout message.
pub(crate) async fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let status_line = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|_| "no response in time".to_owned())?
    .map_err(|e| format!("request: {e}"))?;
    let line = String::from_utf8_lossy(&status_line);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some(code) if line.starts_with("HTTP/1.") && code.starts_with('2') => Ok(()),
        _ => Err(format!("unexpected response {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn accepts_2xx_rejects_others() {
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(probe(ok).await, Ok(()));
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(probe(bad).await.is_err());
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(probe(addr).await.is_err());
    }
}
