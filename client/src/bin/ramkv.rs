//! `ramkv`: the command-line client.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ramkv_client::cli::ConnectArgs;
use ramkv_client::{Client, ClientOptions, Error};

/// Command-line client for a ramkv server. Every flag may come before or
/// after the subcommand.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Server address (host:port).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7878",
        env = "RAMKV_SERVER"
    )]
    server: String,
    /// How long to wait for each reply (e.g. 500ms, 5s).
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the value of KEY; exit 1 with "not found" if it does not exist.
    Get {
        key: String,
        /// Also print the version, on stderr.
        #[arg(long)]
        version: bool,
    },
    /// Store VALUE under KEY and print the new version.
    Put {
        key: String,
        value: String,
        /// Compare-and-set: store only if the current version is this (0: only if absent).
        #[arg(long)]
        expect: Option<u64>,
    },
    /// Delete KEY; exit 1 with "not found" if it did not exist.
    Del { key: String },
    /// Print the value of each KEY on its own line ("(not found)" for a missing one).
    Mget { keys: Vec<String> },
    /// Measure one round trip to the server.
    Ping,
    /// Print the server's counters and gauges.
    Stats,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ramkv: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    let opts = ClientOptions {
        timeout: cli.timeout,
        connect_timeout: cli.connect.connect_timeout,
        auth_token_file: cli.connect.auth_token_file.clone(),
        tls_ca: cli.connect.tls_ca.clone(),
        ..Default::default()
    };
    let client = Client::connect_with(cli.server.as_str(), opts).await?;
    let mut out = std::io::stdout().lock();
    let not_found = || {
        eprintln!("not found");
        Ok(ExitCode::FAILURE)
    };
    match cli.cmd {
        Cmd::Get { key, version } => match client.get(key).await? {
            Some(e) => {
                let _ = out.write_all(&e.value).and_then(|_| out.write_all(b"\n"));
                if version {
                    eprintln!("version {}", e.version);
                }
            }
            None => return not_found(),
        },
        Cmd::Put { key, value, expect } => {
            let v = match expect {
                Some(exp) => client.cas(key, value, exp).await?,
                None => client.put(key, value).await?,
            };
            let _ = writeln!(out, "{v}");
        }
        Cmd::Del { key } => {
            if !client.delete(key).await? {
                return not_found();
            }
        }
        Cmd::Mget { keys } => {
            for item in client.multi_get(keys).await? {
                match item {
                    Some(e) => {
                        let _ = out.write_all(&e.value).and_then(|_| out.write_all(b"\n"));
                    }
                    None => {
                        let _ = writeln!(out, "(not found)");
                    }
                }
            }
        }
        Cmd::Ping => {
            let rtt = client.ping().await?;
            let _ = writeln!(
                out,
                "pong from {} in {} us",
                client.peer_addr(),
                rtt.as_micros()
            );
        }
        Cmd::Stats => {
            for (name, value) in client.stats().await? {
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
