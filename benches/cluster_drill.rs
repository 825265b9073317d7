//! The cluster drill: a review backlog at cap 1 on a three-node RabbitMQ cluster, and `kill -9`
//! of one node while the jobs flow.
//!
//! `scripts/cluster-drill.sh` starts the cluster (`scripts/cluster.sh`), exports its URIs in
//! `DRILL_URIS` and runs this bench. Each scenario has its own namespace, its own simulator (cap 1,
//! 1302 over it, answers after 200 ms) and three real `review-worker run` replicas; replica i lists
//! every node, node i first. The parts are placed so that the killed node plays only the one
//! the scenario is about: replica F starts alone (it declares the leadership queue, whose leader
//! is therefore on node F, and leads), replicas S and T follow, then F is stopped and started
//! again, so S leads from node S while the leadership queue stays on node F; the jobs queue is
//! declared from node J. F, S and J are three different nodes. Then a backlog is published, and
//! once results flow one node is killed:
//!
//! - (a) the node hosting the leadership queue's leader;
//! - (b) the node hosting the jobs queue's leader;
//! - (c) the node the leading replica is connected to (the `broker` of its `/ready`).
//!
//! Who hosts what is asked of the cluster (and of `/ready`) before the backlog, not assumed.
//! Each row reports: the seconds from the kill until jobs flow again (the first result to arrive
//! after a provider call that started after the kill), jobs completed / duplicated / lost (no
//! result once the others are done, or when the wait runs out), provider calls and the calls
//! beyond one per completed job next to the reviews in flight at the kill, the peak in flight and
//! 1302 answers, and each replica's reconnect attempts per second from the kill to the end
//! (`review_broker_connection_attempts_total` on `/metrics`). Targets: flow again within 15 s,
//! nothing lost, no calls beyond those in flight at the kill, peak in flight never above the cap.
//! The bench exits non-zero when a target is missed.
//!
//! Options: `--jobs N` (40), `--outage SECONDS` (120: how long the killed node stays down; the
//! reconnect rate is measured over it), `--only a|b|c` (repeatable). The killed node is restarted after its
//! scenario and the namespace deleted; the replicas' logs, in `$TMPDIR/cluster-drill-NAMESPACE/`, are
//! kept when the scenario fails.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use review_worker::broker::{Broker, DELAY_TIERS};
use review_worker::settings::Settings;
use review_worker::sim::{SimArgs, SimHandle};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LATENCY: Duration = Duration::from_millis(200);
const CAP: u64 = 1;
/// Jobs must flow again within this long after the kill.
const FLOW_TARGET: Duration = Duration::from_secs(15);
/// Results that must have arrived before the kill: the backlog flows.
const WARM_RESULTS: usize = 5;
/// How long to wait for any one step of the set-up (a replica ready, a leader, results).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the kill: give up on the first result after this long, and on the rest once results
/// stop arriving for this long.
const NO_FLOW_GIVE_UP: Duration = Duration::from_secs(30);
const STALL_GIVE_UP: Duration = Duration::from_secs(20);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
const ATTEMPTS_METRIC: &str = "review_broker_connection_attempts_total";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The cluster: its URIs, and scripts/cluster.sh.

struct Cluster {
    uris: Vec<String>,
    ports: Vec<u16>,
}

impl Cluster {
    fn from_env() -> anyhow::Result<Self> {
        let list = std::env::var("DRILL_URIS")
            .context("DRILL_URIS is not set; run scripts/cluster-drill.sh, which starts the cluster")?;
        let uris: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if uris.len() != 3 {
            bail!("DRILL_URIS must list three URIs, one per node; it lists {}", uris.len());
        }
        let ports = uris
            .iter()
            .map(|u| port_of(u).with_context(|| format!("no port in {u}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { uris, ports })
    }

    fn uri(&self, node: usize) -> &str {
        &self.uris[node - 1]
    }

    /// Every node's URI, node `first` first, then on round the list.
    fn rotated(&self, first: usize) -> Vec<String> {
        (0..self.uris.len())
            .map(|k| self.uris[(first - 1 + k) % self.uris.len()].clone())
            .collect()
    }

    /// The node (1..3) whose AMQP port a (masked) URI names.
    fn node_of(&self, uri: &str) -> Option<usize> {
        let port = port_of(uri)?;
        self.ports.iter().position(|&p| p == port).map(|i| i + 1)
    }

    /// The node hosting `queue`'s leader (an error if the cluster knows no such queue).
    async fn queue_leader(&self, queue: &str) -> anyhow::Result<usize> {
        let out = cluster_sh(&["queue-leader", queue], Duration::from_secs(30)).await?;
        out.parse()
            .with_context(|| format!("scripts/cluster.sh queue-leader {queue} printed {out:?}"))
    }
}

/// The port of `amqp://user:pass@host:port/vhost` (the password may be masked).
fn port_of(uri: &str) -> Option<u16> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hostport.rsplit_once(':')?.1.parse().ok()
}

/// Runs `scripts/cluster.sh ARGS`, bounded in time; its stdout, trimmed.
async fn cluster_sh(args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let shown = args.join(" ");
    let output = tokio::time::timeout(
        timeout,
        Command::new(SCRIPT)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("scripts/cluster.sh {shown} took more than {}s", timeout.as_secs()))?
    .with_context(|| format!("could not run {SCRIPT}"))?;
    if !output.status.success() {
        bail!(
            "scripts/cluster.sh {shown} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A connection to the first node of `uris` that answers.
async fn connect_any(uris: &[String], name: &str) -> anyhow::Result<Connection> {
    for uri in uris {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        if let Ok(Ok(connection)) =
            tokio::time::timeout(Duration::from_secs(5), Connection::connect(uri, properties)).await
        {
            return Ok(connection);
        }
    }
    bail!("no node of the cluster answers")
}

// ---------------------------------------------------------------------------------------------
// The replicas: real `review-worker run` processes.

struct Replica {
    /// 1..3: it lists node `index` first.
    index: usize,
    child: Child,
    health_port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Replica {
    fn spawn(index: usize, cluster: &Cluster, namespace: &str, sim: &SimHandle, logs: &Path) -> anyhow::Result<Self> {
        let health_port = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("replica-{index}.log")))
            .context("open a replica log")?;
        let child = Command::new(env!("CARGO_BIN_EXE_review-worker"))
            .arg("run")
            .env("API_RABBITMQ_URI", cluster.rotated(index).join(","))
            .env("API_RABBITMQ_NAMESPACE", namespace)
            .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
            .env("API_OPENAI_FORCE_BASE_URL", sim.coding_base_url())
            .env("API_OPEN_AI_API_KEY", "sim-coding-key")
            .env("API_LLM_PLAN", "lite")
            .env("API_LLM_MAX_CONCURRENT_REQUESTS", CAP.to_string())
            .env("API_WORKER_DRAIN_TIMEOUT_MS", "5000")
            .env("WORKER_HEALTH_PORT", health_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("start the worker binary")?;
        Ok(Self {
            index,
            child,
            health_port,
        })
    }

    /// `GET /ready`'s JSON (it answers 503 with the same body when not ready).
    async fn ready(&self, http: &reqwest::Client) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/ready", self.health_port);
        http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn is_leader(&self, http: &reqwest::Client) -> bool {
        self.ready(http)
            .await
            .is_some_and(|r| r.get("role").and_then(Value::as_str) == Some("leader"))
    }

    /// The reconnect counter, summed over its labels: `None` if `/metrics` does not answer,
    /// `Some(None)` if it does without the counter (not exported, or not counted yet).
    async fn attempts(&self, http: &reqwest::Client) -> Option<Option<f64>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.health_port);
        let text = http.get(url).send().await.ok()?.text().await.ok()?;
        let mut total = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(ATTEMPTS_METRIC) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *total.get_or_insert(0.0) += value;
            }
        }
        Some(total)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s.
    async fn stop(mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Waits until `check` holds, polling every 100 ms, for at most `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index in `replicas` of the one whose `/ready` says it leads.
async fn leader_of(replicas: &[Replica], http: &reqwest::Client) -> Option<usize> {
    for (at, replica) in replicas.iter().enumerate() {
        if replica.is_leader(http).await {
            return Some(at);
        }
    }
    None
}

/// Fails if a replica has exited (its log says why).
fn all_running(replicas: &mut [Replica], logs: &Path) -> anyhow::Result<()> {
    for replica in replicas.iter_mut() {
        if let Some(status) = replica.exited() {
            bail!(
                "replica {} exited ({status}); see {}",
                replica.index,
                logs.join(format!("replica-{}.log", replica.index)).display()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The observer: consumes the results queue, reconnecting to another node if its own goes.

#[derive(Default)]
struct Seen {
    /// Hashes of the distinct result bodies, by job id.
    by_job: HashMap<String, Vec<u64>>,
    /// When each distinct result arrived.
    arrivals: Vec<Instant>,
    /// Results by status (`completed`, `failed`…).
    statuses: BTreeMap<String, u64>,
    /// Results the broker delivered again after the observer's connection broke.
    redeliveries: u64,
    connections: u32,
}

impl Seen {
    fn record(&mut self, body: &[u8], redelivered: bool) {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let hash = hasher.finish();
        let hashes = self.by_job.entry(field("job_id")).or_default();
        if redelivered && hashes.contains(&hash) {
            self.redeliveries += 1;
            return;
        }
        hashes.push(hash);
        self.arrivals.push(Instant::now());
        *self.statuses.entry(field("status")).or_default() += 1;
    }
}

struct Observer {
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Observer {
    /// Consumes `queue` from the first node of `uris`, then the next one whenever the
    /// connection breaks.
    fn start(uris: Vec<String>, queue: String) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut next = 0;
                while !*stopped.borrow() {
                    let uri = &uris[next % uris.len()];
                    next += 1;
                    let _ = consume_results(uri, &queue, &seen, stopped.clone()).await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Self {
            seen,
            stop,
            task: Some(task),
        }
    }

    fn results(&self) -> usize {
        lock(&self.seen).arrivals.len()
    }

    fn distinct_jobs(&self) -> usize {
        lock(&self.seen).by_job.len()
    }

    fn last_arrival(&self) -> Option<Instant> {
        lock(&self.seen).arrivals.last().copied()
    }

    /// The first arrival after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        lock(&self.seen).arrivals.iter().copied().find(|a| *a > t)
    }

    async fn finish(mut self) -> Seen {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let aborter = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                aborter.abort();
            }
        }
        std::mem::take(&mut *lock(&self.seen))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn consume_results(
    uri: &str,
    queue: &str,
    seen: &Mutex<Seen>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let properties = ConnectionProperties::default().with_connection_name("cluster-drill observer".into());
    let connection = tokio::time::timeout(Duration::from_secs(5), Connection::connect(uri, properties)).await??;
    lock(seen).connections += 1;
    let channel = connection.create_channel().await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "cluster-drill-observer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            next = consumer.next() => {
                let Some(delivery) = next else { bail!("the results subscription ended") };
                let delivery = delivery?;
                lock(seen).record(&delivery.data, delivery.redelivered);
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    let _ = connection.close(200, "drill over".into()).await;
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                if !connection.status().connected() {
                    bail!("the observer's connection broke");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    LeadershipLeader,
    JobsLeader,
    LeaderConnection,
}

/// Where the parts start: the first leader (whose node keeps the leadership queue), the leader
/// after the hand-over, and the node that declares the jobs queue.
struct Plan {
    founder: usize,
    successor: usize,
    jobs_node: usize,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Self::LeadershipLeader, Self::JobsLeader, Self::LeaderConnection];

    fn letter(self) -> &'static str {
        match self {
            Self::LeadershipLeader => "a",
            Self::JobsLeader => "b",
            Self::LeaderConnection => "c",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::LeadershipLeader => "kill the node hosting the leadership queue's leader",
            Self::JobsLeader => "kill the node hosting the jobs queue's leader",
            Self::LeaderConnection => "kill the node the leading replica is connected to",
        }
    }

    /// Three different nodes each time, and a different node killed in each scenario.
    fn plan(self) -> Plan {
        let (founder, successor, jobs_node) = match self {
            Self::LeadershipLeader => (1, 2, 3),
            Self::JobsLeader => (3, 1, 2),
            Self::LeaderConnection => (1, 3, 2),
        };
        Plan {
            founder,
            successor,
            jobs_node,
        }
    }

    /// The node this scenario means to kill, if the plan holds.
    fn planned_victim(self) -> usize {
        let plan = self.plan();
        match self {
            Self::LeadershipLeader => plan.founder,
            Self::JobsLeader => plan.jobs_node,
            Self::LeaderConnection => plan.successor,
        }
    }
}

/// What one scenario measured.
struct Measured {
    killed: usize,
    /// What the killed node hosted: L(eadership queue leader), J(obs queue leader), C(onnection
    /// of the leading replica).
    roles: String,
    flow_again: Option<Duration>,
    jobs: usize,
    completed: usize,
    duplicated: usize,
    lost: usize,
    calls: u64,
    in_flight_at_kill: u64,
    peak: u64,
    peak_before_kill: u64,
    rejected_1302: u64,
    /// Per replica (1, 2, 3), attempts per second from the kill to the end.
    reconnects: Vec<Option<f64>>,
    notes: Vec<String>,
}

impl Measured {
    fn extra_calls(&self) -> u64 {
        self.calls.saturating_sub(self.completed as u64)
    }

    fn failures(&self) -> Vec<String> {
        let mut failed = Vec::new();
        match self.flow_again {
            Some(t) if t <= FLOW_TARGET => {}
            Some(t) => failed.push(format!(
                "flow again after {:.1}s > {}s",
                t.as_secs_f64(),
                FLOW_TARGET.as_secs()
            )),
            None => failed.push("jobs never flowed again".to_owned()),
        }
        if self.lost > 0 {
            failed.push(format!("{} lost", self.lost));
        }
        if self.extra_calls() > self.in_flight_at_kill {
            failed.push(format!(
                "{} calls beyond the jobs > {} in flight at the kill",
                self.extra_calls(),
                self.in_flight_at_kill
            ));
        }
        if self.peak > CAP {
            failed.push(format!("peak in flight {} > cap {CAP}", self.peak));
        }
        failed
    }
}

struct Row {
    scenario: Scenario,
    outcome: anyhow::Result<Measured>,
    /// Clean-up problems (the killed node did not come back…).
    cleanup: Vec<String>,
}

impl Row {
    fn passed(&self) -> bool {
        self.cleanup.is_empty() && self.outcome.as_ref().is_ok_and(|m| m.failures().is_empty())
    }
}

/// Runs one scenario and cleans up after it whatever happened: the replicas stop, the killed
/// node is started again, the namespace is deleted.
async fn drill(cluster: &Cluster, scenario: Scenario, jobs: usize, outage: Duration) -> Row {
    let started = Instant::now();
    let namespace = format!("drill-{}-{:08x}", scenario.letter(), fastrand::u32(..));
    let logs = std::env::temp_dir().join(format!("cluster-drill-{namespace}"));
    let mut replicas = Vec::new();
    let mut killed = None;
    let outcome = run(
        cluster,
        scenario,
        jobs,
        outage,
        &namespace,
        &logs,
        &mut replicas,
        &mut killed,
    )
    .await;
    let mut cleanup = Vec::new();
    for replica in replicas {
        replica.stop().await;
    }
    if let Some(node) = killed {
        println!("  restarting node {node}");
        let started = Instant::now();
        match cluster_sh(&["restart", &node.to_string()], Duration::from_secs(150)).await {
            Ok(_) => println!(
                "  node {node} is back in the cluster after {:.1}s",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => cleanup.push(format!("node {node} did not come back: {e:#}")),
        }
    }
    if let Err(e) = teardown(cluster, &namespace).await {
        cleanup.push(format!("teardown of {namespace}: {e:#}"));
    }
    println!("  scenario done in {:.1}s", started.elapsed().as_secs_f64());
    let row = Row {
        scenario,
        outcome,
        cleanup,
    };
    // The replicas' logs are kept for a scenario that failed.
    if row.passed() {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        println!("  replica logs kept in {}", logs.display());
    }
    row
}

#[allow(clippy::too_many_arguments, reason = "a scenario's parts, passed down once")]
async fn run(
    cluster: &Cluster,
    scenario: Scenario,
    jobs: usize,
    outage: Duration,
    namespace: &str,
    logs: &Path,
    replicas: &mut Vec<Replica>,
    killed: &mut Option<usize>,
) -> anyhow::Result<Measured> {
    let plan = scenario.plan();
    let third = 6 - plan.founder - plan.successor;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let http = &client;
    std::fs::create_dir_all(logs).context("create the log directory")?;
    println!(
        "  namespace {namespace}; replica logs in {}; founder on node {}, successor on node {}, jobs queue from node {}",
        logs.display(),
        plan.founder,
        plan.successor,
        plan.jobs_node
    );
    let sim = SimHandle::spawn(SimArgs {
        latency_ms: LATENCY.as_millis() as u64,
        max_concurrency: CAP,
        ..Default::default()
    })
    .await?;

    // The contract's topology, declared from node J: the jobs queue's leader is there.
    let settings = Settings::from_vars([
        ("API_RABBITMQ_URI", cluster.uri(plan.jobs_node)),
        ("API_RABBITMQ_NAMESPACE", namespace),
    ])?;
    let setup = tokio::time::timeout(
        Duration::from_secs(10),
        Broker::connect(&settings.broker, "cluster-drill"),
    )
    .await
    .context("connect to the jobs node: timed out")??;
    setup.declare_topology().await?;
    let topology = setup.topology().clone();

    // The observer reads results from a node this scenario does not mean to kill.
    let mut observer_uris = cluster.rotated(scenario.planned_victim() % 3 + 1);
    observer_uris.retain(|u| u != cluster.uri(scenario.planned_victim()));
    observer_uris.push(cluster.uri(scenario.planned_victim()).to_owned());
    let observer = Observer::start(observer_uris, topology.results_queue.clone());

    // F leads first, S and T stand by, F hands over by stopping and comes back as a standby.
    replicas.push(Replica::spawn(plan.founder, cluster, namespace, &sim, logs)?);
    let founder = &replicas[0];
    wait_for("the first replica leads", STEP_TIMEOUT, || founder.is_leader(http)).await?;
    for index in [plan.successor, third] {
        replicas.push(Replica::spawn(index, cluster, namespace, &sim, logs)?);
        let new = &replicas[replicas.len() - 1];
        wait_for("a new replica answers /ready", STEP_TIMEOUT, || async move {
            new.ready(http).await.is_some()
        })
        .await?;
        // Subscribed to the leadership queue in this order, so S is next in line.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all_running(replicas, logs)?;
    replicas.remove(0).stop().await;
    let standbys: &[Replica] = replicas;
    wait_for("a standby takes over the leadership", STEP_TIMEOUT, || async move {
        leader_of(standbys, http).await.is_some()
    })
    .await?;
    replicas.push(Replica::spawn(plan.founder, cluster, namespace, &sim, logs)?);
    let back = &replicas[replicas.len() - 1];
    wait_for("the first replica answers again", STEP_TIMEOUT, || async move {
        back.ready(http).await.is_some()
    })
    .await?;
    all_running(replicas, logs)?;

    // Who hosts what. Nothing moves until a node fails, so it is asked before the backlog flows
    // (rabbitmqctl takes a second or two on a busy machine).
    let mut notes = Vec::new();
    let leadership_node = match cluster.queue_leader(&topology.own("leadership")).await {
        Ok(node) => Ok(node),
        Err(error) => match cluster.queue_leader(&topology.own("leader")).await {
            Ok(node) => {
                notes.push(format!("leadership queue is {} (classic)", topology.own("leader")));
                Ok(node)
            }
            Err(_) => Err(error),
        },
    };
    let jobs_node = cluster.queue_leader(&topology.jobs_queue).await;
    let leader = leader_of(replicas, http).await.context("no replica leads")?;
    let leading = replicas[leader].index;
    let leader_ready = replicas[leader].ready(http).await.unwrap_or_default();
    let connection_node = match leader_ready.get("broker").and_then(Value::as_str) {
        Some(broker) => cluster
            .node_of(broker)
            .with_context(|| format!("the leader's broker {broker} is none of the cluster's nodes")),
        None => {
            notes.push("/ready has no \"broker\": the leader's node is assumed from its URI list".to_owned());
            Ok(leading)
        }
    };
    for (what, node) in [
        ("the leadership queue's leader", &leadership_node),
        ("the jobs queue's leader", &jobs_node),
        ("the leading replica's node", &connection_node),
    ] {
        if let Err(error) = node {
            println!("  where is {what}? {error:#}");
            notes.push(format!("where is {what}? {error:#}"));
        }
    }
    let shown = |node: &anyhow::Result<usize>| node.as_ref().map_or_else(|_| "?".to_owned(), ToString::to_string);
    println!(
        "  leadership queue on node {}, jobs queue on node {}, replica {leading} leads from node {}",
        shown(&leadership_node),
        shown(&jobs_node),
        shown(&connection_node)
    );
    let victim = match scenario {
        Scenario::LeadershipLeader => leadership_node.as_ref(),
        Scenario::JobsLeader => jobs_node.as_ref(),
        Scenario::LeaderConnection => connection_node.as_ref(),
    }
    .copied()
    .map_err(|e| anyhow::anyhow!("which node to kill is unknown: {e:#}"))?;
    let mut roles = Vec::new();
    for (letter, node) in [("L", &leadership_node), ("J", &jobs_node), ("C", &connection_node)] {
        if node.as_ref().ok() == Some(&victim) {
            roles.push(letter);
        }
    }

    // The backlog, and results flowing.
    preload(&setup, jobs).await?;
    let watching = &observer;
    wait_for("results flow", STEP_TIMEOUT, || async move {
        watching.results() >= WARM_RESULTS
    })
    .await?;
    all_running(replicas, logs)?;
    if observer.distinct_jobs() + WARM_RESULTS > jobs {
        bail!("the backlog was nearly done before the kill; give more --jobs");
    }

    // The kill.
    let mut attempts_before = Vec::new();
    for replica in replicas.iter() {
        attempts_before.push(replica.attempts(http).await);
    }
    let before = sim.stats();
    println!(
        "  killing node {victim} after {} results, {} in flight",
        observer.results(),
        before.in_flight
    );
    let kill_at = Instant::now();
    *killed = Some(victim);
    cluster_sh(&["kill", &victim.to_string()], Duration::from_secs(30)).await?;

    // Until every job has a result, or results stop coming.
    let mut first_call = None;
    loop {
        let now = Instant::now();
        if first_call.is_none() && sim.stats().chat_requests > before.chat_requests {
            first_call = Some(now);
        }
        if observer.distinct_jobs() >= jobs {
            break;
        }
        let flowed = first_call.and_then(|c| observer.first_after(c)).is_some();
        if !flowed && now - kill_at > NO_FLOW_GIVE_UP {
            notes.push(format!("no result within {}s of the kill", NO_FLOW_GIVE_UP.as_secs()));
            break;
        }
        let last = observer.last_arrival().unwrap_or(kill_at).max(kill_at);
        if flowed && now - last > STALL_GIVE_UP {
            notes.push(format!("no result for {}s", STALL_GIVE_UP.as_secs()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node stays down for the whole outage, so that the reconnect rate covers it.
    if let Some(rest) = outage.checked_sub(kill_at.elapsed()) {
        println!("  keeping node {victim} down for {:.0}s more", rest.as_secs_f64());
        tokio::time::sleep(rest).await;
    }
    let elapsed = kill_at.elapsed();
    let mut reconnects = Vec::new();
    for (replica, before) in replicas.iter().zip(&attempts_before) {
        let after = replica.attempts(http).await;
        // A counter absent before the kill had counted nothing yet; absent after it, n/a.
        let rate = match (before, after) {
            (Some(b), Some(Some(a))) => Some((a - b.unwrap_or(0.0)) / elapsed.as_secs_f64()),
            _ => None,
        };
        reconnects.push((replica.index, rate));
    }
    reconnects.sort_by_key(|(index, _)| *index);
    let stats = sim.stats();
    for replica in replicas.iter_mut() {
        if let Some(status) = replica.exited() {
            notes.push(format!("replica {} exited ({status})", replica.index));
        }
    }
    if let Ok(left) = waiting(&cluster.rotated(victim % 3 + 1), namespace).await
        && left > 0
    {
        notes.push(format!("{left} messages still in the jobs/retry/dead queues"));
    }
    let flow_again = first_call
        .and_then(|c| observer.first_after(c))
        .map(|t| t.duration_since(kill_at));
    let seen = observer.finish().await;
    let completed = seen.by_job.keys().filter(|id| id.starts_with("drill-")).count();
    let duplicated = seen.by_job.values().filter(|bodies| bodies.len() > 1).count();
    let not_completed: u64 = seen
        .statuses
        .iter()
        .filter(|(status, _)| status.as_str() != "completed")
        .map(|(_, n)| n)
        .sum();
    if not_completed > 0 {
        notes.push(format!("results by status: {:?}", seen.statuses));
    }
    if seen.connections > 1 {
        notes.push(format!(
            "the observer reconnected {} times ({} redeliveries ignored)",
            seen.connections - 1,
            seen.redeliveries
        ));
    }
    Ok(Measured {
        killed: victim,
        roles: roles.join("+"),
        flow_again,
        jobs,
        completed,
        duplicated,
        lost: jobs.saturating_sub(completed),
        calls: stats.chat_requests,
        in_flight_at_kill: before.in_flight,
        peak: stats.peak_in_flight,
        peak_before_kill: before.peak_in_flight,
        rejected_1302: stats.chat_answered("1302"),
        reconnects: reconnects.into_iter().map(|(_, rate)| rate).collect(),
        notes,
    })
}

/// Publishes `n` jobs (the contract's example with job ids `drill-0`…) with confirms.
async fn preload(broker: &Broker, n: usize) -> anyhow::Result<()> {
    let template: Value = serde_json::from_str(include_str!("../docs/contract/examples/job.json"))?;
    let exchange = broker.topology().exchange.clone();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut job = template.clone();
        job["job_id"] = json!(format!("drill-{i}"));
        if let Some(fields) = job.as_object_mut() {
            fields.remove("created_at");
        }
        let body = serde_json::to_vec(&job)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let exchange = exchange.clone();
        pending.push(async move {
            broker
                .publish_confirmed(&exchange, "job.created", &body, properties)
                .await
        });
    }
    tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(done) = pending.next().await {
            done?;
        }
        anyhow::Ok(())
    })
    .await
    .context("publishing the backlog timed out")?
}

/// The namespace's queues a job can wait in, and the queues and exchanges the drill and the
/// workers declare (the leadership queue under its current and former names).
fn namespace_queues(namespace: &str) -> (Vec<String>, Vec<String>) {
    let own = |suffix: &str| format!("{namespace}.{suffix}");
    let mut queues = vec![own("jobs"), own("dead"), own("results")];
    queues.extend(DELAY_TIERS.iter().map(|(label, _)| own(&format!("retry.{label}"))));
    queues.extend([own("leadership"), own("leader"), own("pauses")]);
    let exchanges = vec![namespace.to_owned(), own("dlx"), own("control")];
    (queues, exchanges)
}

/// Messages still waiting in the jobs queue, the retry tiers and the dead-letter queue.
async fn waiting(uris: &[String], namespace: &str) -> anyhow::Result<u64> {
    let connection = connect_any(uris, "cluster-drill count").await?;
    let (queues, _) = namespace_queues(namespace);
    let mut total = 0;
    for queue in queues
        .iter()
        .filter(|q| q.contains(".jobs") || q.contains(".retry.") || q.ends_with(".dead"))
    {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = tokio::time::timeout(
            Duration::from_secs(5),
            channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()),
        )
        .await;
        if let Ok(Ok(q)) = declared {
            total += u64::from(q.message_count());
        }
    }
    let _ = connection.close(200, "counted".into()).await;
    Ok(total)
}

/// Deletes the namespace's queues and exchanges.
async fn teardown(cluster: &Cluster, namespace: &str) -> anyhow::Result<()> {
    let (queues, exchanges) = namespace_queues(namespace);
    tokio::time::timeout(Duration::from_secs(30), async {
        let connection = connect_any(&cluster.uris, "cluster-drill teardown").await?;
        // A channel per deletion: a refused one closes its channel, not the next.
        for queue in &queues {
            let channel = connection.create_channel().await?;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in &exchanges {
            let channel = connection.create_channel().await?;
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "drill over".into()).await;
        anyhow::Ok(())
    })
    .await
    .context("timed out")?
}

// ---------------------------------------------------------------------------------------------

fn options() -> anyhow::Result<(usize, Duration, Vec<Scenario>)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut jobs = 40;
    let mut outage = Duration::from_secs(120);
    let mut only = Vec::new();
    let mut at = 0;
    while at < args.len() {
        match args[at].as_str() {
            "--jobs" => {
                at += 1;
                jobs = args
                    .get(at)
                    .and_then(|v| v.parse().ok())
                    .context("--jobs takes a number")?;
                if jobs <= WARM_RESULTS {
                    bail!("--jobs must be more than {WARM_RESULTS}");
                }
            }
            "--outage" => {
                at += 1;
                outage = args
                    .get(at)
                    .and_then(|v| v.parse().ok())
                    .map(Duration::from_secs)
                    .context("--outage takes seconds")?;
            }
            "--only" => {
                at += 1;
                let letter = args.get(at).map(String::as_str).unwrap_or_default();
                only.push(
                    Scenario::ALL
                        .into_iter()
                        .find(|s| s.letter() == letter)
                        .context("--only takes a, b or c")?,
                );
            }
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            other => bail!("unknown option {other}; the options are --jobs N, --outage SECONDS and --only a|b|c"),
        }
        at += 1;
    }
    if only.is_empty() {
        only = Scenario::ALL.to_vec();
    }
    Ok((jobs, outage, only))
}

async fn run_all(cluster: &Cluster, jobs: usize, outage: Duration, scenarios: &[Scenario]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for &scenario in scenarios {
        if rows.iter().any(|r| !r.cleanup.is_empty()) {
            println!(
                "({}) skipped: the cluster was not restored after the previous scenario",
                scenario.letter()
            );
            continue;
        }
        println!("({}) {}", scenario.letter(), scenario.describe());
        let row = drill(cluster, scenario, jobs, outage).await;
        if let Err(e) = &row.outcome {
            println!("  failed: {e:#}");
        }
        for problem in &row.cleanup {
            println!("  clean-up: {problem}");
        }
        rows.push(row);
    }
    rows
}

/// Resolves on the first SIGTERM or SIGINT, with its name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (jobs, outage, scenarios) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cluster_drill: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Without a cluster (a plain `cargo bench`) there is nothing to drill.
    if std::env::var_os("DRILL_URIS").is_none() {
        println!(
            "cluster_drill: skipped, DRILL_URIS is not set: scripts/cluster-drill.sh starts a cluster and sets it"
        );
        return ExitCode::SUCCESS;
    }
    let cluster = match Cluster::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster_drill: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "cluster drill: {jobs} jobs per scenario, cap {CAP}, simulator latency {} ms, 3 replicas, nodes on ports {:?}; machine: {}",
        LATENCY.as_millis(),
        cluster.ports,
        common::machine()
    );
    let started = Instant::now();
    // On SIGTERM or SIGINT the scenarios are dropped where they are, which kills the replicas
    // (kill_on_drop); the cluster itself is scripts/cluster-drill.sh's to stop.
    let rows = tokio::select! {
        rows = run_all(&cluster, jobs, outage, &scenarios) => rows,
        signal = interrupted() => {
            eprintln!("cluster_drill: {signal}: replicas stopped, the rest is left to scripts/cluster.sh stop");
            return ExitCode::from(130);
        }
    };

    println!();
    println!(
        "{:<4} {:<8} {:>6} {:>10} {:>4} {:>4} {:>5} {:>11} {:>4} {:>5} {:>15}  verdict",
        "", "killed", "flow s", "completed", "dup", "lost", "calls", "extra/infl", "peak", "1302", "reconnects/s"
    );
    for row in &rows {
        let letter = row.scenario.letter();
        match &row.outcome {
            Ok(m) => {
                let failures = m.failures();
                let verdict = if row.passed() {
                    "PASS".to_owned()
                } else {
                    let mut why = failures.clone();
                    why.extend(row.cleanup.iter().cloned());
                    format!("FAIL: {}", why.join("; "))
                };
                println!(
                    "({letter}) {:<8} {:>6} {:>10} {:>4} {:>4} {:>5} {:>11} {:>4} {:>5} {:>15}  {verdict}",
                    format!("{} [{}]", m.killed, m.roles),
                    m.flow_again
                        .map_or_else(|| "never".to_owned(), |t| format!("{:.1}", t.as_secs_f64())),
                    format!("{}/{}", m.completed, m.jobs),
                    m.duplicated,
                    m.lost,
                    m.calls,
                    format!("{}/{}", m.extra_calls(), m.in_flight_at_kill),
                    m.peak,
                    m.rejected_1302,
                    m.reconnects.iter().map(|r| rate(*r)).collect::<Vec<_>>().join("/"),
                );
                let mut notes = m.notes.clone();
                if m.peak_before_kill > CAP {
                    notes.push(format!(
                        "peak in flight was already {} before the kill",
                        m.peak_before_kill
                    ));
                }
                for note in notes {
                    println!("     note: {note}");
                }
            }
            Err(e) => println!("({letter}) FAIL: the scenario did not run to the end: {e:#}"),
        }
    }
    println!(
        "killed [L: leadership queue leader, J: jobs queue leader, C: leading replica's connection]; \
         extra/infl: calls beyond one per completed job / reviews in flight at the kill; \
         reconnects/s: per replica, from the kill to the end. Targets: flow again <= {}s, lost 0, \
         extra <= in flight, peak <= {CAP}. Total {:.0}s.",
        FLOW_TARGET.as_secs(),
        started.elapsed().as_secs_f64()
    );
    if !rows.is_empty() && rows.iter().all(Row::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
