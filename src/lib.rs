//! Gannet: a high-throughput SMTP delivery and deliverability gateway.
//!
//! A message flows one way: a listener (`smtp`, later `http`) produces a
//! [`message::Submission`]; `intake` classifies it, adds missing headers, signs it (`auth`) and
//! makes it durable (`spool`) before the listener answers 250; `queue` schedules each recipient
//! domain's share; `delivery` talks to the destination MX through a source address of the
//! message's pool, paced by `shaping`; outcomes go back to `queue` (retry, bounce via `bounce`)
//! and to logs and `metrics`. See ARCHITECTURE.md for the codemap.

pub mod anomaly;
pub mod auth;
pub mod bounce;
pub mod config;
pub mod delivery;
pub mod events;
pub mod http;
pub mod intake;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod sendlog;
pub mod serve;
pub mod shaping;
pub mod ship;
pub mod smtp;
pub mod spool;
pub mod suppression;
