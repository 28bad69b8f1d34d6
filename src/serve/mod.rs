//! `gannet serve`: builds every stage from the configuration, runs them, and shuts them down
//! in order.
//!
//! Start: create the event bus and register its subscribers (the JSON outcome log and the
//! metrics counters, both lossless, then whatever the caller's [`BusHook`] adds), open the spool (recovering what it holds), start the queue and re-queue the
//! recovered messages, bind every listener (so a bad address fails before anything runs), then
//! serve. Each start-up stage logs how long it took (`stages`), so a slow restart names its
//! stage; while serving, memory freed after a burst is handed back to the OS (`trim`).
//! Shutdown (SIGTERM, SIGINT, or the token being cancelled): listeners stop accepting
//! and finish their sessions (a message in DATA still gets its durable 250), dispatchers finish
//! the transaction they are in, and everything else stays in the spool for the next start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::MxResolver;
use crate::events::{EventBus, Mode};
use crate::intake::{Intake, Signer};
use crate::message::SharedAcceptor;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueuedMessage, Shapers};
use crate::spool::Spool;

mod stages;
mod trim;
use stages::Stages;

/// Why `serve` could not start; each names the stage and what to check.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(
        "opening the spool stopped unexpectedly: {0} (see the log above; the spool is untouched)"
    )]
    SpoolTask(String),
    #[error("DNS resolver: {0} (check [dns] nameservers)")]
    Resolver(String),
    #[error(
        "shaping data: {0} (fix the [shaping] file or remove the key to use the built-in data)"
    )]
    Shaping(#[from] crate::shaping::ShapingError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Smtp(#[from] crate::smtp::SmtpError),
    #[error("cannot listen for HTTP on {addr}: {source} (change [http] address)")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Dkim(String),
    #[error(transparent)]
    SendLog(#[from] crate::sendlog::SendLogError),
    #[error(transparent)]
    Unsubscribe(#[from] crate::suppression::token::TokenError),
    #[error(transparent)]
    BounceRules(#[from] crate::bounce::RulesError),
    #[error(transparent)]
    Suppression(#[from] crate::suppression::StoreError),
    #[error(transparent)]
    Verp(#[from] crate::bounce::verp::VerpError),
    #[error(transparent)]
    Idempotency(#[from] crate::http::idempotency::IdempotencyError),
    #[error("event shipping: {0}")]
    Ship(#[from] crate::ship::ShipError),
}

/// Addresses actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone)]
pub struct Bound {
    pub smtp: Vec<SocketAddr>,
    pub http: SocketAddr,
}

/// DKIM signing for intake, straight from `auth`.
impl Signer for crate::auth::DkimSigner {
    fn sign(
        &self,
        message: &[u8],
        now: std::time::SystemTime,
    ) -> Result<Vec<u8>, crate::message::Rejection> {
        crate::auth::DkimSigner::sign(self, message, now)
    }

    fn sign_notice(
        &self,
        message: &[u8],
        now: std::time::SystemTime,
    ) -> Result<Vec<u8>, crate::message::Rejection> {
        crate::auth::DkimSigner::sign_with_policy(self, message, now, false)
    }
}

/// The anomaly detector's circuit breaker, over the queue's suspensions.
struct QueueBreaker(Queue);

impl crate::anomaly::Breaker for QueueBreaker {
    fn suspend_campaign(&self, tenant: &str, campaign: &str, reason: &str) -> u64 {
        let filter = crate::queue::Filter {
            tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
            campaign: Some(campaign.to_string()),
            ..Default::default()
        };
        let (s, held) = self.0.suspend_because(filter, "anomaly", reason);
        tracing::warn!(target: "gannet::anomaly", suspension = s.id, held, tenant, campaign,
            reason, "circuit breaker suspended the campaign; resume with `gannet queue resume`");
        s.id
    }
}

/// Registers extra event subscribers before any stage starts (tests, embedders).
pub type BusHook = Box<dyn FnOnce(&EventBus) + Send>;

/// Events the log and metrics subscribers may fall behind by before intake waits (see
/// `EventBus::admit`): far more than a burst produces, so only a stuck subscriber pushes back.
const BUILTIN_SUBSCRIBER_BOUND: usize = 65_536;

/// Run Gannet until shutdown. `ready` is told the bound addresses once everything listens.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
) -> Result<(), ServeError> {
    run_with(config, shutdown, ready, None).await
}

/// [`run`], with `hook` called on the event bus right after the built-in subscribers are
/// registered and before anything can publish.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Bound>>,
    hook: Option<BusHook>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let mut stages = Stages::new();
    // Keys are loaded and checked before anything listens: a bad key stops the start.
    let dkim = crate::auth::DkimSigner::from_config(&config)
        .map_err(|e| ServeError::Dkim(e.to_string()))?;
    let signer: Option<Arc<dyn Signer>> = if dkim.is_empty() && !config.dkim_policy.reject_unsigned
    {
        None
    } else {
        Some(Arc::new(dkim))
    };
    stages.done("dkim keys");
    let metrics = Metrics::new();
    let bus = EventBus::new(&metrics.registry);
    let bound = Mode::Lossless {
        bound: BUILTIN_SUBSCRIBER_BOUND,
    };
    let log_task = tokio::spawn(crate::events::log::run(bus.subscribe("log", bound)));
    // Shaping data first: its provider names bound the `provider` labels and anomaly keys.
    let shaping = crate::shaping::Shaping::from_config(&config)?;
    let providers: std::collections::HashSet<String> =
        shaping.provider_names().map(str::to_string).collect();
    metrics.preset(&config, &providers.iter().cloned().collect::<Vec<_>>());
    let metrics_task = tokio::spawn(crate::metrics::events::run_with(
        metrics.clone(),
        bus.subscribe("metrics", bound),
        crate::metrics::labels::Labels::new(
            providers.iter().cloned(),
            config.metrics.top_campaigns,
            config.metrics.campaign_idle.as_secs(),
        ),
    ));
    // The anomaly detector subscribes now (lossy); its task starts once intake and the queue
    // it acts through exist.
    let anomaly_sub = config
        .anomaly
        .enabled
        .then(|| crate::anomaly::subscribe(&bus));
    if let Some(hook) = hook {
        hook(&bus);
    }
    // The send log opens (and checks its key) before anything listens: a missing or wrong
    // key stops the start with a message, never a silent re-key.
    // The newest event each durable subscriber holds on disk, read before anything publishes:
    // where the replay of possibly lost `received` events starts (see `intake::received`).
    let mut durable_newest: Vec<Option<u64>> = Vec::new();
    let sendlog_writer = if config.sendlog.enabled {
        let c = config.clone();
        let (w, newest) = tokio::task::spawn_blocking(move || {
            let w = crate::sendlog::open(&c)?;
            let newest = w.last_event_time_us()?;
            Ok::<_, crate::sendlog::SendLogError>((w, newest))
        })
        .await
        .map_err(|e| ServeError::Resolver(e.to_string()))??;
        durable_newest.push(newest);
        Some(w)
    } else {
        None
    };
    stages.done("send log open");
    // Event shipping's destinations read the send log's journal at their cursors; with the
    // send log off, shipping keeps an outbox of its own, a durable subscriber too (registered
    // here, before anything publishes). Destinations read files, never the bus.
    let ship_stop = CancellationToken::new();
    let journal = sendlog_writer.as_ref().map(|w| w.journal());
    let shipping =
        crate::ship::start(&config, &bus, &metrics.registry, ship_stop.clone(), journal).await?;
    if let Some(s) = shipping.as_ref().filter(|s| !s.reads_journal) {
        durable_newest.push(s.outbox.newest_at_open_us());
    }
    stages.done("event shipping");
    let sendlog_stop = CancellationToken::new();
    let (sendlog, sendlog_task) = match sendlog_writer {
        Some(w) => {
            let (h, t) = crate::sendlog::SendLog::start(&config, w, &bus, sendlog_stop.clone());
            (Some(h), Some(t))
        }
        None => (None, None),
    };
    // The suppression list opens before anything listens; its policy subscriber (durable)
    // is registered before any stage publishes.
    let suppressions: Option<crate::suppression::SharedStore> = if config.suppression.enabled {
        let path = crate::suppression::SqliteStore::path_for(&config);
        let key_file = config.resolve_path(&config.storage.key_file);
        // The list is keyed by the keyed hash of the address and keeps addresses sealed,
        // under the master key (the send log's and spool's): created (0600) only when no
        // store written with it exists.
        let store = tokio::task::spawn_blocking(move || {
            let key = crate::sendlog::MasterKey::load_or_create(
                &key_file,
                &crate::suppression::SqliteStore::key_check_path(&path),
            )
            .map_err(crate::sendlog::SendLogError::Key)?;
            Ok::<_, ServeError>(crate::suppression::SqliteStore::open(&path, key)?)
        })
        .await
        .map_err(|e| ServeError::Resolver(e.to_string()))??;
        Some(Arc::new(store))
    } else {
        tracing::warn!(
            "[suppression] enabled = false: no suppression list; bounces, complaints and opt-outs are not honoured by Gannet"
        );
        None
    };
    stages.done("suppression list open");
    let suppression_stop = CancellationToken::new();
    let suppression_task = suppressions.as_ref().map(|store| {
        crate::suppression::policy::start(
            config.suppression.clone(),
            store.clone(),
            &bus,
            suppression_stop.clone(),
        )
    });
    let base = config
        .base_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let spool_cfg = config.spool.clone();
    let m = metrics.clone();
    // The spool seals records under keys derived from the master key (the one the send log
    // uses): loaded here, created (0600) only when neither the key nor a spool written with it
    // exists; a missing or different key stops the start.
    let key_file = config.resolve_path(&config.storage.key_file);
    let (spool, recovered) = tokio::task::spawn_blocking(move || {
        let key = crate::sendlog::MasterKey::load_or_create(
            &key_file,
            &Spool::key_check_path(&spool_cfg, &base),
        )
        .map_err(crate::sendlog::SendLogError::Key)?;
        Ok::<_, ServeError>(Spool::open_with_key(&spool_cfg, &base, m, key)?)
    })
    .await
    .map_err(|e| ServeError::SpoolTask(e.to_string()))??;
    stages.done("spool open");
    let resolver = MxResolver::new(&config).map_err(ServeError::Resolver)?;
    // The VERP key (`[bounce] domain`): a small key file read (or created) once at start.
    let verp = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || crate::bounce::verp::VerpKey::from_config(&c))
            .await
            .map_err(|e| ServeError::Dkim(format!("bounce key task failed: {e}")))??
    };
    // The shaping handles (limits data, backoff, the limiter over its in-process backend,
    // warm-up): built here so a cluster backend can replace them without touching the queue.
    let mut shapers = Shapers::in_process(shaping, &config)?;
    shapers.classifier = Arc::new(crate::bounce::Classifier::from_config(&config)?);
    // Classifying returned mail (the API's classify endpoint, the inbound listener): the same
    // rules and provider data as the queue's outcomes.
    let bounce_rules = Arc::new(crate::bounce::report::ReportRules {
        classifier: shapers.classifier.clone(),
        shaping: Some(shapers.shaping.clone()),
    });
    let (queue, bounce_rx) = Queue::start(
        config.clone(),
        spool.clone(),
        resolver,
        metrics.clone(),
        bus.clone(),
        shapers,
        verp.clone(),
        shutdown.clone(),
    )?;
    if let Some(store) = &suppressions {
        queue.set_suppressions(store.clone());
    }
    stages.done("queue start");
    let mut intake = Intake::new(
        config.clone(),
        queue.clone(),
        signer,
        metrics.clone(),
        bus.clone(),
    );
    if let Some(store) = &suppressions {
        intake = intake.with_suppressions(store.clone());
    }
    // A small key file read (or created) once at start.
    let unsubscribe = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || {
            crate::suppression::token::UnsubscribeKey::from_config(&c)
        })
        .await
        .map_err(|e| ServeError::Dkim(format!("unsubscribe key task failed: {e}")))??
    };
    // Suppressed recipients refused at RCPT (`[suppression] smtp_action = "reject"`).
    let rcpt_check: crate::smtp::protocol::RcptCheck = {
        let intake = intake.clone();
        Arc::new(move |q: &crate::smtp::protocol::RcptQuery<'_>| {
            intake.refuse_at_rcpt(q.mail_from, q.rcpt, q.auth_user)
        })
    };
    let acceptor: SharedAcceptor = Arc::new(intake);
    // Answered Idempotency-Keys of HTTP injection (a small file, compacted at start).
    let idempotency = {
        let path = crate::http::idempotency::IdempotencyStore::path_for(&config);
        // Answers are sealed under the master key (the spool's `key-check`, in the same
        // directory, has checked it).
        let key_file = config.resolve_path(&config.storage.key_file);
        let base = config
            .base_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        let check = Spool::key_check_path(&config.spool, &base);
        tokio::task::spawn_blocking(move || {
            let key = crate::sendlog::MasterKey::load_or_create(&key_file, &check)
                .map_err(crate::sendlog::SendLogError::Key)?;
            Ok::<_, ServeError>(crate::http::idempotency::IdempotencyStore::open(
                &path, &key,
            )?)
        })
        .await
        .map_err(|e| ServeError::SpoolTask(e.to_string()))??
    };
    stages.done("idempotency keys open");

    let n = recovered.len();
    // A store that holds nothing (None) needs every replay: the lowest value is the one.
    let replay_from = durable_newest.into_iter().min();
    let mut replayed = 0usize;
    for r in recovered {
        let (msg, body) = QueuedMessage::from_record(r.location, r.record, r.states);
        let msg = msg.with_owed_dsns(r.dsn_owed);
        if let Some(from) = replay_from {
            let pool = queue.class_pool(&msg.class);
            replayed +=
                crate::intake::received::replay(&bus, &msg, body.len() as u64, pool, from) as usize;
        }
        // Owed DSNs are asked for again here (the DSN writer starts below).
        queue.enqueue(Arc::new(msg), None);
    }
    if n > 0 {
        tracing::info!(
            messages = n,
            received_replayed = replayed,
            "re-queued messages found in the spool"
        );
    }
    stages.done("recovered messages re-queued");

    let anomaly_stop = CancellationToken::new();
    let anomaly_task = anomaly_sub.map(|sub| {
        tokio::spawn(crate::anomaly::run(
            config.clone(),
            sub,
            crate::anomaly::Handles {
                bus: bus.clone(),
                metrics: metrics.clone(),
                providers,
                alerter: crate::anomaly::alerter(&config, acceptor.clone()),
                breaker: Some(Arc::new(QueueBreaker(queue.clone()))),
            },
            anomaly_stop.clone(),
        ))
    });

    let notify_stop = CancellationToken::new();
    let bounce_task = tokio::spawn(crate::bounce::notify_loop(
        bounce_rx,
        acceptor.clone(),
        spool.clone(),
        config.hostname.clone(),
        bus.clone(),
        crate::bounce::NotifyOptions {
            hold: config.bounce.hold_dsns,
            shutdown: notify_stop.clone(),
            ..Default::default()
        },
    ));

    // `role = "bounces"` listeners hand their mail to the report handler, never to intake.
    let inbound = if config
        .listeners
        .iter()
        .any(|l| l.role == crate::config::ListenerRole::Bounces)
    {
        let verifier = crate::auth::Verifier::from_config(&config)
            .map_err(|e| ServeError::Resolver(e.to_string()))?;
        Some(Arc::new(crate::bounce::inbound::Inbound {
            rules: bounce_rules.clone(),
            verp: verp.clone(),
            unsubscribe: Some(unsubscribe.clone()),
            unsubscribe_domain: config.hostname.clone(),
            fbl: config
                .bounce
                .fbl_addresses
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect(),
            verifier: Some(verifier),
            sendlog: sendlog.clone(),
            bus: bus.clone(),
        }))
    } else {
        None
    };
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let listener = match (&inbound, l.role) {
            (Some(inbound), crate::config::ListenerRole::Bounces) => {
                let filter_on = inbound.clone();
                crate::smtp::SmtpListener::bind_with(
                    config.clone(),
                    i,
                    Arc::new(crate::bounce::inbound::InboundAcceptor(inbound.clone())),
                    metrics.clone(),
                    Some(Arc::new(move |a: &str| filter_on.accepts_rcpt(a))),
                )
                .await?
            }
            _ => {
                crate::smtp::SmtpListener::bind_checked(
                    config.clone(),
                    i,
                    acceptor.clone(),
                    metrics.clone(),
                    Some(rcpt_check.clone()),
                )
                .await?
            }
        };
        listeners.push(listener);
    }
    // `[http] tls_cert` / `tls_key`: HTTPS with the SMTP listeners' certificate loader.
    let http_tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::smtp::load_acceptor("http", config.resolve_path(cert), config.resolve_path(key))
                .await?,
        ),
        _ => None,
    };
    let http_listener = tokio::net::TcpListener::bind(config.http.address)
        .await
        .map_err(|e| ServeError::HttpBind {
            addr: config.http.address,
            source: e,
        })?;
    let bound = Bound {
        smtp: listeners.iter().map(|l| l.local_addr()).collect(),
        http: http_listener.local_addr().unwrap_or(config.http.address),
    };
    stages.done("listeners bound");
    tracing::info!(smtp = ?bound.smtp, http = %bound.http, "gannet is serving");
    if let Some(tx) = ready {
        let _ = tx.send(bound);
    }

    let domain_checks = crate::auth::DomainChecks::new();
    let router = crate::http::router(crate::http::ApiState {
        config: config.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        bus: bus.clone(),
        sendlog: sendlog.clone(),
        acceptor: acceptor.clone(),
        unsubscribe: Some(unsubscribe),
        suppressions: suppressions.clone(),
        bounce_rules: bounce_rules.clone(),
        idempotency: Some(idempotency),
        rates: Arc::new(crate::http::rate::TokenRates::from_config(&config)),
        outbox: shipping.as_ref().and_then(|s| s.own_outbox()),
        ship_reads_journal: shipping.as_ref().is_some_and(|s| s.reads_journal),
        domain_checks: domain_checks.clone(),
    });
    let http_task = tokio::spawn(crate::http::run(
        http_listener,
        router,
        http_tls,
        shutdown.clone(),
    ));
    let checks_task = tokio::spawn(crate::auth::run_periodic_checks(
        config.clone(),
        metrics.clone(),
        domain_checks,
        config.dkim_policy.check_interval,
        shutdown.clone(),
    ));
    let smtp_tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(l.run(shutdown.clone())))
        .collect();

    // Memory a burst freed goes back to the OS once the burst is over.
    let trim_task = tokio::spawn(trim::run(shutdown.clone()));
    let flusher = {
        let spool = spool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let s = spool.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            s.flush_index();
                            // A spool refusing mail for lack of space accepts again within a
                            // second of space returning.
                            s.refresh_free_space();
                        })
                        .await;
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        })
    };

    shutdown.cancelled().await;
    tracing::info!("shutting down: listeners finish their sessions, deliveries in progress finish");
    for t in smtp_tasks {
        let _ = t.await;
    }
    let _ = http_task.await;
    checks_task.abort();
    if tokio::time::timeout(Duration::from_secs(60), queue.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("deliveries still running after 60s; they stay queued for the next start");
    }
    // The DSN writer finishes the DSN it is queueing (so it is not queued twice after the
    // restart) and stops; DSNs not yet queued stay owed in the spool for the next start.
    notify_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(30), bounce_task)
        .await
        .is_err()
    {
        tracing::warn!(
            "the DSN writer did not stop within 30s; its DSNs stay owed for the next start"
        );
    }
    // Outcomes held until their events are durable are applied before the index is flushed.
    if tokio::time::timeout(Duration::from_secs(10), queue.settle_state_changes())
        .await
        .is_err()
    {
        tracing::warn!(
            "spool state changes still waiting for the send log after 10s; those messages may be delivered again after the restart"
        );
    }
    let _ = flusher.await;
    let _ = trim_task.await;
    let s = spool.clone();
    let _ = tokio::task::spawn_blocking(move || s.flush_index()).await;
    // Let the log and the counters take every event published before stopping.
    if tokio::time::timeout(Duration::from_secs(5), bus.drained())
        .await
        .is_err()
    {
        tracing::warn!("event subscribers still behind after 5s; stopping anyway");
    }
    log_task.abort();
    metrics_task.abort();
    anomaly_stop.cancel();
    if let Some(t) = anomaly_task {
        let _ = t.await;
    }
    // Last: everything published until now goes into the send log before we exit.
    sendlog_stop.cancel();
    suppression_stop.cancel();
    if let Some(t) = suppression_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(Err(e)) = suppressions.as_ref().map(|s| s.flush()) {
        tracing::warn!(error = %e, "suppression list not flushed at shutdown");
    }
    if let Some(t) = sendlog_task {
        let _ = t.await;
    }
    // The outbox appends what was published until now; destinations stop where they are
    // (what they had not confirmed goes out after the next start).
    ship_stop.cancel();
    if let Some(s) = shipping {
        s.join().await;
    }
    tracing::info!("stopped; queued mail stays in the spool");
    Ok(())
}

/// Cancel `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop gannet with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}
