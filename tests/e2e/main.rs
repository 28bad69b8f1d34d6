//! Gannet's end-to-end tests: the real `gannet` binary between real clients (Python smtplib,
//! swaks, Postfix smtp-source, raw sockets) and real SMTP sinks, resolving through a real DNS
//! server, all on loopback. One test binary (one link) for all modules; the harness is in
//! `common/` and documented there.
//!
//! Modules:
//! - `harness`: self-tests of the harness (DNS, sinks, tools) that need no Gannet;
//! - `relay`: MX resolution, delivery, header handling, static routes (issue 2, items 1 and 8);
//! - `retry`: deferral, permanent failure, expiry, DSNs (item 2);
//! - `durability`: kill -9 and SIGTERM with queued mail (items 3 and 6);
//! - `smtp_input`: open-relay refusal and malformed input (items 4 and 5);
//! - `cli`: `gannet queue list` / `flush` against a running instance (item 7);
//! - `dkim`: DKIM signing, key rotation, keygen, `[dkim_policy]`, sending-domain checks (issue 3);
//! - `delivery_faults` (issue 15 items 3, 4, 7): MX refresh, mail loops, STARTTLS fallback;
//! - `pools` (issue 4): traffic classes, IP pools and their sources, warm-up caps;
//! - `shaping` (issue 4): connection and rate limits, priority, backoff, queue control;
//! - `events` (issue 14): the event stream seen by an in-process subscriber: each event once,
//!   in order, agreeing with the outcome log and `/metrics`; stuck lossy / lossless subscribers.
//! - `sendlog` (issue 18): the send log's queries, exports, accountability and master key.
//! - `spoolcrypt` (issue 18 items 3 and 4): the sealed spool; no trace of an erased address in
//!   any file of the data directory; a copied data directory without the key.
//! - `protocol_faults` (issue 15): quoted local parts, `<postmaster>`, sender authorisation,
//!   the loopback-only admin API.
//! - `bounces` (issue 17): reply classification (`gannet bounce classify`).
//! - `dsn` (issue 15 items 2 and 5): a DSN owed survives SIGTERM and kill -9 and is sent once.
//! - `suppress`, `suppress_intake`, `suppress_bulk`, `suppress_inbound` (issue 17): bounce
//!   categories and the list; refusal at RCPT or drop; bulk import/export and the CLI; the
//!   bounces listener suppressing a recipient end to end.
//! - `crashloop` (issue 21 items 1 and 2): SIGKILL at chosen moments under SMTP and HTTP load,
//!   restart, repeat; nothing acknowledged lost, nothing refused delivered, duplicates counted.
//! - `diskfull` (issue 21 item 3): the spool on a small tmpfs fills: 452 4.3.1 / HTTP 507, delivery
//!   frees it, acceptance resumes, the spool reads back whole after kill -9; the listener's
//!   budget of bytes in flight answers 452 4.3.1.
//! - `anomaly` (issue 20): exact metrics, bounded series, the anomaly detector's breaker.
//! - `dashboards` (issue 20): dashboards and alert rules against a real Prometheus.
//! - `inject` (issue 16): HTTP injection of personalised batches: rendering, per-recipient
//!   answers, Idempotency-Key, kill -9 after the answer, 10,000 recipients with DKIM, header
//!   injection, token rates, HTTPS, `gannet inject`.
//! - `console` (issue 22): the web console over plain HTTP (refusals, audit trail) and in a
//!   real browser (Playwright with Debian's Chromium).
//! - `ship` (issue 19): events to JSONL files (rotation under load, restart appends) and
//!   signed webhooks (receiver down, kill -9, 410 not retried) through the durable outbox.
//! - `ship_amqp` (issue 19): a real RabbitMQ stopped and started mid-run, read with pika.
//! - `scale` (issue 21 item 6): what a large queue needs, on a small one (delivery waits for a
//!   lossless subscriber past its bound).
//! - `soak` (issue 21 item 7): a short `scripts/soak` of mixed traffic whose levels must stay
//!   bounded after each drain, and its rule failing on samples that keep growing.

mod common;

mod anomaly;
mod bounces;
mod cli;
mod console;
mod crashloop;
mod dashboards;
mod delivery_faults;
mod diskfull;
mod dkim;
mod dsn;
mod durability;
mod events;
mod harness;
mod hostile_clients;
mod inject;
mod misbehaving_receivers;
mod pools;
mod protocol_faults;
mod relay;
mod retry;
mod scale;
mod sendlog;
mod shaping;
mod ship;
mod ship_amqp;
mod smtp_input;
mod soak;
mod spoolcrypt;
mod suppress;
mod suppress_bulk;
mod suppress_inbound;
mod suppress_intake;
