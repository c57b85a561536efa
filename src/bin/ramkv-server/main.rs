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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
    .context("cannot wait for signals")?;
    tracing::info!("shutting down: draining requests in flight");
    server.shutdown();
    tracing::info!("shut down cleanly");
    Ok(())
}
