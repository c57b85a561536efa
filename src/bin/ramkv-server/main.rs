//! `ramkv-server`: parses flags, starts the key-value service on the runtime,
//! and shuts it down gracefully on SIGINT or SIGTERM.

mod flags;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ramkv::kv::KvService;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let flags = flags::Flags::parse();
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ramkv-server: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(flags: flags::Flags) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&flags.log_level))
        .context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Signal handling is set up before the server starts: once it serves,
    // clients can use up the file descriptors it would need (an fd limit
    // reached through connections must not stop the server), and a SIGTERM
    // sent during the start is then held for us rather than killing us.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        )
    };
    flags.check().map_err(anyhow::Error::msg)?;
    let kv = KvService::new(flags.kv_options())?;
    let server = flags.builder(kv).start()?;
    // Scripts and tests wait for this line, so it goes to stdout, flushed.
    println!(
        "ramkv-server listening on {} (arch {:?})",
        server.local_addr(),
        flags.arch
    );
    tracing::info!(version = ramkv::VERSION, addr = %server.local_addr(), arch = ?flags.arch,
        dispatchers = flags.dispatchers, reuseport = flags.reuseport, "serving");
    rt.block_on(async {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    });
    tracing::info!("shutting down: draining requests in flight");
    server.shutdown();
    tracing::info!("shut down cleanly");
    Ok(())
}
