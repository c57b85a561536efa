//! Serves the counter service (`service.rs`) on the ramkv runtime:
//!
//! ```text
//! cargo run --release --example counter -- 127.0.0.1:7879 lb
//! ```
//!
//! The second argument picks the architecture: lb (the default), inline or
//! thread-per-conn. Stop it with Ctrl-C; it drains like ramkv-server.

mod service;

use anyhow::{Context, bail};
use ramkv::{Arch, ServerBuilder};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7879".into());
    let arch = match args.next().as_deref() {
        None | Some("lb") => Arch::Lb,
        Some("inline") => Arch::Inline,
        Some("thread-per-conn") => Arch::ThreadPerConn,
        Some(other) => bail!("unknown architecture {other}: lb, inline or thread-per-conn"),
    };
    let server = ServerBuilder::new(service::Counters::new(1024))
        .listen(listen)
        .arch(arch)
        .start()
        .context("cannot start the counter service")?;
    println!("counter service listening on {}", server.local_addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    server.shutdown();
    Ok(())
}
