//! The local platform: `zdeploy up`. The stable and canary revisions run as child
//! processes from the manifest's `local` section behind an embedded zgate; the rollout
//! engine decides, analysis judges (embedded scrape or Prometheus), and every status is
//! recorded in the state directory before its actions run, so a restart resumes.

pub mod api;
pub mod chaos;
mod child;
mod private;
pub mod process;
pub mod release;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::{broadcast, mpsc, watch};
use zdeploy_api::local_release::LocalRelease;
use zdeploy_api::revision::Revision;
use zdeploy_api::service::LocalRun;
use zdeploy_api::shadow::ShadowCopy;
use zdeploy_api::{Pool, Weight, ZmqService, ZmqServiceStatus};
use zdeploy_gateway::control::Control;
use zdeploy_gateway::http::{self, Refused};
use zdeploy_gateway::{Gateway, GatewayConfig, PoolConfig};

use crate::analysis::promql::Target;
use crate::analysis::webhook::AlertInbox;
use crate::analysis::{AnalysisRun, Analyzer, Source, Span};
use crate::engine::{self, Action, Command, Input, Reach, Reason};
use api::{ChaosQueued, ChaosReply, ChaosRequest, CommandReply, Queued, StatusView};
use chaos::{Experiment, Scheduled, Step};
use process::ProcessPool;
use state::{Ports, StateDir, StateLock};
use zdeploy_api::ChaosSchedule;
use zdeploy_api::chaos::ChaosRun;
use zdeploy_gateway::control::ActiveFault;

/// How often crashed processes are restarted and, until zgate reaches the canary, its
/// reach is looked at.
const TICK: Duration = Duration::from_millis(100);
/// How long zgate's data plane may be unhealthy before `zdeploy up` gives up on it.
const GATEWAY_GRACE: Duration = Duration::from_secs(3);

/// Why a runtime stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Its zgate stopped serving; the recorded status is intact, so a restart resumes.
    #[error("{0}; the recorded status is intact: start zdeploy up again to resume")]
    GatewayStopped(zdeploy_gateway::heartbeat::Unhealthy),
}
/// The shortest wait for an engine deadline (one just passed is handled at once, but a
/// deadline the engine found not yet passed, by a clock's rounding, is not busy-polled).
const TIMER_FLOOR: Duration = Duration::from_millis(10);
/// The timer's length when the engine has no deadline (the branch is then disabled).
const IDLE: Duration = Duration::from_secs(3600);
/// How long zgate may take to connect to the processes started with `zdeploy up`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How often the embedded scrape samples zgate between analyses. Every scrape is also a
/// look for the sequential tests (valid at any number of looks): a breach they already
/// show is judged at once instead of at the next interval.
pub const SCRAPE_EVERY: Duration = Duration::from_millis(25);
/// How often chaos schedules are planned and a running experiment advanced.
const CHAOS_EVERY: Duration = Duration::from_millis(100);

/// How to run `zdeploy up`.
pub struct UpConfig {
    /// The service, as validated from the manifest.
    pub service: ZmqService,
    /// The manifest's folder: `spec.local.track` names files relative to it.
    pub manifest_dir: PathBuf,
    /// Root of the state directories.
    pub state_root: PathBuf,
    /// ZeroMQ endpoint zgate binds for the service's clients.
    pub frontend: String,
    /// Judge with this Prometheus instead of the embedded scrape.
    pub prometheus: Option<String>,
    /// Serve the admin API here (loopback; port 0 picks one).
    pub admin: SocketAddr,
    /// Serve the Alertmanager webhook here (same bearer token as the admin API).
    pub webhook: Option<SocketAddr>,
    /// Chaos schedules to run against this service.
    pub chaos: Vec<ChaosSchedule>,
}

/// Something the runtime did, for live views (`zdeploy demo`) and logs.
#[derive(Clone, Debug)]
pub enum RuntimeEvent {
    /// The recorded status changed.
    Status(Box<ZmqServiceStatus>),
    /// zgate now sends this share to the canary, since `at`.
    Weight {
        /// Canary weight.
        canary: Weight,
        /// When it was applied.
        at: Instant,
    },
    /// An analysis finished.
    Analysis(Box<AnalysisRun>),
    /// A line for the operator.
    Note(String),
}

/// A running `zdeploy up`.
pub struct Runtime {
    name: String,
    spec: zdeploy_api::ZmqServiceSpec,
    local: LocalRun,
    /// The manifest's release: what a rollout without `--image` releases, and what an
    /// image given with `--image` is started with.
    release: LocalRelease,
    /// The manifest's folder.
    base: PathBuf,
    state: StateDir,
    /// Held while this runtime lives: one `zdeploy up` per state directory.
    _lock: StateLock,
    status: ZmqServiceStatus,
    gateway: Gateway,
    stable: ProcessPool,
    canary: ProcessPool,
    analyzer: Analyzer,
    events: broadcast::Sender<RuntimeEvent>,
    view: watch::Sender<StatusView>,
    commands: mpsc::Receiver<Queued>,
    chaos_requests: mpsc::Receiver<ChaosQueued>,
    schedules: Vec<Scheduled>,
    experiment: Option<(Experiment, Option<tokio::sync::oneshot::Sender<ChaosReply>>)>,
    chaos_runs: Arc<crate::experiment::RunCounts>,
    metrics_url: String,
    /// Where the admin API listens.
    pub admin_url: String,
}

/// A rollback notice with the first mismatching pair zgate kept of the shadowed canary,
/// escaped and capped, so the person reading it sees what differed.
fn with_first_mismatch(mut actions: Vec<Action>, control: &Control) -> Vec<Action> {
    for a in &mut actions {
        if let Action::Event(n) = a
            && n.reason == Reason::RolledBack
            && let Some(first) = control.samples().first()
        {
            n.message = format!("{}; first mismatching pair {}", n.message, first.summary());
        }
    }
    actions
}

/// Waits until zgate holds a connection to every process of `pool`, so that no request
/// meets a pool that is running but not yet connected.
async fn wait_live(gateway: &Gateway, pool: Pool, n: usize, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while gateway.live_backends(pool.name()) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "zgate did not connect to the {pool} processes within {}",
                zdeploy_api::Duration::from(limit)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Runtime {
    /// Starts everything the recorded status calls for and serves the admin API.
    pub async fn start(
        config: UpConfig,
    ) -> Result<(Self, broadcast::Receiver<RuntimeEvent>), String> {
        let svc = config.service;
        let name = svc.name_any();
        let local = svc.spec.local.clone().ok_or_else(|| {
            format!("{name}: spec.local is missing: add the command that starts one revision, e.g.\n  local:\n    command: [python3, service.py, --bind, \"{{{{endpoint}}}}\"]")
        })?;
        let state = StateDir::open(&config.state_root, &name)
            .map_err(|e| format!("state directory: {e}"))?;
        // Before anything is read: the status read here is the one this process saves over.
        let lock = state
            .lock(&config.frontend)
            .map_err(|e| format!("{name}: {e}"))?;
        let base = config.manifest_dir.clone();
        let release = release::read(&local, &base).map_err(|e| format!("{name}: {e}"))?;
        release::record(&state, &release).map_err(|e| format!("{name}: {e}"))?;
        let manifest_revision = release.revision(&svc.spec.image()).to_string();
        let mut status = state
            .load_status()
            .map_err(|e| format!("reading recorded status: {e}"))?
            .unwrap_or_default();
        crate::engine::check_recorded(&svc.spec, &status).map_err(|e| {
            format!(
                "recorded status {}: {e}; fix it, or remove it to start again from the manifest",
                state.status_path().display()
            )
        })?;
        let resumed = status.stable_revision.is_some();
        status
            .stable_revision
            .get_or_insert_with(|| manifest_revision.clone());
        let n = local.replicas as usize;
        let ports = match state
            .load_ports()
            .filter(|p| p.stable.len() == n && p.canary.len() == n)
        {
            Some(p) => p,
            None => {
                let mut all = Vec::new();
                for _ in 0..2 * n {
                    all.push(free_port().map_err(|e| format!("finding a free port: {e}"))?);
                }
                let p = Ports {
                    stable: all[..n].to_vec(),
                    canary: all[n..].to_vec(),
                };
                state.save_ports(&p).map_err(|e| e.to_string())?;
                p
            }
        };
        let logs = |pool: Pool| (0..n).map(|i| state.log_path(pool, i)).collect();
        let mut stable = ProcessPool::new(Pool::Stable, ports.stable.clone(), logs(Pool::Stable));
        let mut canary = ProcessPool::new(Pool::Canary, ports.canary.clone(), logs(Pool::Canary));

        // zgate's pools are in `Pool::ALL` order, the order of `weights_for`.
        let pools = [&stable, &canary]
            .map(|p| PoolConfig {
                name: p.pool.name().into(),
                endpoints: p.endpoints(),
            })
            .to_vec();
        let mut gw = GatewayConfig::new(&name, &config.frontend, pools);
        gw.latency_edges = svc.spec.latency_edges();
        // A restarted runtime never sends more to the canary than the recorded weight.
        let w = status.canary_weight;
        gw.weights = Pool::ALL
            .map(|p| (p.name().to_string(), p.share(w)))
            .into_iter()
            .collect();
        // As recorded: a resumed rollout keeps its routes by client.
        gw.routes = status.routes.clone();
        // As recorded: a resumed shadow step keeps copying.
        gw.shadow = status.shadow_percent.map(|percent| ShadowCopy {
            pool: Pool::Canary.name().into(),
            percent,
        });
        gw.compare = svc.spec.zmq.compare.clone();
        gw.timeout = svc.spec.zmq.request_timeout;
        gw.classifier = svc.spec.zmq.error_classifier.clone();
        gw.metrics = Some("127.0.0.1:0".parse().expect("loopback address"));
        let gateway = Gateway::start(gw)
            .await
            .map_err(|e| format!("starting zgate: {e}"))?;
        state
            .save_owner(gateway.frontend())
            .map_err(|e| format!("state directory: {e}"))?;
        let metrics_url = format!(
            "http://{}/metrics",
            gateway.metrics_addr().expect("metrics listener")
        );

        let (events, rx) = broadcast::channel(1024);
        let note = |s: String| {
            tracing::info!("{s}");
            let _ = events.send(RuntimeEvent::Note(s));
        };
        let launch = |revision: &str| {
            release::launch(&state, revision, &release, &base).map_err(|e| e.to_string())
        };
        let stable_image = status.stable_revision.clone().expect("set above");
        stable.start(launch(&stable_image)?).await?;
        wait_live(&gateway, Pool::Stable, n, START_LIMIT).await?;
        note(format!(
            "stable {stable_image} running on {}",
            stable.endpoints().join(", ")
        ));
        if status.rollout.is_some()
            && let Some(image) = status.canary_revision.clone()
        {
            // The time `zdeploy up` was stopped is not the canary's lack of progress.
            status =
                crate::engine::step(&svc.spec, &status, &Input::Restarted, Timestamp::now()).status;
            canary.start(launch(&image)?).await?;
            wait_live(&gateway, Pool::Canary, n, START_LIMIT).await?;
            note(format!(
                "resumed the rollout of {image} at step {} ({}%)",
                status.current_step.unwrap_or(0),
                status.canary_weight
            ));
        } else if resumed {
            note(format!(
                "resumed: {} is stable, no rollout in progress",
                stable_image
            ));
        }

        let inbox = config
            .webhook
            .map(|_| Arc::new(AlertInbox::only_for(&name)));
        let source = match &config.prometheus {
            Some(url) => Source::prometheus(url),
            None => Source::scrape(&metrics_url),
        };
        let target = Target {
            service: name.clone(),
            namespace: None,
            pool: Pool::Canary,
        };
        let mut analyzer = Analyzer::new(
            source,
            target,
            svc.spec.strategy.analysis().clone(),
            inbox.clone(),
            Span::CanaryLife,
        );
        if canary.running.is_some() {
            // zgate starts again from zero: the canary's counts so far are in the status.
            analyzer.resume(&status.analysis);
        }

        let token = state.token().map_err(|e| format!("admin token: {e}"))?;
        let (cmd_tx, commands) = mpsc::channel(16);
        let (chaos_tx, chaos_requests) = mpsc::channel(16);
        let mut schedules = state.load_chaos();
        for cs in config.chaos {
            let name = cs.name_any();
            match schedules.iter_mut().find(|s| s.schedule.name_any() == name) {
                Some(known) => known.schedule = cs,
                None => schedules.push(Scheduled {
                    schedule: cs,
                    status: Default::default(),
                    since: Timestamp::now(),
                }),
            }
        }
        let view = StatusView {
            name: name.clone(),
            frontend: gateway.frontend().to_string(),
            metrics: metrics_url.clone(),
            status: status.clone(),
        };
        let (view_tx, view_rx) = watch::channel(view);
        let chaos_runs = Arc::new(crate::experiment::RunCounts::default());
        let router = api::router(token.clone(), view_rx, cmd_tx, chaos_tx, manifest_revision)
            .merge(api::metrics_router(chaos_runs.clone()));
        let limits = http::Limits::default();
        let (bound, _) = http::bind(config.admin, router, limits, Refused::default())
            .await
            .map_err(|e| format!("admin API on {}: {e}", config.admin))?;
        let admin_url = format!("http://{bound}");
        if let (Some(addr), Some(inbox)) = (config.webhook, inbox) {
            let router = crate::analysis::webhook::router(inbox, token);
            let limits = http::Limits {
                max_body_bytes: crate::analysis::webhook::MAX_BODY,
                ..limits
            };
            http::bind(addr, router, limits, Refused::default())
                .await
                .map_err(|e| format!("webhook on {addr}: {e}"))?;
        }
        state.save_endpoint(&admin_url).map_err(|e| e.to_string())?;
        state.save_status(&status).map_err(|e| e.to_string())?;
        let runtime = Self {
            name,
            spec: svc.spec,
            local,
            release,
            base,
            state,
            _lock: lock,
            status,
            gateway,
            stable,
            canary,
            analyzer,
            events,
            view: view_tx,
            commands,
            chaos_requests,
            schedules,
            experiment: None,
            chaos_runs,
            metrics_url,
            admin_url,
        };
        Ok((runtime, rx))
    }

    /// zgate's frontend endpoint.
    pub fn frontend(&self) -> &str {
        self.gateway.frontend()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }

    /// Runs until `stop` turns true, then stops every process and the gateway.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), RunError> {
        let mut tick = tokio::time::interval(TICK);
        let mut analysis = tokio::time::interval(
            self.spec
                .strategy
                .analysis()
                .interval
                .get()
                .max(Duration::from_millis(100)),
        );
        let mut scrape = tokio::time::interval(SCRAPE_EVERY);
        let mut chaos = tokio::time::interval(CHAOS_EVERY);
        for t in [&mut tick, &mut analysis, &mut scrape, &mut chaos] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let inbox = self.analyzer.inbox().cloned();
        let mut unhealthy_since: Option<Instant> = None;
        let outcome = loop {
            let notified = async {
                match &inbox {
                    Some(i) => i.notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            // The engine is given the time when it has a deadline, not on every tick.
            let deadline = engine::clock::poll_timeout(&self.spec, &self.status, Timestamp::now())
                .map(|t| {
                    Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default()
                });
            let timer = tokio::time::sleep(deadline.map_or(IDLE, |d| d.max(TIMER_FLOOR)));
            tokio::select! {
                _ = timer, if deadline.is_some() => {
                    self.feed(Input::Tick).await;
                }
                _ = tick.tick() => {
                    match self.gateway.health() {
                        Ok(()) => unhealthy_since = None,
                        Err(why) if unhealthy_since.get_or_insert_with(Instant::now).elapsed() >= GATEWAY_GRACE => {
                            tracing::error!("{why}: stopping, so that zdeploy up can be started again");
                            break Err(RunError::GatewayStopped(why));
                        }
                        Err(_) => {}
                    }
                    for note in self.stable.restart_exited().into_iter().chain(self.canary.restart_exited()) {
                        self.note(note);
                    }
                    if self.status.rollout.as_ref().is_some_and(|r| r.reached.is_none()) {
                        self.feed(Input::Reach(self.reach())).await;
                    }
                }
                _ = scrape.tick(), if self.canary.running.is_some() => {
                    if let Err(e) = self.analyzer.observe().await {
                        tracing::warn!("{e}");
                    }
                    if let Some(r) = &self.status.rollout
                        && self.analyzer.breach(engine::clock::canary_age(r, Timestamp::now()))
                    {
                        self.analyse().await;
                    }
                }
                _ = analysis.tick(), if self.status.rollout.is_some() => self.analyse().await,
                _ = notified => self.analyse().await,
                Some((mut cmd, reply)) = self.commands.recv() => {
                    // A person's `--image X` releases X started as the manifest says.
                    if let Command::Rollout { revision, .. } = &mut cmd {
                        let named = Revision::parse(revision);
                        if named.digest.is_none() {
                            *revision = self.release.revision(&named.image).to_string();
                        }
                    }
                    let refused = self.feed(Input::Command(cmd)).await;
                    let _ = reply.send(CommandReply { refused, status: self.status.clone() });
                }
                Some((req, reply)) = self.chaos_requests.recv() => self.chaos_request(req, reply).await,
                _ = chaos.tick() => self.chaos_tick().await,
                _ = stop.changed() => break Ok(()),
            }
        };
        if let Some((e, reply)) = self.experiment.take() {
            let run = e.abort("zdeploy up is stopping");
            self.finish_experiment(&e, run, reply);
        }
        self.note("stopping: processes and gateway".into());
        self.canary.stop().await;
        self.stable.stop().await;
        match outcome {
            Ok(()) => self.gateway.shutdown().await,
            // A stalled data plane would never be joined: dropping it stops the rest.
            Err(_) => drop(self.gateway),
        }
        outcome
    }

    async fn analyse(&mut self) {
        let (Some(r), Some(_)) = (&self.status.rollout, &self.canary.running) else {
            return;
        };
        let started = Timestamp::now();
        let run = self
            .analyzer
            .run(engine::clock::canary_age(r, started))
            .await;
        let _ = self
            .events
            .send(RuntimeEvent::Analysis(Box::new(run.clone())));
        let input = Input::Analysis {
            verdict: run.verdict,
            measurements: run.measurements,
            started,
        };
        self.feed(input).await;
    }

    /// What zgate sees of the canary's processes.
    fn reach(&self) -> Reach {
        if self.gateway.live_backends(Pool::Canary.name()) > 0 {
            Reach::Live
        } else if self.canary.running.is_none() {
            Reach::NotReady
        } else {
            Reach::Unreachable {
                handshake: self.gateway.handshake_failure(Pool::Canary.name()),
            }
        }
    }

    fn launch(&self, revision: &str) -> Result<release::Launch, String> {
        release::launch(&self.state, revision, &self.release, &self.base).map_err(|e| e.to_string())
    }

    /// Keeps the records of stable, the last rollout's revision (a retry starts it again)
    /// and the manifest's release; deletes the rest.
    fn collect_releases(&self) {
        let manifest = self.release.revision(&self.spec.image()).to_string();
        let mut keep = vec![manifest.as_str()];
        keep.extend(self.status.stable_revision.as_deref());
        keep.extend(self.status.history.first().map(|h| h.revision.as_str()));
        release::collect(&self.state, &keep);
    }

    fn note(&self, s: String) {
        tracing::info!("{s}");
        let _ = self.events.send(RuntimeEvent::Note(s));
    }

    /// Runs the engine on one input; records the status, then carries out the actions.
    async fn feed(&mut self, input: Input) -> Option<String> {
        let mut queue = vec![input];
        let mut refused = None;
        while let Some(input) = queue.pop() {
            let mut d = engine::step(&self.spec, &self.status, &input, Timestamp::now());
            // What the new canary changes from stable, for its status and history.
            let started = d.actions.iter().find_map(|a| match a {
                Action::StartCanary { revision } => Some(revision.clone()),
                _ => None,
            });
            if let (Some(new), Some(old)) = (started, self.status.stable_revision.as_deref()) {
                d.status.changes = release::changes(&self.state, old, &new);
            }
            let ended = self.status.rollout.is_some() && d.status.rollout.is_none();
            if let (Input::Command(_), Some(r)) = (&input, &d.refused) {
                refused = Some(r.clone());
            }
            if d.status != self.status {
                if let Err(e) = self.state.save_status(&d.status) {
                    self.note(format!("could not record the status: {e}"));
                }
                self.status = d.status;
                if ended {
                    self.collect_releases();
                }
                self.view.send_modify(|v| v.status = self.status.clone());
                let _ = self
                    .events
                    .send(RuntimeEvent::Status(Box::new(self.status.clone())));
            }
            // Read now: the pairs go once the shadow copy stops, before the notice is told.
            let actions = with_first_mismatch(d.actions, self.gateway.control());
            for action in actions {
                let started = matches!(action, Action::StartCanary { .. });
                if let Err(reason) = self.apply(action).await {
                    // A canary that cannot start is rolled back like any other failure.
                    queue.push(Input::Command(Command::Abort { reason }));
                    break;
                }
                if started {
                    // The engine gives the canary weight once zgate reaches it.
                    queue.push(Input::Reach(self.reach()));
                }
            }
        }
        refused
    }

    async fn apply(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::StartCanary { revision } => {
                let launch = self.launch(&revision)?;
                self.canary
                    .start(launch)
                    .await
                    .map_err(|e| format!("canary did not start: {e}"))?;
                // Usually within milliseconds; one that never connects is the engine's to
                // judge (the reach deadline), from what `reach` reports on every tick.
                if let Err(e) = wait_live(
                    &self.gateway,
                    Pool::Canary,
                    self.local.replicas as usize,
                    Duration::from_secs(2),
                )
                .await
                {
                    self.note(format!(
                        "{e}; no weight goes to the canary before zgate reaches it"
                    ));
                }
                self.analyzer.new_canary();
                self.note(format!(
                    "canary {revision} running on {}",
                    self.canary.endpoints().join(", ")
                ));
            }
            Action::SetCanaryWeight(w) => {
                self.gateway
                    .control()
                    .update(|s| s.weights = Pool::ALL.map(|p| p.share(w)).to_vec());
                let _ = self.events.send(RuntimeEvent::Weight {
                    canary: w,
                    at: Instant::now(),
                });
                self.note(format!("weights: stable {}%, canary {w}%", w.complement()));
            }
            Action::SetRoutes(routes) => {
                let shown: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
                self.gateway.control().update(|s| s.routes = routes);
                self.note(match shown.as_slice() {
                    [] => "routes by client removed".into(),
                    all => format!("routes by client: {}", all.join(", ")),
                });
            }
            Action::SetShadow(percent) => {
                let shadow = (percent != Weight::ZERO).then(|| ShadowCopy {
                    pool: Pool::Canary.name().into(),
                    percent,
                });
                self.gateway.control().update(|s| s.shadow = shadow);
                self.note(if percent == Weight::ZERO {
                    "shadow traffic stopped".into()
                } else {
                    format!("shadow traffic: {percent}% of stable's requests copied to the canary, replies compared")
                });
            }
            Action::DeployStable { revision } => {
                self.drain(Pool::Stable).await;
                let launch = self.launch(&revision)?;
                self.stable
                    .start(launch)
                    .await
                    .map_err(|e| format!("new stable did not start: {e}"))?;
                wait_live(
                    &self.gateway,
                    Pool::Stable,
                    self.local.replicas as usize,
                    START_LIMIT,
                )
                .await?;
                self.note(format!("stable now runs {revision}"));
            }
            Action::StopCanary => {
                self.drain(Pool::Canary).await;
                self.canary.stop().await;
            }
            Action::Event(n) => {
                let (severity, reason) = (n.severity.as_str(), n.reason.as_str());
                self.note(format!("{severity} {reason}: {}", n.text()));
            }
        }
        Ok(())
    }

    fn set_faults(&self, pools: &[Pool], fault: Option<ActiveFault>) {
        let indexes: Vec<usize> = pools
            .iter()
            .filter_map(|p| self.gateway.control().pool_index(p.name()))
            .collect();
        self.gateway.control().update(|s| {
            for i in &indexes {
                s.faults[*i] = fault.clone();
            }
        });
    }

    fn record_chaos(&mut self, name: &str, run: ChaosRun) {
        let (severity, reason) = crate::experiment::notice(run.verdict);
        self.note(format!(
            "{} {reason}: {name}: {}",
            severity.as_str(),
            run.reason
        ));
        self.chaos_runs.record(run.verdict);
        if let Some(s) = self
            .schedules
            .iter_mut()
            .find(|s| s.schedule.name_any() == name)
        {
            s.status.history.insert(0, run);
            s.status
                .history
                .truncate(s.schedule.spec.history_limit as usize);
        }
        if let Err(e) = self.state.save_chaos(&self.schedules) {
            self.note(format!("could not record chaos history: {e}"));
        }
    }

    fn finish_experiment(
        &mut self,
        e: &Experiment,
        run: ChaosRun,
        reply: Option<tokio::sync::oneshot::Sender<ChaosReply>>,
    ) {
        // Revert first: nothing else happens while a fault might still be in place.
        self.set_faults(&chaos::pools(e.spec().experiment.pool), None);
        self.record_chaos(&e.name, run.clone());
        if let Some(r) = reply {
            let _ = r.send(ChaosReply {
                run: Some(run),
                schedules: self.schedules.clone(),
                ..Default::default()
            });
        }
    }

    async fn chaos_request(
        &mut self,
        req: ChaosRequest,
        reply: tokio::sync::oneshot::Sender<ChaosReply>,
    ) {
        match req {
            ChaosRequest::List => {
                let _ = reply.send(ChaosReply {
                    schedules: self.schedules.clone(),
                    ..Default::default()
                });
            }
            ChaosRequest::Suspend { name, suspend } => {
                let found = self
                    .schedules
                    .iter_mut()
                    .find(|s| s.schedule.name_any() == name)
                    .map(|s| s.schedule.spec.suspend = suspend);
                let error = found
                    .is_none()
                    .then(|| format!("no chaos schedule {name:?} in this runtime"));
                let _ = self.state.save_chaos(&self.schedules);
                let _ = reply.send(ChaosReply {
                    schedules: self.schedules.clone(),
                    error,
                    ..Default::default()
                });
            }
            ChaosRequest::Run { schedule, dry_run } => {
                let cs = *schedule;
                if cs.spec.experiment.service != self.name {
                    let error = Some(format!(
                        "this runtime runs {}, not {}",
                        self.name, cs.spec.experiment.service
                    ));
                    let _ = reply.send(ChaosReply {
                        error,
                        ..Default::default()
                    });
                    return;
                }
                if dry_run {
                    let plan = self.describe_targets(&cs);
                    let _ = reply.send(ChaosReply {
                        plan: Some(plan),
                        ..Default::default()
                    });
                    return;
                }
                let name = cs.name_any();
                match self
                    .schedules
                    .iter_mut()
                    .find(|s| s.schedule.name_any() == name)
                {
                    Some(s) => s.schedule = cs.clone(),
                    None => self.schedules.push(Scheduled {
                        schedule: cs.clone(),
                        status: Default::default(),
                        since: Timestamp::now(),
                    }),
                }
                self.start_experiment(cs, Timestamp::now(), Some(reply))
                    .await;
            }
        }
    }

    fn describe_targets(&self, cs: &ChaosSchedule) -> String {
        let e = &cs.spec.experiment;
        let mut lines = Vec::new();
        for pool in chaos::pools(e.pool) {
            match chaos::injection(&e.fault, e.duration) {
                chaos::Injection::Gateway(f) => {
                    lines.push(crate::experiment::describe_fault(pool, &f))
                }
                // A pod of the local platform is a process.
                chaos::Injection::ProcessKill | chaos::Injection::PodKill => {
                    let p = self.processes(pool);
                    let n = chaos::count(e.mode, e.value, e.max_targets, p.size());
                    lines.push(format!(
                        "kill {n} of {} {pool} processes (restarted like any crashed process)",
                        p.size()
                    ));
                }
            }
        }
        format!("dry run, nothing changed: would hit {}", lines.join("; "))
    }

    async fn start_experiment(
        &mut self,
        cs: ChaosSchedule,
        scheduled: Timestamp,
        reply: Option<tokio::sync::oneshot::Sender<ChaosReply>>,
    ) {
        let name = cs.name_any();
        let refuse = |reason: String| chaos::skipped(scheduled, reason);
        let skip = if self.experiment.is_some() {
            Some("another experiment is running".to_string())
        } else {
            zdeploy_chaos::schedule::refused_by(&cs.spec, &self.guards())
        };
        let prepared = match skip {
            Some(reason) => Err(refuse(reason)),
            None => Experiment::prepare(&cs, scheduled, &self.metrics_url)
                .await
                .map_err(refuse),
        };
        let mut e = match prepared {
            Ok(e) => e,
            Err(run) => {
                self.record_chaos(&name, run.clone());
                if let Some(r) = reply {
                    let _ = r.send(ChaosReply {
                        run: Some(run),
                        ..Default::default()
                    });
                }
                return;
            }
        };
        let x = &cs.spec.experiment;
        let pools = chaos::pools(x.pool);
        match chaos::injection(&x.fault, x.duration) {
            chaos::Injection::Gateway(spec) => {
                // The fault carries its own expiry inside zgate: a crash here cannot leave it behind.
                let until = zdeploy_gateway::deadline::after(Instant::now(), spec.duration.get());
                self.set_faults(&pools, Some(ActiveFault { spec, until }));
                e.run.targets = pools.iter().map(|p| format!("zgate pool {p}")).collect();
            }
            // A pod of the local platform is a process.
            chaos::Injection::ProcessKill | chaos::Injection::PodKill => {
                for pool in &pools {
                    let p = match pool {
                        Pool::Stable => &mut self.stable,
                        Pool::Canary => &mut self.canary,
                    };
                    let n = chaos::count(x.mode, x.value, x.max_targets, p.size());
                    e.run.targets.extend(p.kill_some(n));
                }
            }
        }
        self.note(format!(
            "chaos {name}: injected into {}",
            e.run.targets.join(", ")
        ));
        self.experiment = Some((e, reply));
    }

    async fn chaos_tick(&mut self) {
        if let Some((mut e, reply)) = self.experiment.take() {
            match e.advance(self.status.rollout_revision().as_deref()).await {
                Step::Wait => self.experiment = Some((e, reply)),
                Step::Revert(pools) => {
                    self.set_faults(&pools, None);
                    self.experiment = Some((e, reply));
                }
                Step::Done(run) => {
                    self.finish_experiment(&e, run, reply);
                    return;
                }
            }
        }
        let guards = self.guards();
        let now = Timestamp::now();
        let running = self.experiment.as_ref().map(|(e, _)| e.name.clone());
        let mut due = Vec::new();
        for s in &mut self.schedules {
            let last = s
                .status
                .last_schedule_time
                .as_ref()
                .map_or(s.since, |t| t.0);
            // Only a run of the same schedule meets its concurrency policy.
            let own = running.as_deref() == Some(s.schedule.name_any().as_str());
            match zdeploy_chaos::schedule::plan(&s.schedule.spec, last, own, &guards, now) {
                Ok(plan) => {
                    if let Some(t) = plan.last_schedule_time {
                        s.status.last_schedule_time =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t));
                    }
                    for d in plan.decisions {
                        due.push((s.schedule.clone(), d));
                    }
                }
                Err(e) => tracing::warn!("chaos schedule {}: {e}", s.schedule.name_any()),
            }
        }
        for (cs, d) in due {
            match d {
                zdeploy_chaos::schedule::Decision::Skip { scheduled, reason } => {
                    self.record_chaos(&cs.name_any(), chaos::skipped(scheduled, reason))
                }
                zdeploy_chaos::schedule::Decision::Run { scheduled, replace } => {
                    if replace && let Some((e, reply)) = self.experiment.take() {
                        let why = format!(
                            "replaced by the run due at {scheduled} (concurrencyPolicy: Replace)"
                        );
                        let run = e.abort(&why);
                        self.finish_experiment(&e, run, reply);
                    }
                    self.start_experiment(cs, scheduled, None).await
                }
            }
        }
    }

    /// What forbids a chaos run now: a rollout of this service, an alert firing for it
    /// (as Alertmanager reports it).
    fn guards(&self) -> zdeploy_chaos::schedule::Guards {
        zdeploy_chaos::schedule::Guards {
            rollout_in_progress: self.status.rollout_revision(),
            alert_firing: self
                .analyzer
                .inbox()
                .and_then(|i| i.firing_for(&self.name, None)),
        }
    }

    /// Waits until requests already sent to `pool` are answered (at most the drain window
    /// both platforms keep), so stopping its processes loses none and no late timeout is
    /// counted against the next canary.
    async fn drain(&self, pool: Pool) {
        let deadline = zdeploy_gateway::deadline::after(
            Instant::now(),
            engine::clock::drain_window(&self.spec),
        );
        while self.gateway.in_flight(pool.name()) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The processes of `pool`.
    fn processes(&self, pool: Pool) -> &ProcessPool {
        match pool {
            Pool::Stable => &self.stable,
            Pool::Canary => &self.canary,
        }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
