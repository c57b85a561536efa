//! The open connections of a dispatcher (or of thread-per-connection's
//! acceptor): what shutdown needs to stop each one, and what the admin
//! endpoint's `/connections` lists, so an operator (or ramkv-bench) can see
//! which dispatcher serves which peer. A connection is added when it is
//! accepted and removed when its task or thread ends, never per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One open connection, as `/connections` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer's address, when the socket could tell it.
    pub peer: Option<SocketAddr>,
    /// The dispatcher that serves it; `None` under thread-per-connection.
    pub dispatcher: Option<usize>,
    /// How long it has been open.
    pub age: Duration,
}

/// Open connections, each with a handle `H` that stops it at shutdown.
pub struct Roster<H> {
    dispatcher: Option<usize>,
    inner: Mutex<Inner<H>>,
}

struct Inner<H> {
    next: u64,
    conns: HashMap<u64, Entry<H>>,
}

struct Entry<H> {
    handle: H,
    peer: Option<SocketAddr>,
    since: Instant,
}

impl<H> Roster<H> {
    /// An empty roster for `dispatcher` (`None`: thread-per-connection).
    pub fn new(dispatcher: Option<usize>) -> Self {
        Roster {
            dispatcher,
            inner: Mutex::new(Inner {
                next: 0,
                conns: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<H>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection; dropping the guard removes it.
    pub fn add(self: &Arc<Self>, handle: H, peer: Option<SocketAddr>) -> RosterGuard<H> {
        let mut g = self.lock();
        let id = g.next;
        g.next += 1;
        let since = Instant::now();
        g.conns.insert(
            id,
            Entry {
                handle,
                peer,
                since,
            },
        );
        RosterGuard(self.clone(), id)
    }

    /// Calls `f` with each open connection's handle.
    pub fn for_each(&self, mut f: impl FnMut(&H)) {
        for e in self.lock().conns.values() {
            f(&e.handle);
        }
    }

    /// Appends every open connection, as of `now`.
    pub fn list(&self, now: Instant, out: &mut Vec<ConnInfo>) {
        out.extend(self.lock().conns.values().map(|e| ConnInfo {
            peer: e.peer,
            dispatcher: self.dispatcher,
            age: now.saturating_duration_since(e.since),
        }));
    }
}

/// Removes its connection from the roster when dropped, however the
/// connection ends.
pub struct RosterGuard<H>(Arc<Roster<H>>, u64);

impl<H> RosterGuard<H> {
    /// The connection's peer, looked up in the roster (for logs, off the
    /// hot path): the connection's task need not carry a copy.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.0.lock().conns.get(&self.1).and_then(|e| e.peer)
    }
}

impl<H> Drop for RosterGuard<H> {
    fn drop(&mut self) {
        self.0.lock().conns.remove(&self.1);
    }
}

/// `/connections`' body: a header, then one line per connection, by
/// dispatcher and then oldest first.
pub fn render(mut conns: Vec<ConnInfo>) -> String {
    use std::fmt::Write;
    conns.sort_by(|a, b| (a.dispatcher, b.age).cmp(&(b.dispatcher, a.age)));
    let mut out = String::from("# peer dispatcher age_s\n");
    for c in &conns {
        let peer = c.peer.map_or("-".to_string(), |p| p.to_string());
        let dispatcher = c.dispatcher.map_or("-".to_string(), |d| d.to_string());
        let _ = writeln!(out, "{peer} {dispatcher} {:.3}", c.age.as_secs_f64());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_until_its_guard_drops() {
        let roster = Arc::new(Roster::new(Some(3)));
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let guard = roster.add("handle", Some(peer));
        let mut seen = Vec::new();
        roster.list(Instant::now(), &mut seen);
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].peer, seen[0].dispatcher), (Some(peer), Some(3)));
        let mut handles = Vec::new();
        roster.for_each(|h| handles.push(*h));
        assert_eq!(handles, ["handle"]);
        drop(guard);
        seen.clear();
        roster.list(Instant::now(), &mut seen);
        assert!(seen.is_empty());
    }

    #[test]
    fn render_orders_by_dispatcher_then_age() {
        let info = |port, dispatcher, secs| ConnInfo {
            peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            dispatcher,
            age: Duration::from_secs(secs),
        };
        let text = render(vec![
            info(3, Some(1), 1),
            info(2, Some(0), 1),
            info(1, Some(0), 5),
        ]);
        assert_eq!(
            text,
            "# peer dispatcher age_s\n127.0.0.1:1 0 5.000\n127.0.0.1:2 0 1.000\n127.0.0.1:3 1 1.000\n"
        );
        let tpc = render(vec![ConnInfo {
            peer: None,
            dispatcher: None,
            age: Duration::ZERO,
        }]);
        assert_eq!(tpc, "# peer dispatcher age_s\n- - 0.000\n");
    }
}
