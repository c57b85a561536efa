//! Which server dispatcher serves each of a run's connections, read from
//! ramkv's admin endpoint (`GET /connections`, `--admin ADDR`), and a quiet
//! server before each run.
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
        let listed = parse(&get(admin)?)?;
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
        let open = parse(&get(admin)?)?.len();
        if open == 0 || Instant::now() >= until {
            return Ok(open);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 GET of `/connections`; the body of a 200 answer.
fn get(admin: &str) -> Result<String, String> {
    let fail = |why: String| format!("cannot read {admin}/connections: {why}");
    let mut s = TcpStream::connect(admin).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        s,
        "GET /connections HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
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
    }
}
