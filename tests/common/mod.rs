//! Test helpers: every test gets a world of its own (a broker namespace nobody else uses and a
//! simulator), so tests run in parallel against one real RabbitMQ.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]
#![allow(dead_code, unreachable_pub)]

use std::sync::LazyLock;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use review_worker::app::RunError;
use review_worker::broker::{Broker, delay_queues};
use review_worker::settings::{Settings, Topology};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zai_sim::{SimArgs, SimHandle};

pub fn amqp_uri() -> String {
    std::env::var("API_RABBITMQ_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

static RESULT_SCHEMA: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(include_str!("../../docs/contract/review-result.v1.schema.json")).unwrap();
    jsonschema::validator_for(&schema).unwrap()
});

/// Panics with the schema's complaint when a result does not match the contract.
pub fn assert_valid_result(result: &Value) {
    if let Err(error) = RESULT_SCHEMA.validate(result) {
        panic!(
            "result does not match review-result/v1 at {}: {error}\n{result:#}",
            error.instance_path()
        );
    }
}

/// A unique, readable namespace for one test.
pub fn namespace(test: &str) -> String {
    format!("t-{test}-{:08x}", fastrand::u32(..))
}

/// The example job with a fresh id.
pub fn job(job_id: &str) -> Value {
    let mut job: Value = serde_json::from_str(include_str!("../../docs/contract/examples/job.json")).unwrap();
    job["job_id"] = json!(job_id);
    job.as_object_mut().unwrap().remove("created_at");
    job
}

pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

pub struct World {
    pub uri: String,
    pub namespace: String,
    pub topology: Topology,
    pub sim: SimHandle,
    pub broker: Broker,
    results: mpsc::UnboundedReceiver<Value>,
    dead: mpsc::UnboundedReceiver<(Vec<u8>, FieldTable)>,
    extra: Vec<(String, String)>,
}

impl World {
    pub async fn new(test: &str, sim: SimArgs) -> World {
        Self::with_sim(test, SimHandle::spawn(sim).await.expect("start the simulator")).await
    }

    pub async fn with_sim(test: &str, sim: SimHandle) -> World {
        Self::on_broker(test, sim, amqp_uri()).await
    }

    /// A world on a broker of the test's own (a private node it starts and stops).
    pub async fn on_broker(test: &str, sim: SimHandle, uri: String) -> World {
        let namespace = namespace(test);
        let topology = Topology::with_namespace(&namespace);
        let settings = Settings::from_vars([
            ("API_RABBITMQ_URI", uri.as_str()),
            ("API_RABBITMQ_NAMESPACE", namespace.as_str()),
        ])
        .unwrap();
        let broker = Broker::connect(&settings.broker, "test")
            .await
            .expect("RabbitMQ must answer (scripts/test.sh starts one)");
        broker.declare_topology().await.unwrap();
        let results = drain_queue(&broker, &topology.results_queue, |data, _| {
            serde_json::from_slice(&data).expect("a result is JSON")
        })
        .await;
        let dead = drain_queue(&broker, &topology.dead_queue, |data, headers| (data, headers)).await;
        World {
            uri,
            namespace,
            topology,
            sim,
            broker,
            results,
            dead,
            extra: Vec::new(),
        }
    }

    /// Settings for a worker in this world, pointed at the simulator's Coding Plan endpoint.
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("API_RABBITMQ_URI".to_owned(), self.uri.clone()),
            ("API_RABBITMQ_NAMESPACE".to_owned(), self.namespace.clone()),
            ("API_LLM_PROVIDER_MODEL".to_owned(), "glm-5.1".to_owned()),
            ("API_OPENAI_FORCE_BASE_URL".to_owned(), self.sim.coding_base_url()),
            ("API_OPEN_AI_API_KEY".to_owned(), "sim-coding-key".to_owned()),
            ("API_LLM_TIMEOUT_MS".to_owned(), "10000".to_owned()),
            ("WORKER_HEALTH_PORT".to_owned(), "0".to_owned()),
            ("API_WORKER_DRAIN_TIMEOUT_MS".to_owned(), "5000".to_owned()),
            // The answer cache is off here: every test submits the example job, one prompt, and
            // counts the provider calls its scenario makes (caps, retries, pauses). tests/cache.rs
            // turns it on.
            ("API_REVIEW_CACHE_TTL_SECS".to_owned(), "0".to_owned()),
        ];
        for (k, v) in &self.extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.clone(), v.clone()));
        }
        vars
    }

    /// Sets (or overrides) a variable for every worker this world spawns from now on.
    pub fn set(&mut self, name: &str, value: &str) {
        self.extra.retain(|(k, _)| k != name);
        self.extra.push((name.to_owned(), value.to_owned()));
    }

    pub fn settings(&self) -> Settings {
        let vars = self.vars();
        Settings::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap()
    }

    /// A worker running in this process until `stop`.
    pub fn spawn_worker(&self) -> RunningWorker {
        let settings = self.settings();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(review_worker::app::run(settings, stop.clone()));
        RunningWorker { stop, handle }
    }

    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        self.broker
            .publish_confirmed(&self.topology.exchange, "job.created", body, properties)
            .await
            .unwrap();
    }

    pub async fn publish_job(&self, job: &Value) {
        self.publish(&serde_json::to_vec(job).unwrap(), json_properties()).await;
    }

    /// The next `n` results, or a panic after `timeout`.
    pub async fn results(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        take(&mut self.results, n, timeout, "results").await
    }

    pub async fn dead_letters(&mut self, n: usize, timeout: Duration) -> Vec<(Vec<u8>, FieldTable)> {
        take(&mut self.dead, n, timeout, "dead letters").await
    }

    /// Re-subscribes to the results queue (after a broker restart killed the first consumer).
    pub async fn resubscribe(&mut self) {
        let settings = Settings::from_vars([
            ("API_RABBITMQ_URI", self.uri.as_str()),
            ("API_RABBITMQ_NAMESPACE", self.namespace.as_str()),
        ])
        .unwrap();
        self.broker = Broker::connect(&settings.broker, "test")
            .await
            .expect("the broker is back");
        self.results = drain_queue(&self.broker, &self.topology.results_queue, |data, _| {
            serde_json::from_slice(&data).expect("a result is JSON")
        })
        .await;
        self.dead = drain_queue(&self.broker, &self.topology.dead_queue, |data, headers| (data, headers)).await;
    }

    /// Whatever else arrives within `wait`: to prove nothing more came.
    pub async fn no_more_results(&mut self, wait: Duration) -> Vec<Value> {
        let mut extra = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(result)) = tokio::time::timeout_at(deadline, self.results.recv()).await {
            extra.push(result);
        }
        extra
    }

    /// True when no dead letter arrives within `wait`.
    pub async fn no_dead_letters(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.dead.recv()).await.is_err()
    }

    /// Waits until the jobs queue has `n` consumers (workers are up and consuming).
    pub async fn wait_for_consumers(&self, n: u32, timeout: Duration) {
        let what = format!("{n} consumer(s) on the jobs queue");
        eventually(timeout, &what, async || {
            self.queue_counts(&self.topology.jobs_queue).await.1 >= n
        })
        .await;
    }

    /// Waits until the simulator is holding a chat call: a review is surely in flight.
    pub async fn review_in_flight(&self, timeout: Duration) {
        eventually(timeout, "a review in flight at the simulator", async || {
            self.sim.stats().in_flight > 0
        })
        .await;
    }

    /// Collects results until `done` accepts everything collected so far, and gives them all;
    /// at `timeout`, the error gives what came (for the caller's panic, with a log). For when
    /// duplicates or results of other jobs may come too, so that [`World::results`]'s count
    /// would not do.
    pub async fn results_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Vec<Value>> {
        let mut seen = Vec::new();
        let found = within(timeout, async || {
            while let Ok(result) = self.results.try_recv() {
                seen.push(result);
            }
            done(&seen).then_some(())
        })
        .await;
        match found {
            Some(()) => Ok(seen),
            None => Err(seen),
        }
    }

    /// Ready messages in one of this world's queues.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.0
    }

    /// Ready messages and consumers of a queue (a passive declare).
    async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        let channel = self.broker.channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "".into()).await;
        (q.message_count(), q.consumer_count())
    }
}

impl Drop for World {
    /// Deletes the namespace's queues and exchanges, even when the test panicked.
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let uri = self.uri.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(connection) = Connection::connect(&uri, ConnectionProperties::default()).await else {
                    return;
                };
                let Ok(channel) = connection.create_channel().await else {
                    return;
                };
                let mut queues = vec![
                    topology.jobs_queue.clone(),
                    topology.results_queue.clone(),
                    topology.dead_queue.clone(),
                ];
                queues.extend(delay_queues(&topology));
                for extra in ["leadership", "pauses"] {
                    queues.push(topology.own(extra));
                }
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in [topology.exchange.clone(), topology.dlx.clone()] {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = connection.close(200, "".into()).await;
            });
        })
        .join();
    }
}

/// A worker as its own process (the real binary): what `kill -9` and several replicas need.
pub struct WorkerProcess {
    pub child: tokio::process::Child,
    pub health_port: u16,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl World {
    /// Starts `review-worker run` with this world's settings plus `extra`.
    pub fn spawn_process(&self, extra: &[(&str, &str)]) -> WorkerProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let health_port = free_port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in self.vars() {
            command.env(k, v);
        }
        command.env("WORKER_HEALTH_PORT", health_port.to_string());
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start review-worker");
        WorkerProcess {
            child,
            health_port,
            log,
            _dir: dir,
        }
    }
}

impl WorkerProcess {
    /// `/ready`'s status code and body (`None` while the server is not up).
    pub async fn ready(&self) -> Option<(u16, Value)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}/ready", self.health_port))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Waits until `/ready` answers and `check` accepts its status and body; returns the body.
    pub async fn wait_ready_body(&self, timeout: Duration, check: impl Fn(u16, &Value) -> bool) -> Value {
        let matched = within(timeout, async || {
            self.ready()
                .await
                .and_then(|(status, body)| check(status, &body).then_some(body))
        })
        .await;
        match matched {
            Some(body) => body,
            None => panic!(
                "/ready did not match within {timeout:?}; last: {:?}\nlog:\n{}",
                self.ready().await,
                self.log_text()
            ),
        }
    }

    /// Waits until the worker's log contains `needle`.
    pub async fn wait_for_log(&self, timeout: Duration, needle: &str) {
        if within(timeout, async || self.log_text().contains(needle).then_some(()))
            .await
            .is_none()
        {
            panic!(
                "the log did not say {needle:?} within {timeout:?}:\n{}",
                self.log_text()
            );
        }
    }

    pub async fn is_leader(&self) -> bool {
        matches!(self.ready().await, Some((_, body)) if body["role"] == "leader")
    }

    pub fn kill9(&mut self) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct RunningWorker {
    stop: CancellationToken,
    pub handle: JoinHandle<Result<(), RunError>>,
}

impl RunningWorker {
    /// Sends the shutdown and waits for `run` to return.
    pub async fn stop(self) -> Result<(), RunError> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops within 30s")
            .expect("worker task")
    }
}

async fn drain_queue<T: Send + 'static>(
    broker: &Broker,
    queue: &str,
    map: impl Fn(Vec<u8>, FieldTable) -> T + Send + 'static,
) -> mpsc::UnboundedReceiver<T> {
    let channel = broker.channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            if tx.send(map(delivery.data, headers)).is_err() {
                break;
            }
        }
    });
    rx
}

async fn take<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, timeout: Duration, what: &str) -> Vec<T> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => got.push(item),
            Ok(None) => panic!("the {what} queue consumer stopped after {} of {n}", got.len()),
            Err(_) => panic!("only {} of {n} {what} within {timeout:?}", got.len()),
        }
    }
    got
}

/// A header's text value.
pub fn header_str(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A RabbitMQ node of the test's own (`scripts/rabbitmq.sh start`), on a free loopback port with
/// its own data: what stopping, restarting and `rabbitmqctl` need. Stopped when dropped.
pub struct PrivateNode {
    pub port: u16,
}

impl PrivateNode {
    pub fn start() -> PrivateNode {
        let node = PrivateNode { port: free_port() };
        assert!(
            node.script("start"),
            "start a private RabbitMQ node on port {}",
            node.port
        );
        node
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the node (its data stays for `restart`).
    pub fn stop(&self) {
        assert!(self.script("stop"), "stop the private node on port {}", self.port);
    }

    pub fn restart(&self) {
        assert!(
            self.script("start"),
            "restart the node on port {} on the same data",
            self.port
        );
    }

    /// `rabbitmqctl ARGS` against this node; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("bash")
            .args([SCRIPT, "ctl", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn script(&self, verb: &str) -> bool {
        std::process::Command::new("bash")
            .args([SCRIPT, verb, &self.port.to_string()])
            .status()
            .unwrap()
            .success()
    }
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq.sh");

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// How often the waits below look again: often enough that a test waits at most this long past
/// the event, rarely enough that polling the broker or `/ready` costs nothing noticeable.
const POLL: Duration = Duration::from_millis(50);

/// The one way a test waits for something to happen: polls `probe` until it gives a value and
/// returns it, or `None` once `timeout` has passed. For callers whose panic needs more than a
/// description (a worker's log); everyone else uses [`eventually`] or [`eventually_some`].
pub async fn within<T>(timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A probe that itself hangs (a broker that stopped answering) must not outlive the
        // deadline either.
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, probe()).await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it gives a value and returns it; panics naming `what` did not happen and
/// how long it waited.
pub async fn eventually_some<T>(timeout: Duration, what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    within(timeout, probe)
        .await
        .unwrap_or_else(|| panic!("{what}: did not happen within {timeout:?}"))
}

/// Polls `condition` until it holds; panics naming `what` did not happen and how long it waited.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    eventually_some(timeout, what, async || condition().await.then_some(())).await;
}

/// A broker URI as the worker shows it: password masked.
pub fn redact(uri: &str) -> String {
    review_worker::settings::redact_uri(uri)
}
