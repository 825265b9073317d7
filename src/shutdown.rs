//! The process's shutdown signal: SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C) cancels a
//! token that `main` hands to the command it runs.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on the first SIGTERM or SIGINT. Needs a Tokio runtime: the handlers are
/// installed now, so a signal that arrives while the worker is still starting is not lost.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut term) => {
                    term.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => info!("SIGINT received: shutting down"),
            () = term => info!("SIGTERM received: shutting down"),
            // Cancelled by someone else: nothing left to listen for.
            () = cancel.cancelled() => return,
        }
        cancel.cancel();
    });
    token
}
