//! The host name a client asks for in its first bytes: TLS's server name (SNI) or
//! HTTP/1's Host header.

use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// TLS record type of a handshake: the first byte of every ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to tell.
    Incomplete,
    /// The name asked for, lowercase, without a port.
    Name(String),
    /// The client speaks TLS or HTTP without naming a host, or something else.
    NoName,
}

pub fn server_name(head: &[u8]) -> Sniffed {
    match head.first() {
        None => Sniffed::Incomplete,
        Some(&TLS_HANDSHAKE) => tls_server_name(head),
        Some(_) => http_host(head),
    }
}

fn tls_server_name(head: &[u8]) -> Sniffed {
    let record = match parse_tls_plaintext(head) {
        Ok((_, record)) => record,
        Err(tls_parser::nom::Err::Incomplete(_)) => return Sniffed::Incomplete,
        Err(_) => return Sniffed::NoName,
    };
    let extensions = record.msg.iter().find_map(|msg| match msg {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) => hello.ext,
        _ => None,
    });
    let Some(Ok((_, extensions))) = extensions.map(parse_tls_extensions) else {
        return Sniffed::NoName;
    };
    extensions
        .iter()
        .find_map(|ext| match ext {
            TlsExtension::SNI(names) => names
                .iter()
                .find(|(kind, _)| *kind == SNIType::HostName)
                .and_then(|(_, name)| std::str::from_utf8(name).ok()),
            _ => None,
        })
        .map_or(Sniffed::NoName, |name| {
            Sniffed::Name(name.to_ascii_lowercase())
        })
}

fn http_host(head: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => Sniffed::Incomplete,
        Ok(httparse::Status::Complete(_)) => request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|host| host.trim())
            .map(|host| host.rsplit_once(':').map_or(host, |(name, _port)| name))
            .map_or(Sniffed::NoName, |name| {
                Sniffed::Name(name.to_ascii_lowercase())
            }),
        Err(_) => Sniffed::NoName,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.2 ClientHello with one extension, server_name = `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let name = name.as_bytes();
        let mut sni = Vec::new();
        let list_len = 3 + name.len();
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0); // host_name
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut ext = vec![0, 0]; // extension type server_name
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);

        let mut body = vec![3, 3]; // client_version TLS 1.2
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // no session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);

        let mut handshake = vec![1]; // client_hello
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);

        let mut record = vec![TLS_HANDSHAKE, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn reads_the_tls_server_name() {
        let hello = client_hello("Files.PyPI.org");
        assert_eq!(server_name(&hello), Sniffed::Name("files.pypi.org".into()));
        assert_eq!(server_name(&hello[..20]), Sniffed::Incomplete);
        assert_eq!(server_name(&[]), Sniffed::Incomplete);
    }

    #[test]
    fn reads_the_http_host() {
        let req = b"GET / HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n";
        assert_eq!(server_name(req), Sniffed::Name("example.com".into()));
        assert_eq!(server_name(&req[..20]), Sniffed::Incomplete);
        assert_eq!(
            server_name(b"GET / HTTP/1.0\r\n\r\n"),
            Sniffed::NoName,
            "HTTP/1.0 without Host"
        );
        assert_eq!(server_name(b"\x00\x01garbage\r\n\r\n"), Sniffed::NoName);
    }
}
