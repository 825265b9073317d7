//! The cluster drill: a review backlog at cap 1 on a three-node RabbitMQ cluster, and `kill -9`
//! (or, in (d), `kill -STOP`) of one node while the jobs flow.
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
//! - (c) the node the leading replica is connected to (the `broker` of its `/ready`);
//! - (d) the same node frozen rather than killed (`scripts/cluster.sh freeze`: SIGSTOP of its VM),
//!   a network partition as the leader sees it: its TCP connection stays open and nothing answers
//!   on it, and the other nodes get no closed socket either. Nobody learns of the loss from a
//!   socket: the leader's client after its AMQP heartbeat timeout, the other nodes (and so the
//!   quorum queues that hand leadership and jobs over) after Erlang's net_ticktime. The replicas'
//!   URIs carry `?heartbeat=5` in (d) and the drill's nodes run with a net_ticktime of 10 s
//!   (`scripts/cluster.sh`), so that this takes seconds, not the minutes of the defaults (60 s
//!   each). The node stays frozen until another replica leads and results flow again (at most
//!   150 s), is thawed, and, if it does not rejoin the cluster by itself (RabbitMQ's default
//!   partition handling leaves a thawed node partitioned), its RabbitMQ application is restarted.
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
//! (d) adds, from the replicas' logs (text lines start with an RFC 3339 time) and the simulator:
//! when the broker handed leadership over (the new leader's "this replica is now the leader"
//! minus its 1 s takeover grace), when the old leader noticed ("lost the leadership" or "lost the
//! RabbitMQ connection", whichever comes first) and so stopped calling (0.5 s later: its calls in
//! flight get that long), the new leader's first provider call, and the **overlap**: the old
//! leader's stop minus the new leader's first call, the time during which both could have called
//! the provider (negative: a gap). Its only target is nothing lost (and jobs flowing again before
//! the thaw); the calls beyond one per job, the peak in flight and 1302 answers are reported.
//!
//! Options: `--jobs N` (40), `--outage SECONDS` (120: how long the killed node stays down; the
//! reconnect rate is measured over it; (d) does not use it), `--only a|b|c|d` (repeatable; the
//! default is all four). The killed node is restarted after its scenario and the namespace
//! deleted; the replicas' logs, in `$TMPDIR/cluster-drill-NAMESPACE/`, are kept when the scenario
//! fails, and always for (d).

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use review_worker::broker::{Broker, delay_queues};
use review_worker::settings::{Settings, Topology};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zai_sim::{SimArgs, SimConfig, SimHandle};

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
/// (d): the AMQP heartbeat the replicas ask for (`?heartbeat=5` on their URIs). lapin closes a
/// connection on which nothing has arrived for two heartbeat intervals (it checks every half
/// interval): 10 to 12.5 s. RabbitMQ's default, 60 s, would take two minutes.
const PARTITION_HEARTBEAT_SECS: u16 = 5;
/// (d): how long the node stays frozen at most, waiting for another replica to lead and results
/// to flow again.
const FREEZE_LIMIT: Duration = Duration::from_secs(150);
/// (d): how long after the thaw the node gets to rejoin the cluster by itself before its
/// RabbitMQ application is restarted.
const REJOIN_WAIT: Duration = Duration::from_secs(15);
/// The worker's takeover grace (`TAKEOVER_GRACE` in src/coordination.rs): a new leader logs
/// "this replica is now the leader" this long after the broker handed it the token.
const TAKEOVER_GRACE: Duration = Duration::from_secs(1);
/// How long a leader that lost its token lets its calls in flight finish (`LAST_CALLS` in
/// src/worker.rs): it may call the provider until this long after it noticed.
const LAST_CALLS: Duration = Duration::from_millis(500);
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
    /// Replica `index`, every node in its list (node `index` first), each URI with
    /// `?heartbeat=N` if `heartbeat` is given.
    fn spawn(
        index: usize,
        cluster: &Cluster,
        heartbeat: Option<u16>,
        namespace: &str,
        sim: &SimHandle,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let uris: Vec<String> = cluster
            .rotated(index)
            .into_iter()
            .map(|uri| match heartbeat {
                Some(secs) => format!("{uri}?heartbeat={secs}"),
                None => uri,
            })
            .collect();
        let health_port = free_port()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("replica-{index}.log")))
            .context("open a replica log")?;
        let child = Command::new(env!("CARGO_BIN_EXE_review-worker"))
            .arg("run")
            .env("API_RABBITMQ_URI", uris.join(","))
            .env("API_RABBITMQ_NAMESPACE", namespace)
            .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
            .env("API_OPENAI_FORCE_BASE_URL", sim.coding_base_url())
            .env("API_OPEN_AI_API_KEY", "sim-coding-key")
            .env("API_LLM_PLAN", "lite")
            .env("API_LLM_MAX_CONCURRENT_REQUESTS", CAP.to_string())
            .env("API_WORKER_DRAIN_TIMEOUT_MS", "5000")
            // The same prompt in every job: the cache would hide the provider path measured here.
            .env("API_REVIEW_CACHE_TTL_SECS", "0")
            .env("WORKER_HEALTH_PORT", health_port.to_string())
            // Text lines, each starting with its RFC 3339 time: (d) reads them.
            .env("API_LOG_FORMAT", "text")
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
// Times: the replicas' logs carry wall-clock times, the drill measures with `Instant`s.

/// lapin's line when a connection's heartbeat times out (logged at error level).
const LAPIN_HEARTBEAT_LINE: &str = "haven't received anything from the server for too long";

/// An `Instant` and the wall-clock time (seconds since the epoch) taken together, to convert
/// one into the other.
#[derive(Debug, Clone, Copy)]
struct Clock {
    instant: Instant,
    epoch: f64,
}

impl Clock {
    fn now() -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Self {
            instant: Instant::now(),
            epoch,
        }
    }

    fn epoch_of(&self, at: Instant) -> f64 {
        if at >= self.instant {
            self.epoch + (at - self.instant).as_secs_f64()
        } else {
            self.epoch - (self.instant - at).as_secs_f64()
        }
    }

    fn instant_of(&self, epoch: f64) -> Instant {
        let delta = epoch - self.epoch;
        if delta >= 0.0 {
            self.instant + Duration::from_secs_f64(delta)
        } else {
            self.instant
                .checked_sub(Duration::from_secs_f64(-delta))
                .unwrap_or(self.instant)
        }
    }
}

/// The first line of a replica's log after `since` (seconds since the epoch) that contains one
/// of `needles`: its time, and the needle. Text log lines start with an RFC 3339 time.
fn first_line_after(path: &Path, since: f64, needles: &[&str]) -> Option<(f64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let needle = needles.iter().find(|n| line.contains(**n))?;
        let stamp = line.split_whitespace().next()?;
        let time = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
        let epoch = time.timestamp() as f64 + f64::from(time.timestamp_subsec_nanos()) / 1e9;
        (epoch > since).then(|| (epoch, (*needle).to_owned()))
    })
}

/// The first "this replica is now the leader" after `since` in any replica's log: its time and
/// the replica (1..3).
fn new_leader_after(logs: &Path, since: f64) -> Option<(f64, usize)> {
    (1..=3)
        .filter_map(|index| {
            let path = logs.join(format!("replica-{index}.log"));
            first_line_after(&path, since, &["this replica is now the leader"]).map(|(t, _)| (t, index))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The nodes' Erlang net_ticktime as scripts/cluster-drill.sh read it from them.
fn net_ticktime() -> String {
    std::env::var("DRILL_NET_TICKTIME").map_or_else(
        |_| "unknown (DRILL_NET_TICKTIME is not set)".to_owned(),
        |t| format!("{t} s"),
    )
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
    /// The leader's node frozen (SIGSTOP), not killed.
    Partition,
}

/// Where the parts start: the first leader (whose node keeps the leadership queue), the leader
/// after the hand-over, and the node that declares the jobs queue.
struct Plan {
    founder: usize,
    successor: usize,
    jobs_node: usize,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Self::LeadershipLeader,
        Self::JobsLeader,
        Self::LeaderConnection,
        Self::Partition,
    ];
    /// What runs without `--only`: all four ((d) adds about a minute: it thaws its node as soon
    /// as jobs flow again).
    const DEFAULT: [Scenario; 4] = Self::ALL;

    fn letter(self) -> &'static str {
        match self {
            Self::LeadershipLeader => "a",
            Self::JobsLeader => "b",
            Self::LeaderConnection => "c",
            Self::Partition => "d",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::LeadershipLeader => "kill the node hosting the leadership queue's leader",
            Self::JobsLeader => "kill the node hosting the jobs queue's leader",
            Self::LeaderConnection => "kill the node the leading replica is connected to",
            Self::Partition => {
                "freeze the node the leading replica is connected to (a network partition as the leader sees it)"
            }
        }
    }

    /// (d) freezes its node; the others kill theirs.
    fn freezes(self) -> bool {
        self == Self::Partition
    }

    /// The heartbeat on the replicas' URIs: (d) needs a short one to learn of the partition in
    /// seconds; the others keep the default (the broker's 60 s), as a deployment would.
    fn heartbeat(self) -> Option<u16> {
        self.freezes().then_some(PARTITION_HEARTBEAT_SECS)
    }

    /// Three different nodes each time, and a different node killed in each scenario.
    fn plan(self) -> Plan {
        let (founder, successor, jobs_node) = match self {
            Self::LeadershipLeader => (1, 2, 3),
            Self::JobsLeader => (3, 1, 2),
            Self::LeaderConnection | Self::Partition => (1, 3, 2),
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
            Self::LeaderConnection | Self::Partition => plan.successor,
        }
    }
}

/// What one scenario measured.
struct Measured {
    /// The node killed (or frozen, in (d)).
    killed: usize,
    /// What that node hosted: L(eadership queue leader), J(obs queue leader), C(onnection of the
    /// leading replica).
    roles: String,
    /// (d)'s own figures; `None` in the other scenarios.
    partition: Option<PartitionFigures>,
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
        if let Some(partition) = &self.partition {
            // (d): nothing lost, and jobs flowed again while the node was frozen. The extra calls,
            // the peak and the 1302 answers are what a partition costs: reported, not targets.
            match (self.flow_again, partition.thawed) {
                (None, _) => failed.push("jobs never flowed again".to_owned()),
                (Some(flowed), Some(thawed)) if flowed.as_secs_f64() > thawed => failed.push(format!(
                    "jobs flowed again only after the thaw ({:.1}s > {thawed:.1}s)",
                    flowed.as_secs_f64()
                )),
                _ => {}
            }
            if self.lost > 0 {
                failed.push(format!("{} lost", self.lost));
            }
            return failed;
        }
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

/// (d): seconds from the freeze (the SIGSTOP) to each event; `None` when it did not happen (or
/// is not in the logs).
struct PartitionFigures {
    /// The broker handed leadership to another replica: that replica's "this replica is now the
    /// leader" minus its takeover grace.
    handover: Option<f64>,
    /// The replica that took over (1..3).
    new_leader: Option<usize>,
    /// The old leader noticed: its first "lost the leadership" or "lost the RabbitMQ connection".
    noticed: Option<f64>,
    /// Which of the two it was.
    notice: Option<String>,
    /// lapin's own line on the heartbeat timeout in the old leader's log, if any.
    client_timeout: Option<f64>,
    /// The first provider call after the new leader took over (the simulator's count, polled
    /// every 20 ms: up to that much late).
    new_first_call: Option<f64>,
    /// Provider calls that started after the freeze and before the takeover: the old leader's.
    old_calls: u64,
    /// When the node was thawed.
    thawed: Option<f64>,
}

impl PartitionFigures {
    /// When the old leader's last call could have started or still run: it noticed, and its
    /// calls in flight got `LAST_CALLS`.
    fn old_stops(&self) -> Option<f64> {
        self.noticed.map(|t| t + LAST_CALLS.as_secs_f64())
    }

    /// How long both could call the provider: the old leader's stop minus the new leader's first
    /// call (negative: a gap between them).
    fn overlap(&self) -> Option<f64> {
        Some(self.old_stops()? - self.new_first_call?)
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

/// What a scenario did to its node, for the clean-up to undo.
#[derive(Debug, Clone, Copy)]
enum Disturbance {
    Killed(usize),
    /// Frozen, and thawed at the instant given (if it was).
    Frozen(usize, Option<Instant>),
}

/// Runs one scenario and cleans up after it whatever happened: the replicas stop, the killed
/// node is started again (a frozen one thawed and, if need be, made to rejoin), the namespace is
/// deleted.
async fn drill(cluster: &Cluster, scenario: Scenario, jobs: usize, outage: Duration) -> Row {
    let started = Instant::now();
    let namespace = format!("drill-{}-{:08x}", scenario.letter(), fastrand::u32(..));
    let logs = std::env::temp_dir().join(format!("cluster-drill-{namespace}"));
    let mut replicas = Vec::new();
    let mut disturbed = None;
    let mut outcome = run(
        cluster,
        scenario,
        jobs,
        outage,
        &namespace,
        &logs,
        &mut replicas,
        &mut disturbed,
    )
    .await;
    let mut cleanup = Vec::new();
    for replica in replicas {
        replica.stop().await;
    }
    match disturbed {
        Some(Disturbance::Killed(node)) => {
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
        Some(Disturbance::Frozen(node, thawed)) => match heal(node, thawed).await {
            Ok(how) => {
                println!("  {how}");
                if let Ok(measured) = &mut outcome {
                    measured.notes.push(how);
                }
            }
            Err(e) => cleanup.push(format!("node {node} did not rejoin the cluster: {e:#}")),
        },
        None => {}
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
    // The replicas' logs are kept for a scenario that failed, and for (d), whose figures come
    // from them.
    if row.passed() && !scenario.freezes() {
        let _ = std::fs::remove_dir_all(&logs);
    } else {
        println!("  replica logs kept in {}", logs.display());
    }
    row
}

/// Thaws `node` (again: harmless if it runs) and waits until the cluster is whole: the node
/// gets until `REJOIN_WAIT` after its thaw to rejoin by itself, then its RabbitMQ application is
/// restarted (`scripts/cluster.sh rejoin`), and if even that fails, the node is killed and started
/// again. Says what it took.
async fn heal(node: usize, thawed: Option<Instant>) -> anyhow::Result<String> {
    let name = node.to_string();
    cluster_sh(&["thaw", &name], Duration::from_secs(30)).await?;
    let thawed = thawed.unwrap_or_else(Instant::now);
    loop {
        if cluster_sh(&["healthy"], Duration::from_secs(90)).await.is_ok() {
            return Ok(format!(
                "node {node} rejoined the cluster by itself: whole again {:.1}s after the thaw",
                thawed.elapsed().as_secs_f64()
            ));
        }
        if thawed.elapsed() >= REJOIN_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let unhealthy = cluster_sh(&["healthy"], Duration::from_secs(90))
        .await
        .err()
        .map_or_else(String::new, |e| format!("{e:#}"));
    println!(
        "  {:.0}s after the thaw: {unhealthy}; restarting node {node}'s RabbitMQ application",
        thawed.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let rejoined = match cluster_sh(&["rejoin", &name], Duration::from_secs(150)).await {
        Ok(_) => cluster_sh(&["healthy"], Duration::from_secs(90)).await,
        Err(e) => Err(e),
    };
    match rejoined {
        Ok(_) => Ok(format!(
            "node {node} stayed partitioned after the thaw (RabbitMQ's default partition handling, \
             ignore); whole again {:.1}s after a stop_app/start_app",
            started.elapsed().as_secs_f64()
        )),
        Err(e) => {
            println!("  rejoin failed ({e:#}): kill -9 and restart of node {node}");
            cluster_sh(&["kill", &name], Duration::from_secs(30)).await?;
            cluster_sh(&["restart", &name], Duration::from_secs(150)).await?;
            cluster_sh(&["healthy"], Duration::from_secs(90)).await?;
            Ok(format!(
                "node {node} stayed partitioned after the thaw and did not rejoin on a stop_app/start_app; \
                 whole again {:.1}s after a kill -9 and restart",
                started.elapsed().as_secs_f64()
            ))
        }
    }
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
    disturbed: &mut Option<Disturbance>,
) -> anyhow::Result<Measured> {
    let plan = scenario.plan();
    let third = 6 - plan.founder - plan.successor;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let http = &client;
    let heartbeat = scenario.heartbeat();
    std::fs::create_dir_all(logs).context("create the log directory")?;
    println!(
        "  namespace {namespace}; replica logs in {}; founder on node {}, successor on node {}, jobs queue from node {}",
        logs.display(),
        plan.founder,
        plan.successor,
        plan.jobs_node
    );
    if let Some(secs) = heartbeat {
        println!(
            "  replicas' URIs carry ?heartbeat={secs}; the nodes' Erlang net_ticktime: {}",
            net_ticktime()
        );
    }
    let sim = SimHandle::spawn(SimArgs::from(SimConfig {
        latency_ms: LATENCY.as_millis() as u64,
        max_concurrency: CAP,
        ..Default::default()
    }))
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
    replicas.push(Replica::spawn(plan.founder, cluster, heartbeat, namespace, &sim, logs)?);
    let founder = &replicas[0];
    wait_for("the first replica leads", STEP_TIMEOUT, || founder.is_leader(http)).await?;
    for index in [plan.successor, third] {
        replicas.push(Replica::spawn(index, cluster, heartbeat, namespace, &sim, logs)?);
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
    replicas.push(Replica::spawn(plan.founder, cluster, heartbeat, namespace, &sim, logs)?);
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
        Scenario::LeaderConnection | Scenario::Partition => connection_node.as_ref(),
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

    // The kill, or in (d) the freeze.
    let mut attempts_before = Vec::new();
    for replica in replicas.iter() {
        attempts_before.push(replica.attempts(http).await);
    }
    let before = sim.stats();
    let freezing = scenario.freezes();
    println!(
        "  {} node {victim} after {} results, {} in flight",
        if freezing { "freezing" } else { "killing" },
        observer.results(),
        before.in_flight
    );
    let clock = Clock::now();
    let kill_at = if freezing {
        *disturbed = Some(Disturbance::Frozen(victim, None));
        // The script prints the time of its SIGSTOP: the logs' times are compared with it.
        let stopped = cluster_sh(&["freeze", &victim.to_string()], Duration::from_secs(30)).await?;
        let epoch: f64 = stopped
            .parse()
            .with_context(|| format!("scripts/cluster.sh freeze printed {stopped:?}, not a time"))?;
        clock.instant_of(epoch)
    } else {
        let kill_at = Instant::now();
        *disturbed = Some(Disturbance::Killed(victim));
        cluster_sh(&["kill", &victim.to_string()], Duration::from_secs(30)).await?;
        kill_at
    };
    let frozen_at = clock.epoch_of(kill_at);

    // Until every job has a result, or results stop coming. (d) thaws its node once another
    // replica leads and a result of its calls has arrived, or at FREEZE_LIMIT.
    let mut first_call = None;
    // When each provider call after the kill started (as the simulator's count rose).
    let mut call_starts: Vec<Instant> = Vec::new();
    let mut calls_seen = before.chat_requests;
    let mut takeover: Option<(f64, usize)> = None;
    let mut takeover_checked = kill_at;
    let mut thawed_at = None;
    loop {
        let now = Instant::now();
        let calls = sim.stats().chat_requests;
        if calls > calls_seen {
            call_starts.extend(std::iter::repeat_n(now, (calls - calls_seen) as usize));
            calls_seen = calls;
            first_call.get_or_insert(now);
        }
        let flowed = if freezing {
            // Calls that start before the takeover are the frozen leader's, whose results cannot
            // arrive; results still on their way at the freeze must not count either.
            if takeover.is_none() && now - takeover_checked >= Duration::from_millis(500) {
                takeover_checked = now;
                takeover = new_leader_after(logs, frozen_at);
            }
            takeover
                .and_then(|(led, _)| call_starts.iter().find(|c| clock.epoch_of(**c) >= led))
                .and_then(|c| observer.first_after(*c))
                .is_some()
        } else {
            first_call.and_then(|c| observer.first_after(c)).is_some()
        };
        if freezing && thawed_at.is_none() {
            let done = observer.distinct_jobs() >= jobs;
            let waited = now.saturating_duration_since(kill_at);
            if flowed || done || waited > FREEZE_LIMIT {
                if !flowed {
                    notes.push(format!(
                        "no result of a new leader's calls within {}s of the freeze",
                        FREEZE_LIMIT.as_secs()
                    ));
                }
                println!("  thawing node {victim} after {:.1}s", waited.as_secs_f64());
                cluster_sh(&["thaw", &victim.to_string()], Duration::from_secs(30)).await?;
                let at = Instant::now();
                thawed_at = Some(at);
                *disturbed = Some(Disturbance::Frozen(victim, Some(at)));
            }
        }
        if observer.distinct_jobs() >= jobs {
            break;
        }
        let give_up = if freezing { FREEZE_LIMIT } else { NO_FLOW_GIVE_UP };
        if !flowed && now.saturating_duration_since(kill_at) > give_up {
            notes.push(format!("no result within {}s of the kill", give_up.as_secs()));
            break;
        }
        let last = observer
            .last_arrival()
            .unwrap_or(kill_at)
            .max(kill_at)
            .max(thawed_at.unwrap_or(kill_at));
        if flowed && now.saturating_duration_since(last) > STALL_GIVE_UP {
            notes.push(format!("no result for {}s", STALL_GIVE_UP.as_secs()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node stays down for the whole outage, so that the reconnect rate covers it ((d) thaws
    // as soon as jobs flow again).
    if let Some(rest) = outage.checked_sub(kill_at.elapsed())
        && !freezing
    {
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
    let partition = freezing.then(|| {
        let takeover = takeover.or_else(|| new_leader_after(logs, frozen_at));
        let since = |t: f64| t - frozen_at;
        let new_first_call =
            takeover.and_then(|(led, _)| call_starts.iter().map(|c| clock.epoch_of(*c)).find(|c| *c >= led));
        let old_log = logs.join(format!("replica-{leading}.log"));
        let notice = first_line_after(
            &old_log,
            frozen_at,
            &["lost the leadership", "lost the RabbitMQ connection"],
        );
        let client_timeout = first_line_after(&old_log, frozen_at, &[LAPIN_HEARTBEAT_LINE]);
        let old_calls = call_starts
            .iter()
            .filter(|c| takeover.is_none_or(|(led, _)| clock.epoch_of(**c) < led))
            .count() as u64;
        if takeover.is_some_and(|(_, by)| by == leading) {
            notes.push(format!(
                "the frozen leader (replica {leading}) led again itself, on a new connection"
            ));
        }
        PartitionFigures {
            handover: takeover.map(|(led, _)| since(led) - TAKEOVER_GRACE.as_secs_f64()),
            new_leader: takeover.map(|(_, by)| by),
            noticed: notice.as_ref().map(|(t, _)| since(*t)),
            notice: notice.map(|(_, line)| line),
            client_timeout: client_timeout.map(|(t, _)| since(t)),
            new_first_call: new_first_call.map(since),
            old_calls,
            thawed: thawed_at.map(|t| since(clock.epoch_of(t))),
        }
    });
    let flow_again = if let Some(p) = &partition {
        // The first result after the new leader's first call.
        p.new_first_call
            .map(|t| clock.instant_of(frozen_at + t))
            .and_then(|c| observer.first_after(c))
            .map(|t| t.saturating_duration_since(kill_at))
    } else {
        first_call
            .and_then(|c| observer.first_after(c))
            .map(|t| t.duration_since(kill_at))
    };
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
        partition,
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
    queues.extend(delay_queues(&Topology::with_namespace(namespace)));
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
                        .context("--only takes a, b, c or d")?,
                );
            }
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            other => bail!("unknown option {other}; the options are --jobs N, --outage SECONDS and --only a|b|c|d"),
        }
        at += 1;
    }
    if only.is_empty() {
        only = Scenario::DEFAULT.to_vec();
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

/// (d)'s own table, if (d) ran.
fn print_partitions(rows: &[Row]) {
    let figures: Vec<(&Measured, &PartitionFigures)> = rows
        .iter()
        .filter_map(|row| row.outcome.as_ref().ok())
        .filter_map(|m| m.partition.as_ref().map(|p| (m, p)))
        .collect();
    if figures.is_empty() {
        return;
    }
    let secs = |t: Option<f64>| t.map_or_else(|| "?".to_owned(), |t| format!("{t:.1}"));
    println!();
    println!(
        "(d) the freeze, in seconds from the SIGSTOP; replicas' heartbeat {PARTITION_HEARTBEAT_SECS} s, \
         nodes' net_ticktime {}:",
        net_ticktime()
    );
    println!(
        "{:<4} {:>8} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>5}  notice",
        "",
        "handover",
        "hb timeout",
        "noticed",
        "old stops",
        "new call",
        "overlap",
        "thawed",
        "old calls",
        "leader",
        "1302"
    );
    for (m, p) in figures {
        println!(
            "(d)  {:>8} {:>10} {:>8} {:>9} {:>9} {:>8} {:>8} {:>9} {:>6} {:>5}  {}",
            secs(p.handover),
            secs(p.client_timeout),
            secs(p.noticed),
            secs(p.old_stops()),
            secs(p.new_first_call),
            p.overlap().map_or_else(|| "?".to_owned(), |o| format!("{o:+.1}")),
            secs(p.thawed),
            p.old_calls,
            p.new_leader.map_or_else(|| "?".to_owned(), |r| r.to_string()),
            m.rejected_1302,
            p.notice.as_deref().unwrap_or("?"),
        );
    }
    println!(
        "handover: the new leader's \"now the leader\" minus its {} s grace; hb timeout: lapin's heartbeat \
         timeout in the old leader's log; noticed: its first \"lost the leadership\" or \"lost the RabbitMQ \
         connection\"; old stops: noticed + {} s for its calls in flight; new call: the new leader's first \
         provider call; overlap: old stops - new call, how long both could call the provider (negative: a \
         gap); old calls: calls started after the freeze, before the handover; leader: the replica that took over.",
        TAKEOVER_GRACE.as_secs(),
        LAST_CALLS.as_secs_f64()
    );
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
        "", "node", "flow s", "completed", "dup", "lost", "calls", "extra/infl", "peak", "1302", "reconnects/s"
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
        "node: killed ((a) to (c)) or frozen ((d)) [L: leadership queue leader, J: jobs queue leader, \
         C: leading replica's connection]; extra/infl: calls beyond one per completed job / reviews in \
         flight at the kill; reconnects/s: per replica, from the kill to the end. Targets: flow again \
         <= {}s, lost 0, extra <= in flight, peak <= {CAP}; (d): lost 0 and flow again before the thaw. \
         Total {:.0}s.",
        FLOW_TARGET.as_secs(),
        started.elapsed().as_secs_f64()
    );
    print_partitions(&rows);
    if !rows.is_empty() && rows.iter().all(Row::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
