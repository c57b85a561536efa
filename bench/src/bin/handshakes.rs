//! `ramkv-handshakes`: a burst of TLS handshakes against a ramkv server,
//! `--concurrency` at a time, each connection closed once its handshake is
//! done. bench/tls-burst.sh runs it beside a steady ramkv-bench load to see
//! what the burst does to connections already established.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Opens connections to a TLS ramkv server, `--concurrency` at a time, and
/// times each handshake; closes each connection once it is done.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// HOST:PORT of a ramkv server started with --tls-cert and --tls-key.
    #[arg(long)]
    target: String,
    /// The CA that signed the server's certificate (PEM).
    #[arg(long)]
    tls_ca: std::path::PathBuf,
    /// Handshakes in all.
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.count == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let connector = ramkv_client::tls::connector(&args.tls_ca).map_err(anyhow::Error::msg)?;
    let name = ramkv_client::tls::server_name(&args.target).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let failed = rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        let mut tasks = Vec::with_capacity(args.count);
        for _ in 0..args.count {
            let permit = permits.clone().acquire_owned().await?;
            let (connector, name, target) = (connector.clone(), name.clone(), args.target.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let tcp = TcpStream::connect(&target)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut tls = ramkv_client::tls::handshake(&connector, name, &target, tcp).await?;
                let _ = tls.shutdown().await;
                Ok::<(), String>(())
            }));
        }
        let mut failed = 0usize;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(()))) {
                failed += 1;
            }
        }
        Ok::<usize, anyhow::Error>(failed)
    })?;
    let took = start.elapsed();
    println!(
        "{} handshakes ({} failed) in {:.3} s: {:.0}/s",
        args.count,
        failed,
        took.as_secs_f64(),
        args.count as f64 / took.as_secs_f64().max(f64::EPSILON)
    );
    if failed > 0 {
        bail!("{failed} handshakes failed");
    }
    Ok(())
}
