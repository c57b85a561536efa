//! Listening sockets, and how each dispatcher gets its connections: its own
//! SO_REUSEPORT socket, a clone of one socket every dispatcher accepts on, or
//! a hand-off from the one dispatcher that accepts for all (lb's default).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

use super::{Arch, StartError};

/// Where a dispatcher's connections come from.
pub enum Listener {
    /// A socket this dispatcher accepts on: its own SO_REUSEPORT socket, or a
    /// clone of one shared by every dispatcher.
    Accept(TcpListener),
    /// This dispatcher accepts for all and deals connections round-robin to
    /// the dispatchers behind `peers` (itself included, at its own index).
    Distribute {
        /// The one listening socket.
        listener: TcpListener,
        /// Every dispatcher's inbox, indexed by dispatcher.
        peers: Vec<mpsc::UnboundedSender<TcpStream>>,
    },
    /// Connections arrive only from the distributing dispatcher.
    Handoff,
}

/// Each dispatcher's inbox of handed-off connections.
pub type Inbox = mpsc::UnboundedReceiver<TcpStream>;

/// Resolves `host:port` (an address or a host name) to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr, StartError> {
    let mut addrs = addr.to_socket_addrs().map_err(|e| StartError::Io {
        context: format!("cannot resolve {addr}"),
        source: e,
    })?;
    addrs
        .next()
        .ok_or_else(|| StartError::Config(format!("{addr} resolves to no address")))
}

/// Binds a listening socket; with `reuseport`, one that others can share the port with.
pub fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One [`Listener`] and one inbox per dispatcher. Every socket is bound
/// before any thread starts, so a failed bind leaves nothing running.
pub fn listeners(
    first: TcpListener,
    addr: SocketAddr,
    dispatchers: usize,
    reuseport: bool,
    arch: Arch,
) -> Result<(Vec<Listener>, Vec<Inbox>), StartError> {
    let (senders, inboxes): (Vec<_>, Vec<_>) =
        (0..dispatchers).map(|_| mpsc::unbounded_channel()).unzip();
    let mut listeners = Vec::with_capacity(dispatchers);
    if reuseport {
        listeners.push(Listener::Accept(first));
        for _ in 1..dispatchers {
            let l = bind(addr, true).map_err(|source| StartError::Io {
                context: format!("cannot add a SO_REUSEPORT listener on {addr}"),
                source,
            })?;
            listeners.push(Listener::Accept(l));
        }
    } else if arch == Arch::Inline {
        // Several acceptors on one shared socket.
        for _ in 1..dispatchers {
            let clone = first.try_clone().map_err(|source| StartError::Io {
                context: "cannot share the listening socket".into(),
                source,
            })?;
            listeners.push(Listener::Accept(clone));
        }
        listeners.push(Listener::Accept(first));
    } else {
        // One acceptor deals connections to every dispatcher.
        listeners.push(Listener::Distribute {
            listener: first,
            peers: senders,
        });
        listeners.extend((1..dispatchers).map(|_| Listener::Handoff));
    }
    Ok((listeners, inboxes))
}
