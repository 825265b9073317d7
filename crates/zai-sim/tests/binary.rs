//! The `zai-sim` binary on its own, as the README and the image ship it: it serves the Coding
//! Plan's models list with the default key, and a SIGTERM ends it.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test code: a panic is a failed run"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_zai_sim_binary_serves_the_models_list_and_stops_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zai-sim"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/coding/paas/v4/models");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let answer = client.get(&url).bearer_auth("sim-coding-key").send().await;
        if let Ok(answer) = answer {
            assert_eq!(answer.status(), 200);
            break answer.text().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "zai-sim did not answer on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("glm-5.1"), "{body}");

    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "zai-sim still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
