//! DNS of sandboxes with host-name rules, redirected here by the firewall: names the
//! rules do not allow are answered REFUSED, the rest are forwarded to a resolver.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Rules;
use crate::network::policy::EgressPolicy;

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries in flight to resolvers at once, over all sandboxes; more are dropped (a
/// client asks again).
const IN_FLIGHT: usize = 256;
/// Largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;

pub(super) async fn serve(
    socket: UdpSocket,
    rules: Rules,
    default_upstream: SocketAddr,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let Ok((len, SocketAddr::V4(peer))) = received else {
            continue;
        };
        let Some(sandbox) = rules.of(*peer.ip()) else {
            continue;
        };
        let policy = sandbox.policy;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..len].to_vec();
        let socket = socket.clone();
        tokio::spawn(async move {
            let upstream = policy
                .dns_servers
                .as_ref()
                .and_then(|servers| servers.first())
                .map_or(default_upstream, |ip| SocketAddr::from((*ip, 53)));
            if let Some(reply) = answer(&query, &policy, peer, upstream).await {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

async fn answer(
    query: &[u8],
    policy: &EgressPolicy,
    peer: SocketAddrV4,
    upstream: SocketAddr,
) -> Option<Vec<u8>> {
    let message = Message::from_vec(query).ok()?;
    let denied = message
        .queries()
        .iter()
        .map(|q| q.name().to_utf8())
        .find(|name| !policy.name_allowed(name));
    if let Some(name) = denied {
        tracing::info!(sandbox = %peer.ip(), %name, "DNS refused by host-name rules");
        return refused(&message);
    }
    forward(query, upstream).await
}

/// The query back with RCODE REFUSED and no records.
fn refused(query: &Message) -> Option<Vec<u8>> {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(ResponseCode::Refused)
        .add_queries(query.queries().to_vec());
    reply.to_vec().ok()
}

async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let len = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    #[tokio::test]
    async fn refuses_names_outside_the_rules() {
        let policy = EgressPolicy {
            allow_domains: vec!["*.example.com".parse().unwrap()],
            ..EgressPolicy::default()
        };
        let mut query = Message::new();
        query
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(
                Name::from_ascii("evil.test.").unwrap(),
                RecordType::A,
            ));
        let bytes = query.to_vec().unwrap();
        // Nothing listens on the discard port: an allowed name would time out, not answer.
        let peer = SocketAddrV4::new([10, 213, 0, 2].into(), 5353);
        let reply = answer(&bytes, &policy, peer, "127.0.0.1:9".parse().unwrap())
            .await
            .expect("a refusal");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(reply.queries(), query.queries());
        assert!(reply.answers().is_empty());
    }
}
