//! The broker's health comes from lapin's events, not from polling: a failure of the publishing
//! channel wakes `until_unusable` at once, a failure of another channel leaves the broker usable.

#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "test and benchmark code: a panic is a failed run"
)]

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use review_worker::broker::Broker;
use review_worker::settings::Settings;

async fn connect(test: &str) -> Broker {
    let uri = std::env::var("API_RABBITMQ_URI").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let namespace = format!("t-{test}-{:08x}", fastrand::u32(..));
    let settings = Settings::from_vars([
        ("API_RABBITMQ_URI", uri.as_str()),
        ("API_RABBITMQ_NAMESPACE", namespace.as_str()),
    ])
    .expect("settings");
    Broker::connect(&settings.broker, "test")
        .await
        .expect("RabbitMQ must answer (scripts/test.sh starts one)")
}

#[tokio::test]
async fn a_publishing_channel_closed_by_the_broker_makes_the_broker_unusable_at_once() {
    let broker = connect("health-publisher").await;
    let refused = broker
        .publish_confirmed("no-such-exchange", "job.created", b"{}", BasicProperties::default())
        .await;
    assert!(refused.is_err(), "a publish to a missing exchange fails");
    tokio::time::timeout(Duration::from_secs(2), broker.until_unusable())
        .await
        .expect("the broker is unusable within 2 s of its publishing channel closing");
}

#[tokio::test]
async fn an_error_on_another_channel_leaves_the_broker_usable() {
    let broker = connect("health-other").await;
    let channel = broker.channel().await.expect("a channel");
    let missing = channel
        .queue_declare(
            "no-such-queue-for-health".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        missing.is_err(),
        "a passive declare of a missing queue closes its channel"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), broker.until_unusable())
            .await
            .is_err(),
        "the broker stays usable"
    );
    broker
        .publish_confirmed("", "no-such-queue-for-health", b"{}", BasicProperties::default())
        .await
        .expect("the publishing channel still works (an unroutable publish is confirmed)");
}

#[tokio::test]
async fn a_closed_broker_is_unusable() {
    let broker = connect("health-closed").await;
    broker.close().await;
    tokio::time::timeout(Duration::from_secs(1), broker.until_unusable())
        .await
        .expect("close makes the broker unusable");
}
