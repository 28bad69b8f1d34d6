//! The web console (issue 22): sign-in with password and TOTP, refusals (wrong password,
//! missing or wrong code, a role without the right, a POST without its CSRF token, the sixth
//! failed sign-in in a row), the audit trail, page weight; and a real browser (Playwright
//! driving Debian's Chromium) through search, story, CSV export, four-eyes erasure,
//! suppressions and suspend/resume, with screenshots kept as artefacts.
//!
//! The plain-HTTP tests keep cookies themselves ([`Jar`]); TOTP codes are computed here
//! (totp-rs) for them and by the Python script (hmac, RFC 6238) for the browser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::common::gannet::{GANNET_BIN, HttpReply, http_request};
use crate::common::tools::{SCRIPTS_DIR, run};
use crate::common::*;

/// Where screenshots and downloads of the browser test are kept.
const ARTEFACTS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-artefacts/console");

const PASSWORD: &str = "correct horse battery staple";

/// A console user for the config: name, role, whether it gets a TOTP secret.
const USERS: &[(&str, &str)] = &[
    ("alice", "compliance"),
    ("carol", "compliance"),
    ("oscar", "operator"),
    ("vera", "viewer"),
    ("adam", "admin"),
];

/// The users' `[[console_user]]` entries (made with `gannet hash-password` and `gannet
/// console enrol`) and their TOTP secrets.
async fn console_users(failure_delay: &str) -> (String, BTreeMap<String, String>) {
    let hash = crate::common::gannet::hash_password(PASSWORD).await;
    let mut toml = String::new();
    let mut secrets = BTreeMap::new();
    for (name, role) in USERS {
        toml.push_str(&format!(
            "[[console_user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nrole = \"{role}\"\n"
        ));
        if *role != "viewer" {
            let mut cmd = tokio::process::Command::new(GANNET_BIN);
            cmd.args(["console", "enrol", name]);
            let out = run(cmd, None, Duration::from_secs(60)).await;
            out.assert_success();
            assert!(
                out.stdout.contains("otpauth://totp/Gannet:"),
                "enrol prints the otpauth URI:\n{out}"
            );
            assert!(
                out.stdout.contains('█') || out.stdout.contains('▀'),
                "and a QR code:\n{out}"
            );
            let secret = out
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("totp_secret = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap_or_else(|| panic!("no totp_secret line:\n{out}"))
                .to_string();
            toml.push_str(&format!("totp_secret = \"{secret}\"\n"));
            secrets.insert(name.to_string(), secret);
        }
    }
    toml.push_str(&format!(
        "[console]\nfailure_delay = \"{failure_delay}\"\nlockout_after = 5\nlockout = \"15m\"\n"
    ));
    (toml, secrets)
}

/// The TOTP code of `secret` now (RFC 6238, SHA-1, 6 digits, 30 s).
fn code(secret: &str) -> String {
    let t = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    t.generate_current().to_string()
}

/// A code that is wrong for every step the server accepts now (the current one ± 1).
fn wrong_code(secret: &str) -> String {
    let t = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid: Vec<String> = [now - 60, now - 30, now, now + 30, now + 60]
        .iter()
        .map(|s| t.generate(*s).to_string())
        .collect();
    (0..)
        .map(|i: u32| format!("{:06}", (123_457 + i * 7919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client that keeps cookies, like a browser without JavaScript.
struct Jar {
    addr: SocketAddr,
    cookies: BTreeMap<String, String>,
}

impl Jar {
    fn new(addr: SocketAddr) -> Jar {
        Jar {
            addr,
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, r: &HttpReply) {
        for c in r.all("set-cookie") {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if c.contains("Max-Age=0") {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
    }

    async fn get(&mut self, path: &str) -> HttpReply {
        let cookie = self.cookie_header();
        let r = http_request(self.addr, "GET", path, None, &[("Cookie", &cookie)])
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        self.absorb(&r);
        r
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> HttpReply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let cookie = self.cookie_header();
        let r = http_request(
            self.addr,
            "POST",
            path,
            Some(("application/x-www-form-urlencoded", body.as_bytes())),
            &[("Cookie", &cookie)],
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        self.absorb(&r);
        r
    }

    /// The `csrf` hidden field of a page.
    fn csrf(body: &str) -> String {
        let at = body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in:\n{body}"));
        let rest = &body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// Fetch the sign-in form and post it.
    async fn login(&mut self, name: &str, password: &str, code: &str) -> HttpReply {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = Jar::csrf(&form.body);
        self.post(
            "/console/login",
            &[
                ("csrf", &csrf),
                ("name", name),
                ("password", password),
                ("code", code),
            ],
        )
        .await
    }

    fn signed_in(&self) -> bool {
        self.cookies.contains_key("gannet_console")
    }
}

async fn start_world(sink_ip: &str, failure_delay: &str) -> (World, BTreeMap<String, String>) {
    let (users, secrets) = console_users(failure_delay).await;
    let w = World::start(
        &[sink_ip],
        Zone::new().mail_domain("dest.test", sink_ip),
        |c| c.extra(&users),
    )
    .await;
    (w, secrets)
}

async fn suspensions(g: &Gannet) -> Vec<Value> {
    let (status, body) = g.http_get("/api/v1/queues/suspensions").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["suspensions"].as_array().cloned().unwrap_or_default()
}

/// Every refusal the issue names, each on its own request, and the audit trail that records
/// who did what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_bad_sign_ins_missing_rights_and_forged_posts_and_audits_actions() {
    let (w, secrets) = start_world("127.0.0.246", "5ms").await;
    let g = &w.gannet;
    let addr = g.http_addr();

    // Not signed in: pages send to the sign-in form, POSTs are refused.
    let mut anon = Jar::new(addr);
    let r = anon.get("/console/logs").await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/console/login"));
    let r = anon
        .post("/console/queue/suspend", &[("campaign", "x")])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    // The sign-in form itself needs its CSRF token.
    let r = anon
        .post(
            "/console/login",
            &[("name", "vera"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, 403, "sign-in without CSRF token: {r:?}");
    assert!(!anon.signed_in());

    // Wrong password, missing TOTP, wrong TOTP: 401, no session.
    let alice = &secrets["alice"];
    let mut j = Jar::new(addr);
    let r = j.login("alice", "wrong password", &code(alice)).await;
    assert_eq!(r.status, 401, "wrong password: {}", r.body);
    assert!(
        r.body
            .contains("Wrong user name, password or authenticator code")
    );
    assert!(!j.signed_in());
    let r = j.login("alice", PASSWORD, "").await;
    assert_eq!(r.status, 401, "missing TOTP: {}", r.body);
    assert!(!j.signed_in());
    let r = j.login("alice", PASSWORD, &wrong_code(alice)).await;
    assert_eq!(r.status, 401, "wrong TOTP: {}", r.body);
    assert!(!j.signed_in());
    let r = j.login("alice", PASSWORD, &code(alice)).await;
    assert_eq!(r.status, 303, "right password and code: {}", r.body);
    assert!(j.signed_in());
    let cookie = r
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("gannet_console="))
        .unwrap()
        .to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(
            cookie.contains(part),
            "session cookie {cookie:?} lacks {part}"
        );
    }
    // Import (pasted JSONL, one bad line reported) and export of the suppression list.
    let page = j.get("/console/suppressions").await;
    assert_eq!(page.status, 200);
    let acsrf = Jar::csrf(&page.body);
    let lines = "{\"address\": \"imported1@dest.test\", \"reason\": \"complaint\"}\n\
                 {\"address\": \"imported2@dest.test\"}\nnot json\n";
    let r = j
        .post(
            "/console/suppressions/import",
            &[("csrf", &acsrf), ("format", "jsonl"), ("lines", lines)],
        )
        .await;
    assert_eq!(r.status, 422, "one bad line: {}", r.body);
    assert!(r.body.contains("Imported 2 of 3 lines"), "{}", r.body);
    let r = j.get("/console/suppressions/export?format=csv").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains("attachment")),
        "{r:?}"
    );
    assert!(
        r.body.starts_with("address,tenant,stream,reason"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("imported1@dest.test,*,,complaint")
            && r.body.contains("imported2@dest.test"),
        "{}",
        r.body
    );

    // A search by alice, to be found in the audit trail.
    let r = j.get("/console/logs?recipient=someone%40dest.test").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The operator: a POST without (or with a wrong) CSRF token does nothing.
    let mut op = Jar::new(addr);
    let r = op.login("oscar", PASSWORD, &code(&secrets["oscar"])).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = op.get("/console/queue").await;
    assert_eq!(page.status, 200);
    let csrf = Jar::csrf(&page.body);
    let r = op
        .post("/console/queue/suspend", &[("campaign", "spring")])
        .await;
    assert_eq!(r.status, 403, "POST without CSRF token: {}", r.body);
    let r = op
        .post(
            "/console/queue/suspend",
            &[("csrf", "forged"), ("campaign", "spring")],
        )
        .await;
    assert_eq!(r.status, 403, "POST with a wrong CSRF token: {}", r.body);
    assert!(
        suspensions(g).await.is_empty(),
        "a refused POST suspended nothing"
    );
    let r = op
        .post(
            "/console/queue/suspend",
            &[("csrf", &csrf), ("campaign", "spring")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = suspensions(g).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["filter"]["campaign"], "spring");
    let r = op
        .post(
            "/console/queue/resume",
            &[("csrf", &csrf), ("campaign", "spring")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(suspensions(g).await.is_empty());
    // An operator cannot export the send log or handle data subjects.
    assert_eq!(
        op.get("/console/logs/export?format=csv&campaign=spring")
            .await
            .status,
        403
    );
    assert_eq!(op.get("/console/subjects").await.status, 403);

    // A viewer (no TOTP) reads but cannot resume, suspend, export, erase or audit.
    let mut v = Jar::new(addr);
    let r = v.login("vera", PASSWORD, "").await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = v.get("/console/queue").await;
    assert_eq!(page.status, 200);
    let vcsrf = Jar::csrf(&page.body);
    let r = v
        .post(
            "/console/queue/suspend",
            &[("csrf", &vcsrf), ("campaign", "spring")],
        )
        .await;
    assert_eq!(r.status, 403, "viewer suspending: {}", r.body);
    assert!(suspensions(g).await.is_empty());
    let r = v
        .post(
            "/console/queue/resume",
            &[("csrf", &vcsrf), ("campaign", "spring")],
        )
        .await;
    assert_eq!(r.status, 403, "viewer resuming: {}", r.body);
    let r = v
        .post(
            "/console/subjects/erasures",
            &[("csrf", &vcsrf), ("address", "x@dest.test")],
        )
        .await;
    assert_eq!(r.status, 403, "viewer requesting an erasure: {}", r.body);
    let r = v
        .post(
            "/console/suppressions/add",
            &[("csrf", &vcsrf), ("address", "x@dest.test")],
        )
        .await;
    assert_eq!(r.status, 403, "viewer adding a suppression: {}", r.body);
    for path in [
        "/console/audit",
        "/console/subjects",
        "/console/logs/export?format=csv",
    ] {
        assert_eq!(v.get(path).await.status, 403, "viewer GET {path}");
    }

    // The sixth sign-in in a row after five failures is refused, even with the right password
    // and code.
    let carol = &secrets["carol"];
    let mut c = Jar::new(addr);
    for i in 1..=5 {
        let r = c.login("carol", "guess", &code(carol)).await;
        assert_eq!(r.status, 401, "failure {i}: {}", r.body);
    }
    let r = c.login("carol", PASSWORD, &code(carol)).await;
    assert_eq!(r.status, 429, "sixth attempt: {}", r.body);
    assert!(r.body.contains("locked"), "{}", r.body);
    assert!(!c.signed_in());

    // Signing out ends the session.
    let home = v.get("/console").await;
    let r = v
        .post("/console/logout", &[("csrf", &Jar::csrf(&home.body))])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(v.get("/console/queue").await.status, 303, "signed out");

    // The audit trail (admins): alice's search, oscar's suspension, the failed sign-ins.
    let mut admin = Jar::new(addr);
    let r = admin.login("adam", PASSWORD, &code(&secrets["adam"])).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let mut audit = String::new();
    for _ in 0..100 {
        let r = admin.get("/console/audit").await;
        assert_eq!(r.status, 200, "{}", r.body);
        audit = r.body;
        if audit.contains("resumed") && audit.contains("login_locked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        "console:alice",
        "someone@dest.test",
        "log_access",
        "console:oscar",
        "suspended",
        "resumed",
        "login_failed",
        "login_locked",
        "carol",
    ] {
        assert!(audit.contains(want), "audit trail lacks {want:?}:\n{audit}");
    }
    // The same facts in the control log, with the user.
    let control = g.log_events("gannet::control");
    assert!(
        control
            .iter()
            .any(|e| e.to_string().contains("login_failed")
                && e.to_string().contains("carol")
                && e.to_string().contains("now locked")),
        "{control:#?}"
    );

    // Page weight: a page with its stylesheet stays under 100 kB.
    let page = admin.get("/console/audit").await;
    let css = admin.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);
    let weight = page.body.len() + css.body.len();
    assert!(
        weight <= 100 * 1024,
        "audit page + CSS weigh {weight} bytes"
    );
}

/// A real browser: sign in with a TOTP code, search a recipient, open the message's story,
/// export CSV, request and confirm an erasure as two users, add and remove a suppression,
/// suspend and resume a campaign. Screenshots of each page are kept in [`ARTEFACTS`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let (w, secrets) = start_world("127.0.0.247", "5ms").await;
    let g = &w.gannet;
    // Mail to find: one message to two recipients, campaign spring; one held in the queue.
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    c.send(
        "news@origin.test",
        &["reader@dest.test", "forget-me@dest.test"],
        b"Subject: spring\r\nMessage-ID: <console-1@origin.test>\r\nX-Gannet-Campaign: spring\r\n\r\nhello\r\n",
    )
    .await;
    c.quit().await;
    g.wait_event("delivered", "reader@dest.test", Duration::from_secs(30))
        .await;
    g.wait_event("delivered", "forget-me@dest.test", Duration::from_secs(30))
        .await;

    let _ = std::fs::remove_dir_all(ARTEFACTS);
    std::fs::create_dir_all(ARTEFACTS).unwrap();
    let users = serde_json::json!({
        "password": PASSWORD,
        "secrets": secrets,
    });
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(format!("{SCRIPTS_DIR}/console_browser.py"))
        .arg(format!("http://{}", g.http_addr()))
        .arg(ARTEFACTS)
        .arg(users.to_string());
    let out = run(cmd, None, Duration::from_secs(240)).await;
    out.assert_success();
    let result: Value = serde_json::from_str(out.stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("script output: {e}\n{out}"));

    // The CSV download has the recipient's events.
    let csv = std::fs::read_to_string(format!("{ARTEFACTS}/search.csv")).unwrap();
    assert!(csv.starts_with("seq,"), "{csv}");
    assert!(
        csv.contains("reader@dest.test") && csv.contains("delivered"),
        "{csv}"
    );
    // The person's access export, downloaded as CSV before the erasure.
    let access = std::fs::read_to_string(format!("{ARTEFACTS}/access.csv")).unwrap();
    assert!(
        access.starts_with("address,queue_id,message_id,"),
        "{access}"
    );
    assert!(
        access.contains("forget-me@dest.test") && access.contains("console-1@origin.test"),
        "{access}"
    );
    // Screenshots of every page.
    for shot in [
        "01-login",
        "02-home",
        "03-search",
        "04-story",
        "04b-access-export",
        "05-erasure-requested",
        "06-erasure-receipt",
        "07-suppression-added",
        "08-suppression-removed",
        "09-suspended",
        "10-resumed",
    ] {
        let p = format!("{ARTEFACTS}/{shot}.png");
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {p}: {len} bytes");
    }
    assert!(
        result["max_page_bytes"].as_u64().unwrap() <= 100 * 1024,
        "a page weighed more than 100 kB: {result}"
    );

    // What the browser did happened in Gannet, under each user's name.
    let (status, body) = g.http_get("/api/v1/subjects/forget-me%40dest.test").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(!v["erased_at_us"].is_null(), "erased: {v:#}");
    let control = g.log_events("gannet::control");
    let has = |event: &str, actor: &str| {
        control.iter().any(|e| {
            let s = e.to_string();
            s.contains(&format!("\"event\":\"{event}\"")) && s.contains(actor)
        })
    };
    for (event, actor) in [
        ("erased", "console:carol"),
        ("suspended", "console:oscar"),
        ("resumed", "console:oscar"),
        ("console", "alice"),
    ] {
        assert!(has(event, actor), "no {event} by {actor}: {control:#?}");
    }
    let (status, body) = g
        .http_get("/api/v1/events?type=suppression_changed&limit=100")
        .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"change\":\"added\"") && body.contains("\"change\":\"removed\""),
        "{body}"
    );
    assert!(body.contains("console:alice"), "{body}");
}

/// A world whose console users can sign in, with `[[dkim]]` keys for signed.test: `ed`
/// (Ed25519) published right, `rsa` (RSA) published with another key unless `fixed`.
async fn dkim_zone(fixed: bool) -> Zone {
    use crate::dkim::{KeyType, fixture_path, public_record};
    let ed = public_record(&fixture_path("ed25519.pem"), KeyType::Ed25519).await;
    let rsa_file = if fixed {
        "rsa2048.pem"
    } else {
        "rsa2048-b.pem"
    };
    let rsa = public_record(&fixture_path(rsa_file), KeyType::Rsa).await;
    Zone::new()
        .mail_domain("dest.test", "127.0.0.248")
        .txt("ed._domainkey.signed.test", &ed)
        .txt("rsa._domainkey.signed.test", &rsa)
}

/// The `<tr>` of the `dkim-keys` table naming `selector`, as text.
fn key_row<'b>(page: &'b str, selector: &str) -> &'b str {
    let table = &page[page
        .find("id=\"dkim-keys\"")
        .unwrap_or_else(|| panic!("no DKIM table:\n{page}"))..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr>")
        .find(|row| row.contains(&format!("<td>{selector}</td>")))
        .unwrap_or_else(|| panic!("no row for selector {selector}:\n{table}"))
}

/// Issue 22 item 5, "DKIM/domain-check status": the operations page lists each `[[dkim]]` key
/// (domain, selector, key type) with whether its DNS record matches and the time of the last
/// check (the periodic run at start-up, through `auth::check_domain`), the domain's results
/// and what to fix; an operator's "check now" runs the checks again (after the DNS was fixed:
/// the RSA record then matches) and a viewer may look but not run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_operations_page_shows_dkim_keys_and_domain_checks() {
    use crate::dkim::fixture;
    let (users, secrets) = console_users("5ms").await;
    let w = World::start(&["127.0.0.248"], dkim_zone(false).await, |c| {
        c.file("ed.pem", fixture("ed25519.pem"))
            .file("rsa.pem", fixture("rsa2048.pem"))
            .extra(&users)
            .extra(
                "[[dkim]]\ndomain = \"signed.test\"\nselector = \"ed\"\nalgorithm = \"ed25519-sha256\"\nkey = \"${DIR}/ed.pem\"\n\
                 [[dkim]]\ndomain = \"signed.test\"\nselector = \"rsa\"\nalgorithm = \"rsa-sha256\"\nkey = \"${DIR}/rsa.pem\"\n",
            )
    })
    .await;
    let addr = w.gannet.http_addr();

    // The viewer sees the periodic run's result (it checks once at start-up).
    let mut v = Jar::new(addr);
    assert_eq!(v.login("vera", PASSWORD, "").await.status, 303);
    let mut page = String::new();
    for _ in 0..300 {
        let r = v.get("/console/queue").await;
        assert_eq!(r.status, 200, "{}", r.body);
        page = r.body;
        if !page.contains("not checked yet") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        page.contains("Sending domains (DKIM and DNS checks)"),
        "{page}"
    );
    let ed = key_row(&page, "ed");
    assert!(
        ed.contains("<td>signed.test</td>") && ed.contains("Ed25519"),
        "{ed}"
    );
    assert!(
        ed.contains("matches") && !ed.contains("does not match"),
        "{ed}"
    );
    assert!(
        ed.contains(&format!("{}-", time::OffsetDateTime::now_utc().year())),
        "last check time: {ed}"
    );
    let rsa = key_row(&page, "rsa");
    assert!(
        rsa.contains("RSA") && rsa.contains("does not match"),
        "{rsa}"
    );
    // The domain's row: the failing checks and the record to publish.
    assert!(page.contains("id=\"domain-checks\""), "{page}");
    assert!(page.contains("checks failed (spf"), "{page}");
    assert!(
        page.contains("publish rsa._domainkey.signed.test"),
        "{page}"
    );
    // A viewer has no "check now", and posting it anyway is refused.
    assert!(!page.contains("Check the sending domains now"), "{page}");
    let r = v
        .post("/console/domains/check", &[("csrf", &Jar::csrf(&page))])
        .await;
    assert_eq!(r.status, 403, "viewer checking: {}", r.body);

    // The DNS is fixed; the operator checks now and the RSA record matches.
    w.dns.set_zone(dkim_zone(true).await);
    let mut op = Jar::new(addr);
    assert_eq!(
        op.login("oscar", PASSWORD, &code(&secrets["oscar"]))
            .await
            .status,
        303
    );
    let page = op.get("/console/queue").await;
    assert!(
        page.body.contains("Check the sending domains now"),
        "{}",
        page.body
    );
    let r = op
        .post(
            "/console/domains/check",
            &[("csrf", &Jar::csrf(&page.body))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("checked just now"), "{}", r.body);
    let rsa = key_row(&r.body, "rsa");
    assert!(
        rsa.contains("matches") && !rsa.contains("does not match"),
        "{rsa}"
    );
    // The check is an action of the operator's, in the control log.
    let control = w.gannet.log_events("gannet::control");
    assert!(
        control.iter().any(|e| {
            let s = e.to_string();
            s.contains("domain_check") && s.contains("oscar")
        }),
        "{control:#?}"
    );
}

/// The `data-key` value of an erasure receipt.
fn receipt_value(page: &str, key: &str) -> String {
    let at = page
        .find(&format!("data-key=\"{key}\">"))
        .unwrap_or_else(|| panic!("receipt lacks {key}:\n{page}"));
    let rest = &page[at + key.len() + 12..];
    rest[..rest.find('<').unwrap()].to_string()
}

/// Issue 22 item 4: the access export downloads as CSV and JSON from the console (the API's
/// code path; the CSV parses with Python's csv module into the same rows as the JSON's
/// messages; the download is recorded with its format), and a confirmed erasure shows its
/// progress step by step (held at the send-log step while another process holds the send
/// log's write lock), then a receipt with what each step did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_export_csv_and_erasure_progress_and_receipt() {
    let (w, secrets) = start_world("127.0.0.249", "5ms").await;
    let g = &w.gannet;
    let addr = g.http_addr();
    let mut c = SmtpClient::connect(g.smtp_addr()).await;
    c.hello("client.test").await;
    for (i, campaign) in ["spring", "summer,\"hot\""].iter().enumerate() {
        let msg = format!(
            "Subject: s{i}\r\nMessage-ID: <export-{i}@origin.test>\r\nX-Gannet-Campaign: {campaign}\r\n\r\nhello\r\n"
        );
        c.send(
            "news@origin.test",
            &["forget-me@dest.test", "other@dest.test"],
            msg.as_bytes(),
        )
        .await;
    }
    c.quit().await;
    for _ in 0..2 {
        g.wait_event("delivered", "forget-me@dest.test", Duration::from_secs(30))
            .await;
    }
    let mut alice = Jar::new(addr);
    assert_eq!(
        alice
            .login("alice", PASSWORD, &code(&secrets["alice"]))
            .await
            .status,
        303
    );

    // Both downloads, then the check in Python.
    let q = "/console/subjects/access?address=forget-me%40dest.test";
    let page = alice.get(q).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Download as CSV"), "{}", page.body);
    let mut json = String::new();
    for _ in 0..300 {
        let r = alice.get(&format!("{q}&download=json")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        json = r.body;
        if v["messages"].as_array().map_or(0, Vec::len) == 2
            && v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["outcome"] == "delivered")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = alice.get(&format!("{q}&download=csv")).await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert!(
        csv.header("content-type")
            .is_some_and(|t| t.starts_with("text/csv")),
        "{csv:?}"
    );
    assert!(
        csv.header("content-disposition")
            .is_some_and(|d| d.contains("attachment") && d.contains(".csv")),
        "{csv:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("export.json"), &json).unwrap();
    std::fs::write(dir.path().join("export.csv"), &csv.body).unwrap();
    let mut py = tokio::process::Command::new("python3");
    py.arg("-c")
        .arg(
            "import csv, json, sys\n\
             d = sys.argv[1]\n\
             report = json.load(open(d + '/export.json'))\n\
             rows = list(csv.DictReader(open(d + '/export.csv', newline='')))\n\
             def cell(v):\n\
             \x20   return '' if v is None else v if isinstance(v, str) else json.dumps(v)\n\
             want = []\n\
             for m in report['messages']:\n\
             \x20   r = {k: cell(v) for k, v in m.items()}\n\
             \x20   r['address'] = report['address']\n\
             \x20   r['purposes'] = '; '.join(report['purposes'])\n\
             \x20   r['retention_days'] = cell(report['retention_days'])\n\
             \x20   want.append(r)\n\
             assert len(rows) == len(want) == 2, (rows, want)\n\
             assert rows == want, (rows, want)\n\
             assert {r['campaign'] for r in rows} == {'spring', 'summer,\"hot\"'}, rows\n\
             print('same', len(rows))\n",
        )
        .arg(dir.path());
    let out = run(py, None, Duration::from_secs(60)).await;
    out.assert_success();
    assert!(out.stdout.contains("same 2"), "{out}");
    // The API gives the same CSV.
    let (status, api_csv) = g
        .http_get("/api/v1/subjects/forget-me%40dest.test?format=csv")
        .await;
    assert_eq!(status, 200, "{api_csv}");
    assert_eq!(api_csv, csv.body, "the console's CSV is the API's");
    // Each download is recorded, in its format, under alice's name.
    let mut seen = String::new();
    for _ in 0..300 {
        let (_, body) = g
            .http_get("/api/v1/events?type=log_access&limit=1000")
            .await;
        seen = body;
        if seen.contains("\"format\":\"csv\"") && seen.contains("\"format\":\"json\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: Value = serde_json::from_str(&seen).unwrap();
    for format in ["csv", "json", "html"] {
        assert!(
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["actor"] == "console:alice"
                    && e["action"] == "subject_export"
                    && e["format"] == format
                    && e["recipient"] == "forget-me@dest.test"),
            "no {format} subject_export by console:alice: {v:#}"
        );
    }

    // Erasure: alice requests, carol confirms while the send log cannot be written.
    let page = alice.get("/console/subjects").await;
    let r = alice
        .post(
            "/console/subjects/erasures",
            &[
                ("csrf", &Jar::csrf(&page.body)),
                ("address", "forget-me@dest.test"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut carol = Jar::new(addr);
    assert_eq!(
        carol
            .login("carol", PASSWORD, &code(&secrets["carol"]))
            .await
            .status,
        303
    );
    let page = carol.get("/console/subjects").await;
    let ccsrf = Jar::csrf(&page.body);
    let mut holder = crate::sendlog::hold_write_lock(g.dir()).await;
    let r = carol
        .post("/console/subjects/erasures/1/confirm", &[("csrf", &ccsrf)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/console/subjects/erasures/1"));
    // Progress: every step before the send log's is done, the send log's is running.
    let mut progress = String::new();
    for _ in 0..200 {
        let r = carol.get("/console/subjects/erasures/1").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let refresh = r.header("refresh").map(str::to_string);
        progress = r.body;
        if progress.contains("5 of 6 steps done") {
            assert_eq!(refresh.as_deref(), Some("2"), "the page refreshes itself");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(progress.contains("Erasure in progress"), "{progress}");
    assert!(progress.contains("5 of 6 steps done"), "{progress}");
    assert!(
        progress.contains("Send-log key destroyed: rows made unreadable: <strong>running</strong>"),
        "{progress}"
    );
    assert!(
        progress
            .contains("Queued mail to the person dropped (recipients): <strong>done (0)</strong>"),
        "{progress}"
    );
    // The list shows it running too.
    let list = alice.get("/console/subjects").await;
    assert!(
        list.body.contains("erasing (5 of 6 steps done)"),
        "{}",
        list.body
    );
    holder.kill().await.unwrap();
    drop(holder);

    // Then the receipt, with what each step did.
    let mut receipt = String::new();
    for _ in 0..600 {
        let r = carol.get("/console/subjects/erasures/1").await;
        assert_eq!(r.status, 200, "{}", r.body);
        receipt = r.body;
        if receipt.contains("Erasure receipt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receipt.contains("Erasure receipt"), "{receipt}");
    assert_eq!(receipt_value(&receipt, "person"), "f***@dest.test");
    assert_eq!(receipt_value(&receipt, "requested_by"), "alice");
    assert_eq!(receipt_value(&receipt, "confirmed_by"), "carol");
    let rows: u64 = receipt_value(&receipt, "send_log_rows").parse().unwrap();
    assert!(rows >= 2, "the two deliveries at least: {rows}");
    assert_eq!(receipt_value(&receipt, "queued_recipients_dropped"), "0");
    assert_eq!(receipt_value(&receipt, "subject").len(), 64, "{receipt}");
    for key in [
        "spool_records_shredded",
        "outbox_events_shredded",
        "idempotent_answers_shredded",
        "suppression_entries_removed",
        "finished_at",
    ] {
        assert!(!receipt_value(&receipt, key).is_empty(), "{key}: {receipt}");
    }
    assert!(
        !receipt.contains("forget-me@dest.test"),
        "no address on the receipt"
    );
    let (status, body) = g.http_get("/api/v1/subjects/forget-me%40dest.test").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(!v["erased_at_us"].is_null(), "erased: {v:#}");
}
