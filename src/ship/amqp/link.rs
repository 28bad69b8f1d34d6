//! One AMQP 0-9-1 connection to a broker, used to publish batches with publisher confirms.
//!
//! Owns: the socket (TCP or TLS), the handshake (SASL PLAIN/AMQPLAIN, tune, one channel in
//! confirm mode), the framing of each message (method, header and body frames), the delivery
//! tags and the confirms the broker sends back, heartbeats while idle. Never does: retry,
//! reconnect or decide what to publish (the [`super::Amqp`] destination and its runner do).
//!
//! Why by hand, on top of `amq-protocol` (lapin's own codec, which encodes and parses every
//! frame here): lapin, the well-kept client, hands each publish to its I/O thread through a
//! channel, wakes that thread and completes a promise per message; with events shipped at
//! Gannet's delivery rate that was ~4% of Gannet's CPU (its I/O thread ~2%, the publishing
//! side ~2%, plus a context switch per few events). `amqprs` writes every frame with its own
//! syscall. A publisher that only ever does one thing (publish a batch on one channel, then
//! read its confirms) needs none of that machinery: here a whole batch is framed into one
//! buffer and written with one call on the runner's own task, and the confirms are read on
//! the same task, so no thread is woken per event.

use std::time::{Duration, Instant};

use amq_protocol::auth::Credentials;
use amq_protocol::frame::{AMQPFrame, ProtocolVersion, WriteContext};
use amq_protocol::frame::{gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use bytes::{Buf, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The one channel Gannet publishes on.
const CHANNEL: u16 = 1;
/// Frame type octets, and the octet ending every frame (AMQP 0-9-1 §4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
/// `basic` is class 60; `basic.publish` its method 40.
const CLASS_BASIC: u16 = 60;
const METHOD_PUBLISH: u16 = 40;
const FRAME_END: u8 = 0xCE;
/// A frame's type, channel and payload size come first: 7 bytes, then payload, then FRAME_END.
const FRAME_HEAD: usize = 7;
/// What Gannet asks for when the broker leaves the frame size open (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;
/// The runner calls `idle` every 30 s when nothing is shipped, and that is when heartbeats go
/// out: a broker asking for a shorter interval would close a quiet connection, so Gannet
/// answers with at least this (the broker closes after two silent intervals).
const MIN_HEARTBEAT: u16 = 60;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open connection with channel [`CHANNEL`] in confirm mode.
pub struct Link {
    io: Box<dyn Io>,
    /// Bytes read from the broker and not yet parsed.
    rbuf: BytesMut,
    /// The frames of the batch being published (kept to reuse its allocation).
    wbuf: Vec<u8>,
    frame_max: u32,
    /// 0 when heartbeats are off.
    heartbeat: u16,
    last_write: Instant,
    /// The delivery tag the next message gets (the broker counts from 1 per channel).
    next_tag: u64,
    /// The tag of the first message pushed since the last [`Link::confirm`].
    first_unconfirmed: u64,
    /// Why the broker stopped reading from publishers (`connection.blocked`), until it
    /// says `unblocked`.
    blocked: Option<String>,
}

/// One message to publish: persistent (`delivery_mode` 2), `content_type`
/// `application/json`, with these `message_id`, `type` and `timestamp` properties.
pub struct Message<'a> {
    pub routing_key: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    pub body: &'a [u8],
}

impl Link {
    /// Connect, authenticate, open the channel and turn on publisher confirms.
    pub async fn open(uri: &AMQPUri) -> Result<Link, String> {
        let host = uri.authority.host.as_str();
        let tcp = TcpStream::connect((host, uri.authority.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match uri.scheme {
            AMQPScheme::AMQP => Box::new(tcp),
            AMQPScheme::AMQPS => {
                let tls = mail_send::smtp::tls::build_tls_connector(false)
                    .map_err(|e| format!("cannot set up TLS: {e}"))?;
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| format!("{host:?} is not a name TLS can check: {e}"))?;
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?,
                )
            }
        };
        let mut link = Link {
            io,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: Vec::new(),
            frame_max: FRAME_MAX,
            heartbeat: 0,
            last_write: Instant::now(),
            next_tag: 1,
            first_unconfirmed: 1,
            blocked: None,
        };
        link.handshake(uri).await?;
        Ok(link)
    }

    async fn handshake(&mut self, uri: &AMQPUri) -> Result<(), String> {
        self.frame(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))?;
        self.flush().await?;
        let start = match self.next_frame().await? {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            AMQPFrame::ProtocolHeader(v) => {
                return Err(format!("the broker speaks AMQP {v}, not 0-9-1"));
            }
            other => return Err(unexpected("connection.start", &other)),
        };
        let mechanism = uri.query.auth_mechanism.unwrap_or_default();
        let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !offered.split(' ').any(|m| m == mechanism.name()) {
            return Err(format!(
                "the broker does not offer {} authentication (it offers {offered})",
                mechanism.name()
            ));
        }
        let credentials = Credentials::new(
            uri.authority.userinfo.username.as_str().into(),
            uri.authority.userinfo.password.as_str().into(),
        );
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(),
                mechanism: mechanism.name().into(),
                response: credentials.sasl_auth_string(mechanism),
                locale: "en_US".into(),
            })),
        )?;
        self.flush().await?;
        let tune = match self.reply().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            AMQPClass::Connection(connection::AMQPMethod::Secure(_)) => {
                return Err(format!(
                    "the broker asked for a {} challenge Gannet does not answer",
                    mechanism.name()
                ));
            }
            other => return Err(unexpected_method("connection.tune", &other)),
        };
        self.frame_max =
            negotiate(tune.frame_max, uri.query.frame_max.unwrap_or(0), FRAME_MAX).max(4096);
        self.heartbeat = match negotiate(
            u32::from(tune.heartbeat),
            u32::from(uri.query.heartbeat.unwrap_or(0)),
            0,
        ) {
            0 => 0,
            h => (h as u16).max(MIN_HEARTBEAT),
        };
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 1,
                frame_max: self.frame_max,
                heartbeat: self.heartbeat,
            })),
        )?;
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        )?;
        self.flush().await?;
        match self.reply().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected_method("connection.open-ok", &other)),
        }
        self.method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )?;
        self.method(
            CHANNEL,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )?;
        self.flush().await?;
        match self.reply().await? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected_method("channel.open-ok", &other)),
        }
        match self.reply().await? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
            other => Err(unexpected_method("confirm.select-ok", &other)),
        }
    }

    /// Frame `m` for `exchange` behind what was pushed before (nothing is sent yet).
    pub fn push(&mut self, exchange: &str, m: &Message) {
        push_publish(&mut self.wbuf, exchange, m);
        push_body(&mut self.wbuf, m.body, self.frame_max);
        self.next_tag += 1;
    }

    /// Send what was pushed, in order, and wait until the broker has confirmed every
    /// message of it. Err on a nack, a closed channel or connection, or a broken socket:
    /// the link is then unusable and the caller drops it.
    pub async fn confirm(&mut self) -> Result<(), String> {
        let first = std::mem::replace(&mut self.first_unconfirmed, self.next_tag);
        let count = (self.next_tag - first) as usize;
        if count == 0 {
            return Ok(());
        }
        self.flush().await?;
        let mut confirms = Confirms::new(first, count);
        while !confirms.all() {
            match self.next_frame().await? {
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                    confirms.ack(a.delivery_tag, a.multiple);
                }
                AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    return Err(format!(
                        "the broker refused (nack) message {} of the batch",
                        n.delivery_tag.saturating_sub(first) + 1
                    ));
                }
                other => self.aside(other).await?,
            }
        }
        Ok(())
    }

    /// While nothing is published: answer what the broker sent meanwhile (a close, a
    /// block) and send a heartbeat when one is due. Err when the link is no longer usable.
    pub async fn keep_alive(&mut self) -> Result<(), String> {
        // Take what has arrived, without waiting for more.
        loop {
            self.rbuf.reserve(8 * 1024);
            match self.io.read_buf(&mut self.rbuf).now_or_never() {
                None => break,
                Some(Ok(0)) => return Err("the broker closed the connection".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("reading from the broker failed: {e}")),
            }
        }
        while let Some(frame) = self.ready_frame()? {
            self.aside(frame).await?;
        }
        if self.heartbeat > 0
            && self.last_write.elapsed() >= Duration::from_secs(u64::from(self.heartbeat) / 2)
        {
            self.frame(&AMQPFrame::Heartbeat)?;
            self.flush().await?;
        }
        Ok(())
    }

    /// Close politely (the broker logs a clean close instead of a dropped socket).
    pub async fn close(mut self, why: &str) {
        if !self.wbuf.is_empty() {
            // A write was cut off (a timeout): the stream may end inside a frame, and the
            // unsent rest must not go out; just drop the socket.
            return;
        }
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: why.into(),
            class_id: 0,
            method_id: 0,
        }));
        if self.method(0, close).is_ok() && self.flush().await.is_ok() {
            // Wait for close-ok so the broker does not log an abrupt end; whatever it sends.
            let _ = self.next_frame().await;
        }
    }

    /// A frame that is not a confirm: what the broker tells outside the publish/confirm flow.
    async fn aside(&mut self, frame: AMQPFrame) -> Result<(), String> {
        match frame {
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                let _ = self.method(0, AMQPClass::Connection(ok));
                let _ = self.flush().await;
                Err(format!(
                    "the broker closed the connection: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                ))
            }
            AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                let ok = channel::AMQPMethod::CloseOk(channel::CloseOk {});
                let _ = self.method(ch, AMQPClass::Channel(ok));
                let _ = self.flush().await;
                Err(format!(
                    "the broker closed the channel: {} {}",
                    c.reply_code,
                    c.reply_text.as_str()
                ))
            }
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
                tracing::warn!(target: "gannet::ship", reason = b.reason.as_str(), "the AMQP broker stopped taking messages (connection.blocked); events wait in the outbox");
                self.blocked = Some(b.reason.as_str().to_string());
                Ok(())
            }
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {
                self.blocked = None;
                Ok(())
            }
            // Heartbeats, and anything else a publisher-only channel may be sent (returns
            // need `mandatory`, which Gannet does not set), need no answer.
            _ => Ok(()),
        }
    }

    /// Why the broker is not confirming, if it said (`connection.blocked`).
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The next method on the handshake path (heartbeats skipped).
    async fn reply(&mut self) -> Result<AMQPClass, String> {
        loop {
            match self.next_frame().await? {
                AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    return Err(format!(
                        "the broker refused the connection: {} {}",
                        c.reply_code,
                        c.reply_text.as_str()
                    ));
                }
                AMQPFrame::Method(_, m) => return Ok(m),
                AMQPFrame::Heartbeat => {}
                other => return Err(unexpected("a method", &other)),
            }
        }
    }

    async fn next_frame(&mut self) -> Result<AMQPFrame, String> {
        loop {
            if let Some(frame) = self.ready_frame()? {
                return Ok(frame);
            }
            self.rbuf.reserve(8 * 1024);
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("reading from the broker failed: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".into());
            }
        }
    }

    /// A whole frame from what was already read, if there is one. Completeness is checked
    /// here from the frame's size field, so the parser only ever sees one whole frame.
    fn ready_frame(&mut self) -> Result<Option<AMQPFrame>, String> {
        let len = match whole_frame_len(&self.rbuf) {
            Some(len) => len,
            None => return Ok(None),
        };
        let frame = match parse_frame(&self.rbuf[..len]) {
            Ok((_, frame)) => frame,
            Err(e) => return Err(format!("the broker sent a frame Gannet cannot read: {e}")),
        };
        self.rbuf.advance(len);
        Ok(Some(frame))
    }

    fn method(&mut self, channel: u16, method: AMQPClass) -> Result<(), String> {
        self.frame(&AMQPFrame::Method(channel, method))
    }

    fn frame(&mut self, frame: &AMQPFrame) -> Result<(), String> {
        let buf = std::mem::take(&mut self.wbuf);
        match gen_frame(frame)(WriteContext::from(buf)) {
            Ok(w) => {
                self.wbuf = w.into_inner().0;
                Ok(())
            }
            Err(e) => Err(format!("cannot encode an AMQP frame: {e}")),
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        let r = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r.map_err(|e| format!("writing to the broker failed: {e}"))?;
        self.io
            .flush()
            .await
            .map_err(|e| format!("writing to the broker failed: {e}"))?;
        self.last_write = Instant::now();
        Ok(())
    }
}

/// Basic.Publish and its content header frames for `m`. Encoded here rather than through
/// `amq-protocol`'s `AMQPFrame`, whose owned `ShortString`s and properties cost about five
/// allocations per message; a test checks the bytes are the codec's.
fn push_publish(buf: &mut Vec<u8>, exchange: &str, m: &Message) {
    let at = begin_frame(buf, FRAME_METHOD);
    buf.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    buf.extend_from_slice(&METHOD_PUBLISH.to_be_bytes());
    buf.extend_from_slice(&0u16.to_be_bytes()); // reserved (ticket)
    short_str(buf, exchange);
    short_str(buf, m.routing_key);
    buf.push(0); // neither mandatory nor immediate
    end_frame(buf, at);
    let at = begin_frame(buf, FRAME_HEADER);
    buf.extend_from_slice(&CLASS_BASIC.to_be_bytes());
    buf.extend_from_slice(&0u16.to_be_bytes()); // weight
    buf.extend_from_slice(&(m.body.len() as u64).to_be_bytes());
    // Property flags, highest bit first: content-type, delivery-mode, message-id,
    // timestamp, type; the values follow in that order.
    let flags: u16 = 1 << 15 | 1 << 12 | 1 << 7 | 1 << 6 | 1 << 5;
    buf.extend_from_slice(&flags.to_be_bytes());
    short_str(buf, "application/json");
    buf.push(2); // persistent
    short_str(buf, m.message_id);
    buf.extend_from_slice(&m.timestamp.to_be_bytes());
    short_str(buf, m.kind);
    end_frame(buf, at);
}

/// `body` as body frames of at most `frame_max` bytes each. Written here rather than through
/// `AMQPFrame::Body`, which would copy each body into a Vec of its own first.
fn push_body(buf: &mut Vec<u8>, body: &[u8], frame_max: u32) {
    let most = frame_max as usize - FRAME_HEAD - 1;
    for chunk in body.chunks(most) {
        let at = begin_frame(buf, FRAME_BODY);
        buf.extend_from_slice(chunk);
        end_frame(buf, at);
    }
}

/// A frame's type and channel, and room for its size; returns where the size goes.
fn begin_frame(buf: &mut Vec<u8>, kind: u8) -> usize {
    buf.push(kind);
    buf.extend_from_slice(&CHANNEL.to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.len() - 4
}

/// The size of the frame begun at `at`, and its end octet.
fn end_frame(buf: &mut Vec<u8>, at: usize) {
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.push(FRAME_END);
}

/// An AMQP short string: a length octet and at most 255 bytes.
fn short_str(buf: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    buf.push(b.len() as u8);
    buf.extend_from_slice(b);
}

/// The length of the whole frame at the start of `buf`, once all of it has arrived. The
/// protocol header a broker sends back instead of `connection.start` (when it speaks another
/// version) is 8 bytes.
fn whole_frame_len(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"AMQP") {
        return (buf.len() >= 8).then_some(8);
    }
    let size = u32::from_be_bytes(buf.get(3..FRAME_HEAD)?.try_into().ok()?) as usize;
    let len = FRAME_HEAD + size + 1;
    (buf.len() >= len).then_some(len)
}

/// AMQP's rule for limits both sides propose: 0 means "no limit", else the lower one wins.
fn negotiate(broker: u32, asked: u32, fallback: u32) -> u32 {
    match (broker, asked) {
        (0, 0) => fallback,
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// Which delivery tags of a batch the broker has confirmed (acks may confirm one tag or
/// every tag up to one, and need not come in order).
struct Confirms {
    first: u64,
    done: Vec<bool>,
    /// Index of the first unconfirmed message.
    low: usize,
}

impl Confirms {
    fn new(first: u64, count: usize) -> Confirms {
        Confirms {
            first,
            done: vec![false; count],
            low: 0,
        }
    }

    fn ack(&mut self, tag: u64, multiple: bool) {
        // Tag 0 with `multiple` is "everything so far" (AMQP 0-9-1 basic.ack); another tag
        // from before the batch confirms nothing in it.
        let i = match tag.checked_sub(self.first) {
            _ if multiple && tag == 0 => usize::MAX,
            Some(i) => i as usize,
            None => return,
        };
        if multiple {
            let end = i.saturating_add(1).min(self.done.len());
            for d in self.done.iter_mut().take(end).skip(self.low) {
                *d = true;
            }
        } else if let Some(d) = self.done.get_mut(i) {
            *d = true;
        }
        while self.low < self.done.len() && self.done[self.low] {
            self.low += 1;
        }
    }

    fn all(&self) -> bool {
        self.low == self.done.len()
    }
}

fn client_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for c in ["publisher_confirms", "basic.nack", "connection.blocked"] {
        capabilities.insert(c.into(), AMQPValue::Boolean(true));
    }
    capabilities.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut p = FieldTable::default();
    p.insert("product".into(), AMQPValue::LongString("Gannet".into()));
    p.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    p.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    p.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from("gannet events")),
    );
    p
}

fn unexpected(wanted: &str, got: &AMQPFrame) -> String {
    format!("expected {wanted} from the broker, got {got:?}")
}

fn unexpected_method(wanted: &str, got: &AMQPClass) -> String {
    format!("expected {wanted} from the broker, got {got:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_single_multiple_and_out_of_order() {
        let mut c = Confirms::new(11, 5); // tags 11..=15
        c.ack(12, false);
        assert!(!c.all());
        c.ack(11, false);
        assert_eq!(c.low, 2, "11 and 12 confirmed");
        c.ack(14, true);
        assert_eq!(c.low, 4);
        c.ack(3, true); // a tag from before the batch changes nothing
        c.ack(15, false);
        assert!(c.all());
        let mut c = Confirms::new(1, 3);
        c.ack(99, true); // past the batch: everything it holds
        assert!(c.all());
        let mut c = Confirms::new(7, 3);
        c.ack(0, false);
        assert!(!c.all());
        c.ack(0, true);
        assert!(c.all(), "0 with multiple: all outstanding");
    }

    /// The hand-encoded publish and header frames are byte for byte what lapin's codec
    /// makes of the same message.
    #[test]
    fn publish_frames_are_the_codecs_bytes() {
        use amq_protocol::frame::AMQPContentHeader;
        use amq_protocol::protocol::BasicProperties;
        let m = Message {
            routing_key: "gannet.acme.delivered",
            message_id: "0193a5b2-7c1d-7000-8000-000000000001",
            kind: "delivered",
            timestamp: 1_764_000_000,
            body: b"{\"id\":\"x\"}",
        };
        let mut ours = Vec::new();
        push_publish(&mut ours, "gannet", &m);
        let codec = |f: &AMQPFrame| {
            gen_frame(f)(WriteContext::from(Vec::new()))
                .unwrap()
                .into_inner()
                .0
        };
        let mut theirs = codec(&AMQPFrame::Method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "gannet".into(),
                routing_key: m.routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        ));
        theirs.extend(codec(&AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: CLASS_BASIC,
                body_size: m.body.len() as u64,
                properties: BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(m.message_id.into())
                    .with_type(m.kind.into())
                    .with_timestamp(m.timestamp),
            },
        )));
        assert_eq!(ours, theirs);
        // And the codec reads them back as one publish and one header.
        let len = whole_frame_len(&ours).unwrap();
        assert!(matches!(
            parse_frame(&ours[..len]).unwrap().1,
            AMQPFrame::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
        ));
        assert!(matches!(
            parse_frame(&ours[len..]).unwrap().1,
            AMQPFrame::Header(CHANNEL, _)
        ));
    }

    #[test]
    fn bodies_are_split_into_frames_the_codec_reads_back() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = Vec::new();
        push_body(&mut buf, &body, 4096);
        let mut rest = buf.as_slice();
        let mut back = Vec::new();
        while !rest.is_empty() {
            let len = whole_frame_len(rest).unwrap();
            assert!(len <= 4096, "a frame of {len} bytes");
            match parse_frame(&rest[..len]).unwrap().1 {
                AMQPFrame::Body(CHANNEL, part) => back.extend_from_slice(&part),
                other => panic!("{other:?}"),
            }
            rest = &rest[len..];
        }
        assert_eq!(back, body);
    }

    #[test]
    fn frames_are_taken_only_when_whole() {
        let mut f = vec![1u8, 0, 1, 0, 0, 0, 3, 9, 9];
        assert_eq!(whole_frame_len(&f), None);
        f.push(9);
        assert_eq!(whole_frame_len(&f), None);
        f.push(FRAME_END);
        assert_eq!(whole_frame_len(&f), Some(11));
        f.extend_from_slice(b"more");
        assert_eq!(whole_frame_len(&f), Some(11));
        assert_eq!(whole_frame_len(b"AMQP\0\0\x09"), None);
        assert_eq!(whole_frame_len(b"AMQP\0\0\x09\x01"), Some(8));
        assert_eq!(negotiate(0, 0, 7), 7);
        assert_eq!(negotiate(131_072, 0, 7), 131_072);
        assert_eq!(negotiate(131_072, 4096, 7), 4096);
    }
}
