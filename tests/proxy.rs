//! Provider calls through a proxy, as "route requests through a proxy your infra allows" needs:
//! the HTTP client honours `HTTP_PROXY` (http base URLs), `HTTPS_PROXY` (https base URLs, through
//! a `CONNECT` tunnel), `ALL_PROXY` and `NO_PROXY`. Each case runs the worker binary as a child
//! process with its own environment (proxy variables are process-wide), against a small proxy
//! in this file that counts what it is asked and forwards only to the loopback.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use zai_sim::{SimArgs, SimHandle};

/// A forward proxy for the test: answers `CONNECT host:port` with a tunnel and relays
/// absolute-form `http://` requests, but only to 127.0.0.1 (anything else gets 403, so nothing
/// leaves the machine). Records the first request line of every connection.
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, Arc::clone(&log)));
            }
        });
        Proxy { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first request line of each connection so far.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(0);
    let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
    seen.lock().unwrap().push(line.clone());
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        target
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("")
            .to_owned()
    };
    if !authority.starts_with("127.0.0.1:") {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(&authority).await?;
    if method == "CONNECT" {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
        upstream.write_all(&head[end..]).await?;
    } else {
        // The origin server (hyper) accepts the absolute-form request target as it is.
        upstream.write_all(&head).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// `review-worker ARGS` with only the provider settings and `env`: exit code and output.
async fn worker(args: &[&str], base_url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_review-worker"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("API_LLM_PROVIDER_MODEL", "glm-5.1")
        .env("API_OPENAI_FORCE_BASE_URL", base_url)
        .env("API_OPEN_AI_API_KEY", "sim-coding-key")
        .env("API_LLM_TIMEOUT_MS", "10000");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// `review-worker review` of the contract's example diff: one chat call.
async fn review(base_url: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let example: serde_json::Value = serde_json::from_str(include_str!("../docs/contract/examples/job.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let diff = dir.path().join("pr.diff");
    std::fs::write(&diff, example["diff"].as_str().unwrap()).unwrap();
    worker(&["review", diff.to_str().unwrap()], base_url, env).await
}

#[tokio::test]
async fn a_review_goes_through_the_proxy_that_http_proxy_or_all_proxy_names() {
    for variable in ["HTTP_PROXY", "ALL_PROXY"] {
        let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
        let proxy = Proxy::start().await;
        let base = sim.coding_base_url();
        let (code, out) = review(&base, &[(variable, &proxy.url())]).await;
        assert_eq!(code, Some(0), "{variable}: {out}");
        assert_eq!(
            sim.stats().chat_requests,
            1,
            "{variable}: the call reached the simulator"
        );
        let seen = proxy.seen();
        assert!(!seen.is_empty(), "{variable}: the proxy saw no connection");
        assert!(
            seen.iter().all(|line| line.contains(&format!(" {base}/"))),
            "{variable}: every request went to the simulator through the proxy: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|line| line.starts_with(&format!("POST {base}/chat/completions"))),
            "{variable}: the chat call went through the proxy: {seen:?}"
        );
    }
}

#[tokio::test]
async fn no_proxy_sends_the_same_review_past_the_proxy() {
    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    let proxy = Proxy::start().await;
    let (code, out) = review(
        &sim.coding_base_url(),
        &[("HTTP_PROXY", &proxy.url()), ("NO_PROXY", "127.0.0.1,localhost")],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(sim.stats().chat_requests, 1);
    assert_eq!(proxy.seen(), Vec::<String>::new(), "NO_PROXY bypasses the proxy");
}

#[tokio::test]
async fn https_proxy_tunnels_an_https_base_url_with_connect_and_leaves_http_alone() {
    // An https base URL: the call asks the proxy for a CONNECT tunnel to the host, which the
    // worker never resolves itself (this proxy refuses anything but the loopback, so the probe
    // fails; what counts is where it went).
    let proxy = Proxy::start().await;
    let (code, out) = worker(
        &["check"],
        "https://zai.review-worker.invalid/api/coding/paas/v4",
        &[("HTTPS_PROXY", &proxy.url())],
    )
    .await;
    assert_ne!(code, Some(0), "the proxy refused the tunnel: {out}");
    let seen = proxy.seen();
    assert!(!seen.is_empty(), "the proxy saw no connection: {out}");
    assert!(
        seen.iter()
            .all(|line| line == "CONNECT zai.review-worker.invalid:443 HTTP/1.1"),
        "{seen:?}"
    );

    // HTTPS_PROXY is for https URLs only: the simulator's http URL is called directly.
    let sim = SimHandle::spawn(SimArgs::default()).await.unwrap();
    let direct = Proxy::start().await;
    let (code, out) = review(&sim.coding_base_url(), &[("HTTPS_PROXY", &direct.url())]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(sim.stats().chat_requests, 1);
    assert_eq!(direct.seen(), Vec::<String>::new());
}
