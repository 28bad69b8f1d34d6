//! Authoritative test DNS server on loopback: answers from an in-memory [`Zone`] over UDP and TCP
//! on one random port of 127.0.0.1, inside the test's own tokio runtime.
//!
//! Owns: the zone records (replaceable while running with [`TestDns::set_zone`]) and a log of the
//! questions asked ([`TestDns::queries`]). Never recurses, never forwards, never caches: a name
//! it does not know answers NXDOMAIN, a known name without the asked type answers NOERROR with
//! no records (NODATA), and names marked with [`Zone::servfail`] answer SERVFAIL.
//!
//! ```ignore
//! let dns = TestDns::start(
//!     Zone::new()
//!         .mx("example.test", 10, "mx1.example.test")
//!         .a("mx1.example.test", "127.0.0.11")
//!         .null_mx("nomail.test")
//!         .servfail("broken.test"),
//! )
//! .await;
//! // config: [dns] nameservers = ["{dns.addr}"]
//! ```

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

/// TTL on every answer. Short so that a resolver cache does not outlive a zone change for long.
const TTL: u32 = 1;

/// Something that names an IP address: an `Ipv4Addr`/`Ipv6Addr`/`IpAddr` or a string such as
/// `"127.0.0.11"` (a bad string panics: it is a bug in the test).
pub trait IntoIp {
    fn into_ip(self) -> IpAddr;
}

impl IntoIp for IpAddr {
    fn into_ip(self) -> IpAddr {
        self
    }
}
impl IntoIp for Ipv4Addr {
    fn into_ip(self) -> IpAddr {
        IpAddr::V4(self)
    }
}
impl IntoIp for Ipv6Addr {
    fn into_ip(self) -> IpAddr {
        IpAddr::V6(self)
    }
}
impl IntoIp for &str {
    fn into_ip(self) -> IpAddr {
        self.parse()
            .unwrap_or_else(|e| panic!("test zone: {self:?} is not an IP address: {e}"))
    }
}
impl IntoIp for &String {
    fn into_ip(self) -> IpAddr {
        self.as_str().into_ip()
    }
}

/// The records the test DNS server answers from. Names are case-insensitive, with or without a
/// trailing dot. Built with chained calls; every call adds (never replaces) records.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: HashMap<String, Vec<RData>>,
    servfail: HashSet<String>,
}

/// Lower-case, no trailing dot: the key under which a name's records are kept.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A fully qualified `Name` for record data (MX exchange, CNAME target, PTR).
fn fqdn(name: &str) -> Name {
    let mut s = name.trim_end_matches('.').to_string();
    s.push('.');
    Name::from_utf8(&s).unwrap_or_else(|e| panic!("test zone: bad domain name {name:?}: {e}"))
}

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, name: &str, data: RData) -> Self {
        self.records.entry(key(name)).or_default().push(data);
        self
    }

    /// `domain MX pref host`.
    pub fn mx(self, domain: &str, pref: u16, host: &str) -> Self {
        self.add(domain, RData::MX(MX::new(pref, fqdn(host))))
    }

    /// Shorthand for a mail domain served by one host: `domain MX 10 mx.domain` and
    /// `mx.domain A ip`.
    pub fn mail_domain(self, domain: &str, ip: impl IntoIp) -> Self {
        let host = format!("mx.{}", key(domain));
        self.mx(domain, 10, &host).a(&host, ip)
    }

    /// RFC 7505 null MX: `domain MX 0 .` — the domain accepts no mail.
    pub fn null_mx(self, domain: &str) -> Self {
        self.add(domain, RData::MX(MX::new(0, Name::root())))
    }

    /// `name A ip`, or `name AAAA ip` when given an IPv6 address.
    pub fn a(self, name: &str, ip: impl IntoIp) -> Self {
        match ip.into_ip() {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }

    /// `name AAAA ip`.
    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Self {
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    /// `name TXT "text"`; text longer than 255 bytes is split into several strings of one record
    /// (as DKIM keys are published), which readers concatenate.
    pub fn txt(self, name: &str, text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while rest.len() > 255 {
            let mut cut = 255;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            parts.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        parts.push(rest.to_string());
        self.add(name, RData::TXT(TXT::new(parts)))
    }

    /// Reverse record: `ip PTR name` (under in-addr.arpa / ip6.arpa).
    pub fn ptr(self, ip: impl IntoIp, name: &str) -> Self {
        let owner = reverse_name(ip.into_ip());
        self.add(&owner, RData::PTR(PTR(fqdn(name))))
    }

    /// `name CNAME target`; a question for `name` is answered with the CNAME and the target's
    /// records of the asked type (one level).
    pub fn cname(self, name: &str, target: &str) -> Self {
        self.add(name, RData::CNAME(CNAME(fqdn(target))))
    }

    /// Every question about `name` (any type) answers SERVFAIL: a broken authoritative server.
    pub fn servfail(mut self, name: &str) -> Self {
        self.servfail.insert(key(name));
        self
    }

    /// Answer for one question: response code and answer records.
    fn answer(&self, qname: &str, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
        let k = key(qname);
        if self.servfail.contains(&k) {
            return (ResponseCode::ServFail, Vec::new());
        }
        let Some(all) = self.records.get(&k) else {
            return (ResponseCode::NXDomain, Vec::new());
        };
        let owner = fqdn(&k);
        let mut out = Vec::new();
        let cname = all.iter().find_map(|r| match r {
            RData::CNAME(c) => Some(c.0.clone()),
            _ => None,
        });
        if let (Some(target), false) = (cname, matches!(qtype, RecordType::CNAME)) {
            out.push(Record::from_rdata(
                owner,
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            let tkey = key(&target.to_utf8());
            if let Some(trecs) = self.records.get(&tkey) {
                for r in trecs
                    .iter()
                    .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                {
                    out.push(Record::from_rdata(target.clone(), TTL, r.clone()));
                }
            }
            return (ResponseCode::NoError, out);
        }
        for r in all
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
        {
            out.push(Record::from_rdata(owner.clone(), TTL, r.clone()));
        }
        (ResponseCode::NoError, out)
    }
}

/// `4.3.2.1.in-addr.arpa` / nibble-reversed `ip6.arpa` owner name for an address.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// One question the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: String,
}

struct Handler {
    zone: Arc<RwLock<Zone>>,
    log: Arc<Mutex<Vec<Query>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let answers = match request.request_info() {
            Ok(info) => {
                let qname = info.query.name().to_string();
                let qtype = info.query.query_type();
                self.log.lock().expect("dns log lock").push(Query {
                    name: key(&qname),
                    qtype: qtype.to_string(),
                });
                let (code, answers) = self.zone.read().expect("zone lock").answer(&qname, qtype);
                meta.response_code = code;
                answers
            }
            Err(_) => {
                meta.response_code = ResponseCode::FormErr;
                Vec::new()
            }
        };
        let response = builder.build(meta, answers.iter(), [].iter(), [].iter(), [].iter());
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// A running test DNS server. Stops when dropped.
pub struct TestDns {
    /// `127.0.0.1:PORT`, the same port for UDP and TCP. Put it in `[dns] nameservers`.
    pub addr: SocketAddr,
    zone: Arc<RwLock<Zone>>,
    log: Arc<Mutex<Vec<Query>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    /// Binds UDP and TCP on one free port of 127.0.0.1 and serves `zone` until dropped.
    pub async fn start(zone: Zone) -> TestDns {
        let zone = Arc::new(RwLock::new(zone));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().expect("dns udp local addr");
        let mut server = Server::new(Handler {
            zone: zone.clone(),
            log: log.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64);
        let task = tokio::spawn(async move {
            // The server runs until this task is aborted (on drop); its own tasks live in its
            // JoinSet and are aborted with it.
            let _ = server.block_until_done().await;
        });
        TestDns {
            addr,
            zone,
            log,
            task,
        }
    }

    /// Replaces the records served from now on.
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write().expect("zone lock") = zone;
    }

    /// Every question received so far, oldest first.
    pub fn queries(&self) -> Vec<Query> {
        self.log.lock().expect("dns log lock").clone()
    }

    /// `nameservers = ["127.0.0.1:PORT"]` line for a config `[dns]` section.
    pub fn config_line(&self) -> String {
        format!("nameservers = [\"{}\"]", self.addr)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
async fn bind_udp_and_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind dns udp");
        let port = udp.local_addr().expect("udp addr").port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("test dns: no port of 127.0.0.1 was free for both UDP and TCP after 50 tries");
}
