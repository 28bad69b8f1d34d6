//! Test fixture: an authoritative DNS server on 127.0.0.1 (random port, UDP and TCP) serving
//! zones given as zone-file text, built on hickory-server. Test-only; the server stops when the
//! value is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

pub struct TestDns {
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

/// A zone's SOA and NS lines for `origin` (with trailing dot).
pub fn soa(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL 60\n@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60\n@ IN NS ns.{origin}\n"
    )
}

impl TestDns {
    /// Serve `zones`: (origin with trailing dot, zone text).
    pub async fn start(zones: &[(&str, String)]) -> TestDns {
        let mut catalog = Catalog::new();
        for (origin, text) in zones {
            let origin_name = Name::from_ascii(origin).expect("origin");
            let (name, records) = Parser::new(text.as_str(), None, Some(origin_name))
                .parse()
                .unwrap_or_else(|e| panic!("zone {origin} does not parse: {e}\n{text}"));
            let handler: InMemoryZoneHandler = InMemoryZoneHandler::new(
                name.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .expect("zone");
            catalog.upsert(LowerName::new(&name), vec![Arc::new(handler)]);
        }
        let mut server = Server::new(catalog);
        // UDP first on a random port, then TCP on the same port (truncated answers retry on TCP).
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("udp bind");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
                return TestDns {
                    addr,
                    _server: server,
                };
            }
        }
        panic!("no free UDP+TCP port pair on 127.0.0.1");
    }
}
