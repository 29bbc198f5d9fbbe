//! DNS of sandboxes with host-name rules, redirected here by the firewall: names the
//! rules do not allow are answered REFUSED, the rest are forwarded to a resolver.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Rules, Slot};
use crate::network::policy::{Cidr, EgressPolicy};

const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest DNS message over UDP (EDNS allows up to 64 KiB).
const MAX_MESSAGE: usize = 65_535;

/// Where allowed queries go.
pub(super) struct Upstreams {
    /// The server's resolver, for sandboxes that name none.
    pub(super) default: SocketAddr,
    /// Never a sandbox's resolver: silo would relay to other sandboxes, the host or
    /// the metadata service for it (the API refuses them too).
    pub(super) blocked: Arc<[Cidr]>,
}

impl Upstreams {
    /// The sandbox's first resolver, else the default; `None` when the sandbox's is
    /// one it may not reach.
    fn of(&self, policy: &EgressPolicy) -> Option<SocketAddr> {
        match policy
            .dns_servers
            .as_ref()
            .and_then(|servers| servers.first())
        {
            None => Some(self.default),
            Some(ip) if self.blocked.iter().any(|c| c.contains(*ip)) => None,
            Some(ip) => Some(SocketAddr::from((*ip, 53))),
        }
    }
}

/// Answer each query in a task of its own. Beyond the sandbox's or the overall cap on
/// queries in flight (`all`), a query is dropped: its client asks again.
pub(super) async fn serve(
    socket: UdpSocket,
    rules: Rules,
    upstreams: Upstreams,
    all: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let upstreams = Arc::new(upstreams);
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
        let Some(slot) = Slot::take(&sandbox.queries, &all) else {
            continue;
        };
        let query = buf[..len].to_vec();
        let socket = Arc::clone(&socket);
        let upstreams = Arc::clone(&upstreams);
        tokio::spawn(async move {
            let policy = &sandbox.policy;
            if let Some(reply) = answer(&query, policy, peer, upstreams.of(policy)).await {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(slot);
        });
    }
}

/// REFUSED for a name the rules do not allow, or when there is no resolver to ask;
/// else the resolver's answer.
async fn answer(
    query: &[u8],
    policy: &EgressPolicy,
    peer: SocketAddrV4,
    upstream: Option<SocketAddr>,
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
    let Some(upstream) = upstream else {
        tracing::warn!(sandbox = %peer.ip(), "DNS refused: the sandbox's resolver is one sandboxes never reach");
        return refused(&message);
    };
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
        let reply = answer(&bytes, &policy, peer, "127.0.0.1:9".parse().ok())
            .await
            .expect("a refusal");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(reply.queries(), query.queries());
        assert!(reply.answers().is_empty());

        // An allowed name with no resolver to ask: refused too, at once.
        let bytes = query_for("a.example.com.");
        let reply = answer(&bytes, &policy, peer, None)
            .await
            .expect("a refusal");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.response_code(), ResponseCode::Refused);
    }

    fn query_for(name: &str) -> Vec<u8> {
        let mut query = Message::new();
        query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        query.to_vec().unwrap()
    }

    #[test]
    fn a_sandbox_never_has_its_queries_sent_where_it_may_not_go() {
        let upstreams = Upstreams {
            // The host's own stub resolver is fine as the server's choice.
            default: "127.0.0.53:53".parse().unwrap(),
            blocked: vec![
                "10.213.0.0/16".parse().unwrap(),
                "169.254.0.0/16".parse().unwrap(),
            ]
            .into(),
        };
        let naming = |ip: &str| EgressPolicy {
            dns_servers: Some(vec![ip.parse().unwrap(), "1.1.1.1".parse().unwrap()]),
            ..EgressPolicy::default()
        };
        assert_eq!(
            upstreams.of(&EgressPolicy::default()),
            Some(upstreams.default)
        );
        assert_eq!(upstreams.of(&naming("9.9.9.9")), "9.9.9.9:53".parse().ok());
        assert_eq!(upstreams.of(&naming("10.213.0.6")), None, "another sandbox");
        assert_eq!(upstreams.of(&naming("169.254.169.254")), None, "metadata");
    }
}
