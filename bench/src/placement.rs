//! What a run learns from ramkv's admin endpoint (`--admin ADDR`): which
//! server dispatcher serves each of its connections (`GET /connections`), a
//! quiet server before it starts, and the server's own service time over it
//! (`GET /metrics`).
//!
//! Under the partitioned architectures (inline on a shared socket or with
//! SO_REUSEPORT) a run's latency depends on which connections share a
//! dispatcher, and that changes with every run. Recording it lets ramkv-sim
//! replay the same assignment instead of drawing its own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connection's dispatcher: `None` when the server listed none for it
/// (thread-per-connection), or never listed the connection.
pub type Placement = Vec<Option<usize>>;

/// How long to wait for every connection to be listed: the server may not
/// have accepted the last ones yet when their connects return.
const LISTED_WITHIN: Duration = Duration::from_secs(2);

/// Reads `/connections` from the admin endpoint at `admin` until every
/// address in `locals` is listed (or [`LISTED_WITHIN`] passes), and returns
/// the dispatcher of each, in the order of `locals`.
pub fn fetch(admin: &str, locals: &[Option<SocketAddr>]) -> Result<Placement, String> {
    let until = Instant::now() + LISTED_WITHIN;
    loop {
        let listed = parse(&get(admin, "/connections")?)?;
        let placement: Placement = locals
            .iter()
            .map(|l| l.and_then(|l| listed.get(&l).copied().flatten()))
            .collect();
        let all_listed = locals
            .iter()
            .all(|l| l.is_none_or(|l| listed.contains_key(&l)));
        if all_listed || Instant::now() >= until {
            return Ok(placement);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits, up to `within`, until the server at `admin` lists no open
/// connection, and returns how many were still open at the end. A run that
/// overloaded the server leaves it working through a backlog after the
/// generator has closed; a run started meanwhile would measure that backlog
/// too (and its connections would wait to be accepted).
pub fn wait_until_idle(admin: &str, within: Duration) -> Result<usize, String> {
    let until = Instant::now() + within;
    loop {
        let open = parse(&get(admin, "/connections")?)?.len();
        if open == 0 || Instant::now() >= until {
            return Ok(open);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a run's connections are spread over the server's dispatchers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Place {
    /// Wherever the server puts them (its accept race or reuseport hash).
    #[default]
    AsAccepted,
    /// Evenly, the hot connections apart: see [`Steer`].
    Even,
}

/// How many connections [`Place::Even`] may open and close, per dispatcher,
/// to fill one place before it gives up: at random placement the chance of
/// missing a given dispatcher this often is e^-64.
const TRIES_PER_DISPATCHER: usize = 64;

/// Decides, connection by connection, which to keep for [`Place::Even`].
#[derive(Debug)]
pub struct Steer {
    /// Connections kept on each dispatcher.
    kept: Vec<usize>,
    /// Whether a hot connection was kept on each dispatcher.
    hot: Vec<bool>,
    /// Hot connections not kept yet: they go first, or with several
    /// generator threads a cold one could take the place a hot one needs.
    hot_left: usize,
}

impl Steer {
    /// For a server with `dispatchers` dispatchers and a run with `hot` hot
    /// connections, none kept yet.
    pub fn new(dispatchers: usize, hot: usize) -> Self {
        Steer {
            kept: vec![0; dispatchers],
            hot: vec![false; dispatchers],
            hot_left: hot,
        }
    }

    /// Whether a cold connection must wait for the hot ones to be kept.
    pub fn hot_pending(&self) -> bool {
        self.hot_left > 0
    }

    /// Keeps a connection the server put on `dispatcher` if no dispatcher has
    /// fewer kept, and, for a hot one, none of the hot ones is there while
    /// another dispatcher has none; a cold one only once every hot one is kept.
    pub fn keep(&mut self, dispatcher: usize, hot: bool) -> bool {
        let fewest = self.kept.iter().copied().min().unwrap_or(0);
        if self.kept.get(dispatcher) != Some(&fewest) {
            return false;
        }
        let apart = if hot {
            !self.hot[dispatcher] || self.hot.iter().all(|&h| h)
        } else {
            !self.hot_pending()
        };
        if apart {
            self.kept[dispatcher] += 1;
            self.hot[dispatcher] |= hot;
            self.hot_left -= usize::from(hot && self.hot_left > 0);
        }
        apart
    }

    /// Whether the server's `/metrics` counted `dispatcher` among its own.
    pub fn knows(&self, dispatcher: usize) -> bool {
        dispatcher < self.kept.len()
    }

    /// How many connections to try for one place before giving up.
    pub fn tries(&self) -> usize {
        TRIES_PER_DISPATCHER * self.kept.len()
    }
}

/// The server's service-time counters from its `/metrics`: seconds spent
/// executing requests, and how many.
pub fn service_time(admin: &str) -> Result<(f64, u64), String> {
    let body = get(admin, "/metrics")?;
    let value = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("{admin}/metrics has no {name}"))
    };
    Ok((
        value("ramkv_service_time_seconds_sum")?,
        value("ramkv_service_time_seconds_count")? as u64,
    ))
}

/// The mean service time, in µs, of the requests the server finished
/// between two [`service_time`] readings; `None` if it finished none.
pub fn mean_service_us(before: (f64, u64), after: (f64, u64)) -> Option<f64> {
    let n = after.1.checked_sub(before.1).filter(|&n| n > 0)?;
    Some((after.0 - before.0) / n as f64 * 1e6)
}

/// Why [`Place::Even`] cannot run against thread-per-connection.
const NO_DISPATCHERS: &str =
    " (thread-per-connection has none): --place even needs a server with dispatchers";

/// The number of dispatchers the server at `admin` runs, from the
/// per-dispatcher series of its `/metrics`.
pub fn dispatchers(admin: &str) -> Result<usize, String> {
    let body = get(admin, "/metrics")?;
    let n = body
        .lines()
        .filter(|l| l.starts_with("ramkv_dispatcher_busy_ns_total{"))
        .count();
    if n == 0 {
        return Err(format!(
            "{admin}/metrics lists no dispatcher{NO_DISPATCHERS}"
        ));
    }
    Ok(n)
}

/// The dispatcher serving the connection whose local address is `local`,
/// once the server lists it (within [`LISTED_WITHIN`]).
pub fn dispatcher_of(admin: &str, local: SocketAddr) -> Result<usize, String> {
    let until = Instant::now() + LISTED_WITHIN;
    loop {
        match parse(&get(admin, "/connections")?)?.get(&local) {
            Some(Some(d)) => return Ok(*d),
            Some(None) => {
                return Err(format!(
                    "{admin} lists {local} on no dispatcher{NO_DISPATCHERS}"
                ));
            }
            None if Instant::now() >= until => {
                return Err(format!(
                    "{admin} did not list {local} within {LISTED_WITHIN:?}"
                ));
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One HTTP/1.1 GET of `path`; the body of a 200 answer.
fn get(admin: &str, path: &str) -> Result<String, String> {
    let fail = |why: String| format!("cannot read {admin}{path}: {why}");
    let mut s = TcpStream::connect(admin).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("not an HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(fail(format!("{status} (is this ramkv's --admin address?)")));
    }
    Ok(body.to_string())
}

/// Parses `/connections`' body: `PEER DISPATCHER AGE` lines after a `#`
/// header; a dispatcher of `-` is none.
fn parse(body: &str) -> Result<HashMap<SocketAddr, Option<usize>>, String> {
    let mut out = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split(' ');
        let (Some(peer), Some(dispatcher)) = (f.next(), f.next()) else {
            return Err(format!("/connections: cannot read the line '{line}'"));
        };
        // A peer the socket could not tell is listed as `-`.
        let peer = peer.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let dispatcher = match dispatcher {
            "-" => None,
            d => Some(
                d.parse()
                    .map_err(|_| format!("/connections: bad dispatcher in '{line}'"))?,
            ),
        };
        out.insert(peer, dispatcher);
    }
    Ok(out)
}

/// A placement as one CSV field: dispatchers separated by spaces, `-` for none.
pub fn field(p: &Placement) -> String {
    p.iter()
        .map(|d| d.map_or("-".to_string(), |d| d.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listing_and_writes_the_field() {
        let body = "# peer dispatcher age_s\n127.0.0.1:5 1 0.1\n127.0.0.1:6 0 0.2\n- - 0.3\n127.0.0.1:7 - 0.1\n";
        let listed = parse(body).unwrap();
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!(listed.get(&a(5)), Some(&Some(1)));
        assert_eq!(listed.get(&a(7)), Some(&None));
        assert_eq!(listed.len(), 4, "an unknown peer is still a connection");
        assert!(parse("127.0.0.1:5\n").is_err());
        assert_eq!(field(&vec![Some(1), None, Some(0)]), "1 - 0");
        assert_eq!(mean_service_us((1.0, 10), (1.5, 510)), Some(1000.0));
        assert_eq!(mean_service_us((1.0, 10), (1.0, 10)), None);
    }

    #[test]
    fn even_steering_keeps_counts_level_and_hot_connections_apart() {
        let mut s = Steer::new(3, 2);
        assert!(s.keep(1, true));
        assert!(!s.keep(0, false), "a cold one waits for the second hot one");
        assert!(
            !s.keep(1, true),
            "a second hot one would share dispatcher 1"
        );
        assert!(
            !s.keep(1, false),
            "dispatcher 1 already has more than 0 and 2"
        );
        assert!(!s.keep(7, false) && !s.keep(7, true), "no such dispatcher");
        assert!(s.knows(2) && !s.knows(3));
        assert!(s.keep(0, true));
        assert!(s.keep(2, false));
        assert!(s.keep(2, false), "every dispatcher has one: a second round");
        assert!(!s.keep(2, false));
        assert_eq!(s.kept, [1, 1, 2]);
        // More hot connections than dispatchers: they may share once all have one.
        let mut s = Steer::new(1, 2);
        assert!(s.keep(0, true) && s.keep(0, true) && !s.hot_pending());
        assert_eq!(s.tries(), TRIES_PER_DISPATCHER);
    }
}
