//! `ramkv-server`: parses flags, starts the server, and shuts it down
//! gracefully on SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use ramkv::Config;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .context("invalid --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(msg) = cfg.validate() {
        eprintln!("ramkv-server: {msg}");
        std::process::exit(2);
    }
    let server = ramkv::start(&cfg)?;
    // Scripts and tests wait for this line, so it goes to stdout, flushed.
    println!(
        "ramkv-server listening on {} (arch {:?})",
        server.local_addr(),
        cfg.arch
    );
    tracing::info!(version = ramkv::VERSION, addr = %server.local_addr(), arch = ?cfg.arch, dispatchers = cfg.dispatchers, reuseport = cfg.reuseport, "serving");

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
