//! Issue 21 item 4: hostile clients. Each test floods Gannet's SMTP listener one way while a
//! probe, an ordinary client, still gets its `250` (a message accepted and delivered), and
//! Gannet's resident memory stays below a generous ceiling:
//!
//! - 1,900 idle connections (slowloris): under stress (90% of `max_sessions` in use)
//!   idle sessions are closed after `stress_command_timeout` instead of `command_timeout`;
//! - many sessions from one address, and from one IPv6 /64 (`::1` when the machine has it):
//!   `max_sessions_per_ip` counts IPv6 clients per `ipv6_prefix_length`;
//! - AUTH brute force: growing delays, lockout per client network and per user name, logged
//!   (`gannet::auth`);
//! - oversized and malformed commands from many clients at once.
//!
//! The probe's time-to-250 under these floods is measured by `benches/smtp_flood.py`, not here.
//!
//! Client addresses: 127.0.3.x and 127.0.4.x (floods), 127.0.0.251–.254 (one-address tests);
//! sink 127.0.0.250.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::gannet::hash_password;
use crate::common::tools::auth_plain;
use crate::common::*;

const SINK: &str = "127.0.0.250";
const MAX_RSS: u64 = 512 * 1024 * 1024;

async fn world(configure: impl FnOnce(TestConfig) -> TestConfig) -> World {
    World::start(&[SINK], Zone::new().mail_domain("dest.test", SINK), |c| {
        configure(c.relay_from(&["127.0.0.0/8", "::1/128"]))
    })
    .await
}

/// An ordinary client: greeted, EHLO 250, a message accepted with 250; returns the recipient.
async fn probe(g: &Gannet, tag: &str) -> String {
    let rcpt = format!("probe-{tag}@dest.test");
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.set_timeout(WAIT);
    c.expect("220").await;
    c.cmd("EHLO probe.test", "250").await;
    c.send(
        "probe@origin.test",
        &[rcpt.as_str()],
        format!("Subject: probe {tag}\r\n\r\nstill served\r\n").as_bytes(),
    )
    .await;
    c.quit().await;
    rcpt
}

/// A TCP connection from `local` to `addr`; None when it cannot be made within 10 s (a backlog
/// that is full drops SYNs: that is the flood's problem, not the test's).
async fn raw_connect(local: IpAddr, addr: SocketAddr) -> Option<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .ok()?;
    sock.bind(SocketAddr::new(local, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(10), sock.connect(addr))
        .await
        .ok()?
        .ok()
}

fn assert_rss(g: &Gannet, what: &str) {
    let rss = g.rss_bytes().expect("gannet is running");
    assert!(
        rss <= MAX_RSS,
        "{what}: Gannet's RSS is {} MiB (ceiling {} MiB)",
        rss >> 20,
        MAX_RSS >> 20
    );
}

/// Slowloris: 1,900 connections from 38 addresses that never send a byte fill every session
/// slot (`max_sessions = 1000`) and most of the kernel's accept queue behind it (1,024: the
/// test stays below it, because a full queue drops handshakes and the kernel's retry backoff,
/// not Gannet, would then decide when the probe gets in). Without the stress timeout each
/// idle session would hold its slot for `command_timeout` (5 minutes) and the probe would
/// wait in the queue that long; with it, idle sessions are closed after
/// `stress_command_timeout` (1 s) while the listener is 90% full, and the probe is served
/// while the flood still holds the connections it has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_flood_does_not_starve_other_clients() {
    let w = world(|c| {
        c.listener_option("max_sessions = 1000")
            .listener_option("stress_command_timeout = \"1s\"")
    })
    .await;
    let addr = w.gannet.smtp_addr();
    // Flood connections that were told `421 4.4.2` (closed for idling under stress).
    let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..1900u32 {
        let local: IpAddr = format!("127.0.3.{}", 1 + i % 38).parse().unwrap();
        let told = told.clone();
        flood.push(tokio::spawn(async move {
            // Hold the connection, read whatever comes, never write.
            let Some(mut s) = raw_connect(local, addr).await else {
                return;
            };
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if String::from_utf8_lossy(&got).contains("421 4.4.2") {
                told.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    // Let the flood fill the listener first: 90% of its slots (where stress starts; on a busy
    // machine the flood arrives slowly enough that stress closes begin before it is full).
    let deadline = tokio::time::Instant::now() + WAIT;
    while w.gannet.metric("gannet_smtp_sessions", &[]).await < 900.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never filled the listener\n{}",
            w.gannet.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let rcpt = probe(&w.gannet, "slowloris").await;
    w.gannet.wait_event("delivered", &rcpt, WAIT).await;
    let sessions = w.gannet.metric("gannet_smtp_sessions", &[]).await;
    assert!(
        sessions <= 1000.0,
        "{sessions} sessions open, max_sessions is 1000"
    );
    assert_rss(&w.gannet, "during an idle flood");

    // The sessions that were closed were told why; the rest of the flood is dropped. On a fast
    // machine the probe can be served before the first idle session reaches
    // `stress_command_timeout` (1 s), so wait for the closes rather than expect them already
    // (without the stress timeout none comes for `command_timeout`, 5 minutes, and this fails).
    let deadline = tokio::time::Instant::now() + WAIT;
    while told.load(std::sync::atomic::Ordering::Relaxed) == 0
        || !w
            .gannet
            .log()
            .contains("closing a session idle past stress_command_timeout")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no idle session got 421 4.4.2 and a logged stress close within {WAIT:?} \
             ({} told)\n{}",
            told.load(std::sync::atomic::Ordering::Relaxed),
            w.gannet.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in flood {
        f.abort();
    }
}

/// Whether this machine has IPv6 loopback (`::1`).
fn have_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// `max_sessions_per_ip`: one address gets at most that many sessions (`421 4.7.0` for the
/// rest) while another address is served; with IPv6 the cap holds for the client's /64 (here
/// `::1`'s, on a second listener), and the IPv4 probe is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_one_address_and_one_ipv6_prefix_are_capped() {
    let v6 = have_ipv6_loopback();
    let w = world(|c| {
        let c = c.listener_option("max_sessions_per_ip = 20");
        if v6 {
            c.extra(
                "[[listener]]\nname = \"v6\"\naddress = \"[::1]:${PORT_V6}\"\n\
                 relay_from = [\"::1/128\"]\ndefault_class = \"promotional\"\n\
                 max_sessions_per_ip = 20\nipv6_prefix_length = 64\n",
            )
        } else {
            c
        }
    })
    .await;
    let mut addrs = vec![(
        w.gannet.smtp_addr(),
        "127.0.0.251".parse::<IpAddr>().unwrap(),
    )];
    if v6 {
        let v6_addr = *w
            .gannet
            .listener_addrs()
            .iter()
            .find(|a| a.is_ipv6())
            .expect("the [::1] listener");
        addrs.push((v6_addr, "::1".parse().unwrap()));
    } else {
        eprintln!("no ::1 on this machine: the IPv6 half is covered by smtp::per_ip's unit test");
    }
    for (addr, local) in addrs {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..30 {
            let mut s = raw_connect(local, addr).await.expect("connect");
            let mut buf = [0u8; 128];
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("a greeting or a refusal")
                .unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("421 4.7.0") {
                refused += 1;
            } else {
                assert!(text.starts_with("220"), "from {local}: {text:?}");
                held.push(s);
            }
        }
        assert_eq!(held.len(), 20, "sessions from {local}");
        assert_eq!(refused, 10, "refusals for {local}");
        let rcpt = probe(&w.gannet, &format!("cap-{}", held.len())).await;
        w.gannet.wait_event("delivered", &rcpt, WAIT).await;
        for mut s in held {
            let _ = s.write_all(b"QUIT\r\n").await;
        }
    }
}

/// A session from `local` under TLS, EHLO said, ready for AUTH.
async fn auth_session(g: &Gannet, local: &str) -> SmtpClient {
    let mut c = SmtpClient::connect_from(local.parse().unwrap(), g.smtp_addr()).await;
    c.expect("220").await;
    c.cmd("EHLO brute.test", "250").await;
    c.starttls().await;
    c.cmd("EHLO brute.test", "250").await;
    c
}

/// `gannet::auth` log lines with `event` = `what`.
fn auth_log(g: &Gannet, what: &str) -> Vec<serde_json::Value> {
    g.log_events("gannet::auth")
        .into_iter()
        .filter(|v| v.to_string().contains(&format!("\"{what}\"")))
        .collect()
}

fn field_u64(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key)
        .or_else(|| v.get("fields").and_then(|f| f.get(key)))
        .and_then(serde_json::Value::as_u64)
}

/// AUTH brute force (RFC 4954 §6 `454 4.7.0`): each failure is answered after a delay that
/// doubles (50, 100, 200 ms, capped at 400 ms, as logged), a network that failed 4 times is
/// locked out (even the right password gets 454, unchecked), while the real user from another
/// address still logs in; a user name that failed 4 times from several addresses is locked
/// out from every address. Each failure and lockout is logged (`gannet::auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_brute_force_gets_growing_delays_and_lockouts_per_network_and_user() {
    let hash = hash_password("s3cret-pass").await;
    let w = world(|c| {
        c.listener_option("tls_cert = \"${CERT}\"")
            .listener_option("tls_key = \"${KEY}\"")
            .listener_option("auth_fail_delay = \"50ms\"")
            .listener_option("auth_max_delay = \"400ms\"")
            .listener_option("auth_lockout_after = 4")
            .listener_option("auth_lockout = \"10m\"")
            .extra(&format!(
                "[[smtp_user]]\nname = \"app\"\npassword_hash = \"{hash}\"\n"
            ))
    })
    .await;

    // One network guessing many user names: 4 failures, then locked out.
    let mut c = auth_session(&w.gannet, "127.0.0.252").await;
    for i in 0..4 {
        c.cmd(
            &format!("AUTH PLAIN {}", auth_plain(&format!("guess{i}"), "pw")),
            "535 5.7.8",
        )
        .await;
    }
    c.cmd(
        &format!("AUTH PLAIN {}", auth_plain("app", "s3cret-pass")),
        "454 4.7.0",
    )
    .await;
    drop(c);
    let mut c = auth_session(&w.gannet, "127.0.0.252").await;
    c.cmd(
        &format!("AUTH PLAIN {}", auth_plain("app", "s3cret-pass")),
        "454 4.7.0",
    )
    .await;
    drop(c);

    let failed = auth_log(&w.gannet, "auth_failed");
    let delays: Vec<u64> = failed
        .iter()
        .filter_map(|v| field_u64(v, "delay_ms"))
        .collect();
    assert_eq!(delays, [50, 100, 200, 400], "{failed:#?}");
    let lockouts = auth_log(&w.gannet, "auth_lockout");
    assert_eq!(lockouts.len(), 1, "{lockouts:#?}");
    assert!(
        lockouts[0]
            .to_string()
            .contains("client network 127.0.0.252"),
        "{}",
        lockouts[0]
    );
    assert_eq!(auth_log(&w.gannet, "auth_refused_locked").len(), 2);

    // The real user, from elsewhere, is not locked out by someone else's guessing.
    let mut c = auth_session(&w.gannet, "127.0.0.253").await;
    c.cmd(
        &format!("AUTH PLAIN {}", auth_plain("app", "s3cret-pass")),
        "235 2.7.0",
    )
    .await;
    c.quit().await;

    // One user name guessed from two addresses (2 + 2 failures): locked out everywhere.
    for local in ["127.0.0.253", "127.0.0.254"] {
        let mut c = auth_session(&w.gannet, local).await;
        for _ in 0..2 {
            c.cmd(
                &format!("AUTH PLAIN {}", auth_plain("victim", "guess")),
                "535 5.7.8",
            )
            .await;
        }
    }
    let mut c = auth_session(&w.gannet, "127.0.0.251").await;
    c.cmd(
        &format!("AUTH PLAIN {}", auth_plain("victim", "anything")),
        "454 4.7.0",
    )
    .await;
    c.cmd(
        &format!("AUTH PLAIN {}", auth_plain("app", "s3cret-pass")),
        "235 2.7.0",
    )
    .await;
    let lockouts = auth_log(&w.gannet, "auth_lockout");
    assert!(
        lockouts
            .iter()
            .any(|v| v.to_string().contains("user \\\"victim\\\"")),
        "{lockouts:#?}"
    );
    assert!(
        !w.gannet.log().contains("s3cret-pass") && !w.gannet.log().contains("guess\""),
        "passwords never reach the log"
    );
}

/// Oversized and malformed input from 60 clients at once (10 MB lines without a line end,
/// binary garbage, unknown and out-of-sequence commands until `max_errors`, a BDAT that claims
/// more than the listener takes): each gets its error replies and is closed, the probe is
/// served meanwhile, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_commands_do_not_starve_other_clients() {
    let w = world(|c| c.listener_option("max_message_size = 1000000")).await;
    let addr = w.gannet.smtp_addr();
    let mut flood = Vec::new();
    for i in 0..60u32 {
        let local: IpAddr = format!("127.0.4.{}", 1 + i % 20).parse().unwrap();
        flood.push(tokio::spawn(async move {
            let Some(mut s) = raw_connect(local, addr).await else {
                return String::new();
            };
            let payload: Vec<u8> = match i % 4 {
                // A 10 MB "command" without a line end, then one with it.
                0 => {
                    let mut v = b"MAIL FROM:<".to_vec();
                    v.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
                    v.extend_from_slice(b">\r\n");
                    v
                }
                // Binary garbage.
                1 => (0..2_000_000u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
                // Bad commands until the error limit.
                2 => b"EHLO x\r\nFOO\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<<<>>>\r\nAUTH X\r\nBDAT x\r\nHELO\r\nVRFY\r\nEXPN a\r\nHELP me\r\nETRN x\r\n"
                    .repeat(50),
                // A BDAT chunk larger than max_message_size, sent in full.
                _ => {
                    let mut v = b"EHLO x\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<b@dest.test>\r\nBDAT 3000000 LAST\r\n".to_vec();
                    v.extend(std::iter::repeat_n(b'z', 3_000_000));
                    v
                }
            };
            let (mut rd, mut wr) = s.split();
            let mut got = Vec::new();
            let writer = async {
                let _ = wr.write_all(&payload).await;
                let _ = wr.shutdown().await;
            };
            let reader = async {
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            };
            tokio::join!(writer, reader);
            String::from_utf8_lossy(&got).into_owned()
        }));
    }
    let rcpt = probe(&w.gannet, "garbage").await;
    assert_rss(&w.gannet, "during a garbage flood");
    let mut replies = Vec::new();
    for f in flood {
        replies.push(f.await.unwrap_or_default());
    }
    w.gannet.wait_event("delivered", &rcpt, WAIT).await;
    assert_rss(&w.gannet, "after a garbage flood");
    let long_lines = replies
        .iter()
        .step_by(4)
        .filter(|r| r.contains("500 5.5.2"))
        .count();
    assert!(long_lines > 0, "10 MB lines get 500 5.5.2: {replies:?}");
    let limited = replies
        .iter()
        .skip(2)
        .step_by(4)
        .filter(|r| r.contains("421"))
        .count();
    assert!(limited > 0, "the error limit closes sessions with 421");
    let oversize = replies
        .iter()
        .skip(3)
        .step_by(4)
        .filter(|r| r.contains("552 5.3.4"))
        .count();
    assert!(oversize > 0, "an oversized BDAT gets 552 5.3.4");
    assert_eq!(
        w.sinks[0].delivered_rcpts(),
        [rcpt],
        "nothing from the flood was delivered"
    );
}
