//! Command-line flags for reaching a server, shared by the `ramkv` CLI and
//! `ramkv-bench` (with clap's `flatten`), so both spell and document them
//! the same way. Only compiled with the `cli` feature.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach a ramkv server securely, and how long to try.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Authenticate every connection with the token in this file (the
    /// server's --auth-token-file). The token never appears on the command line.
    #[arg(long, global = true, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Give up on a connection attempt (TCP connect, TLS handshake and
    /// authentication) after this long.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}
