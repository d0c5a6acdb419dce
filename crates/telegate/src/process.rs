//! What every command shares with the operating system: logging to stderr, writing to stdout,
//! waiting for Ctrl-C or SIGTERM, and the open-file limit.

/// Logs to stderr, filtered by `TELEGATE_LOG` (default: info, rumqttd errors only).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TELEGATE_LOG")
        // rumqttd logs client ids at info level; vehicles may use their VIN as client id.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rumqttd=error,librdkafka=warn")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn print_all(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Returns on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Lets this process hold as many connections as the hard limit allows (raising the hard
/// limit first where the process may).
pub fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    let (_, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    let hard = if hard < want && Resource::NOFILE.set(want, want).is_ok() {
        want
    } else {
        hard
    };
    let _ = Resource::NOFILE.set(hard, hard);
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(1024)
}
