//! A discrete-event model of the five ways ramkv serves TCP, to say what
//! each will do on more cores than the machine at hand has.
//!
//! **What is modelled.** Requests arrive open-loop (Poisson) on connections,
//! with ramkv-bench's skew knob (`K` hot connections carry a fraction `F` of
//! the load), and need a service time drawn from a distribution (or a file
//! of measured times). Each architecture is a set of servers, each running
//! one request at a time, first come, first served unless said below:
//!
//! - `inline:N` (`single` is `inline:1`): N dispatchers; a connection
//!   belongs to one, which reads, runs and answers its requests. A
//!   dispatcher takes its connections in turns of at most `turn` requests
//!   each (0: one queue, first come, first served): ramkv's connections are
//!   tasks that tokio's cooperative budget makes yield after 128 socket
//!   operations, and a request run inline costs one, its reply's write. With
//!   `read_turns` a turn ends sooner, once the connection has run what was
//!   waiting when its turn began: tokio takes a read that did not fill the
//!   buffer as proof that the socket is drained, so the task's next read
//!   yields to the runtime, which polls every socket again. So a quiet
//!   connection waits for one read's worth of a busy neighbour, not for its
//!   whole backlog.
//! - `tpc`: one thread per connection.
//! - `lb:D:W`: D dispatchers read and answer; W workers take requests from
//!   one shared queue, one at a time (ramkv's single-task steal).
//!
//! Connections go to dispatchers round-robin (`rr`, the shared socket's or
//! lb's hand-out) or at random (`hash`, as SO_REUSEPORT's hash does, a new
//! draw per seed). **Costs**: a dispatcher spends `dispatch` per request
//! (read, decode, write; under lb half on the way in, half on the way out),
//! lb's dispatcher `handoff` more to queue it, and a thread that was idle
//! starts `wake` late. With `cpu_bound`, thread-per-connection threads share
//! `cores` (a request runs when one is free); the other architectures have
//! one thread per core and need no such rule. With sleep-mode service (the
//! emulated runs) nothing competes for cores at all.
//!
//! **What is not.** Cache effects, lock contention in the store, the kernel's
//! own network work, batching of several requests per read or write, and
//! lb's spinning workers (a worker is idle or busy; an idle one pays
//! `wake`). lb's quick path is modelled: with `quick` set, a request that
//! short runs on its dispatcher when the shared queue is empty, as ramkv
//! runs GETs while no worker is ready. (ramkv also runs at most four per
//! read; the model reads one request at a time, so it has no such cap.) The validation in
//! `bench/results/*-sim-*.md` says how close this gets.
//!
//! Latency runs from arrival to the end of the answering step, as
//! ramkv-bench measures it from the intended send time. Like a real run,
//! a simulated one has a warmup, a measured window and a drain: requests
//! that arrive in the window and are not answered by the end of the drain
//! are counted as timeouts, and their latency is not in the percentiles.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dist::{ServiceDist, poisson_gap_ns};
use crate::engine::conn_weights;

/// How connections are assigned to dispatchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assign {
    /// In turn, as lb's acceptor and (roughly) a shared socket hand them out.
    RoundRobin,
    /// At random, as SO_REUSEPORT's hash of the 4-tuple does.
    Hash,
}

/// One of the architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `n` dispatchers that run requests themselves.
    Inline {
        /// Dispatchers.
        n: usize,
        /// Connection assignment.
        assign: Assign,
    },
    /// One thread per connection.
    ThreadPerConn,
    /// `d` dispatchers, `w` workers, one shared queue.
    Lb {
        /// Dispatchers.
        d: usize,
        /// Workers.
        w: usize,
        /// Connection assignment.
        assign: Assign,
    },
}

impl Arch {
    /// Parses `single`, `inline:N[:rr|hash]`, `tpc` or `lb:D:W[:rr|hash]`.
    pub fn parse(s: &str) -> Result<Arch, String> {
        let p: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<usize, String> {
            p.get(i)
                .and_then(|v| v.parse().ok())
                .filter(|&v: &usize| v > 0)
                .ok_or_else(|| format!("'{s}': expected a positive count in place {i}"))
        };
        let assign = |i: usize| match p.get(i).copied() {
            None | Some("rr") => Ok(Assign::RoundRobin),
            Some("hash") => Ok(Assign::Hash),
            Some(o) => Err(format!("'{s}': assignment '{o}' is not rr or hash")),
        };
        Ok(match p[0] {
            "single" => Arch::Inline {
                n: 1,
                assign: Assign::RoundRobin,
            },
            "inline" => Arch::Inline {
                n: num(1)?,
                assign: assign(2)?,
            },
            "tpc" => Arch::ThreadPerConn,
            "lb" => Arch::Lb {
                d: num(1)?,
                w: num(2)?,
                assign: assign(3)?,
            },
            _ => {
                return Err(format!(
                    "'{s}': use single, inline:N[:rr|hash], tpc or lb:D:W[:rr|hash]"
                ));
            }
        })
    }
}

/// Service times: a distribution, or measured times to draw from.
#[derive(Clone, Debug, PartialEq)]
pub enum Service {
    /// fixed, exp or bimodal, as ramkv-bench's `--service`.
    Dist(ServiceDist),
    /// Drawn uniformly from these times (ns), for example read from a file.
    Empirical(Vec<f64>),
}

impl Service {
    fn sample_ns(&self, rng: &mut StdRng) -> f64 {
        match self {
            Service::Dist(d) => d.sample_ns(rng) as f64,
            Service::Empirical(v) => v[rng.random_range(0..v.len())],
        }
    }

    /// The mean service time in ns.
    pub fn mean_ns(&self) -> f64 {
        match self {
            Service::Dist(d) => d.mean().as_nanos() as f64,
            Service::Empirical(v) => v.iter().sum::<f64>() / v.len() as f64,
        }
    }

    /// Reads one time per line (a number with a unit, as `850us`, or plain
    /// nanoseconds); blank lines and lines starting with `#` are skipped.
    pub fn from_file_text(text: &str) -> Result<Service, String> {
        let mut v = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let ns = match line.parse::<f64>() {
                Ok(n) => n,
                Err(_) => crate::dist::parse_duration(line)?.as_nanos() as f64,
            };
            v.push(ns);
        }
        if v.is_empty() {
            return Err("the service-time file holds no times".into());
        }
        Ok(Service::Empirical(v))
    }
}

/// What each step costs, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Costs {
    /// Dispatcher time per request: reading, decoding, writing the reply.
    pub dispatch: f64,
    /// lb's extra dispatcher time per request to queue it.
    pub handoff: f64,
    /// How late an idle thread starts on new work (a wake-up).
    pub wake: f64,
    /// Added to every service time (a sleep's overshoot, in the emulated runs).
    pub overshoot: f64,
}

impl Costs {
    /// Reads `dispatch_us=`, `handoff_us=`, `wake_us=` and `overshoot_us=`
    /// lines (any may be missing: 0); `#` starts a comment.
    pub fn from_calibration(text: &str) -> Result<Costs, String> {
        let mut c = Costs::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("calibration line '{line}' is not key=value"))?;
            let us: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("calibration value '{v}' is not a number"))?;
            let slot = match k.trim() {
                "dispatch_us" => &mut c.dispatch,
                "handoff_us" => &mut c.handoff,
                "wake_us" => &mut c.wake,
                "overshoot_us" => &mut c.overshoot,
                _ => continue, // other figures in the file are for people
            };
            *slot = us * 1e3;
        }
        Ok(c)
    }
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct Run {
    /// The architecture.
    pub arch: Arch,
    /// Requests per second offered, over all connections.
    pub rate: f64,
    /// Connections.
    pub connections: usize,
    /// `(K, F)`: K connections carry a fraction F of the requests.
    pub hot: Option<(usize, f64)>,
    /// Service times.
    pub service: Service,
    /// Step costs.
    pub costs: Costs,
    /// With CPU-bound service, thread-per-connection threads share this many cores.
    pub cores: usize,
    /// Service needs a core (spin) rather than a thread only (sleep).
    pub cpu_bound: bool,
    /// Seconds sent but not measured, measured, and allowed for stragglers.
    pub warmup: f64,
    /// The measured window, seconds.
    pub duration: f64,
    /// After the window, how long answers are still awaited, seconds.
    pub drain: f64,
    /// Seed for every random draw (arrivals, service times, assignment).
    pub seed: u64,
    /// lb's quick path: a request with at most this service time (ns) runs on
    /// its dispatcher when the queue is empty (0: off). ramkv does this for
    /// GETs, DELETEs, PINGs and small PUTs (`Service::is_quick`).
    pub quick: f64,
    /// Each connection's dispatcher, as a real run recorded it
    /// (ramkv-bench `--admin`): replaces the architecture's assignment.
    pub placement: Option<Vec<usize>>,
    /// Requests an inline dispatcher runs for one connection before it turns
    /// to the next connection with work (0: first come, first served).
    pub turn: usize,
    /// A turn also ends once the connection has run the requests that were
    /// waiting when it began (one read's batch), as ramkv's does.
    pub read_turns: bool,
}

/// ramkv's turn: tokio's cooperative budget, one write per request run inline.
pub const RAMKV_TURN: usize = 128;

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Latencies (ns) of the requests sent in the window and answered.
    pub latencies: Vec<f64>,
    /// Requests sent in the window and not answered by the end of the drain.
    pub timeouts: u64,
    /// Requests that found every lb worker busy (the queue non-empty or no
    /// worker free), for the Erlang C check.
    pub queued: u64,
    /// Requests that reached lb's queue.
    pub handed_off: u64,
    /// Answered requests per second of the window.
    pub achieved_rate: f64,
}

impl Outcome {
    /// The `q` quantile of the latencies, in µs.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        quantile(&self.latencies, q).map(|ns| ns / 1e3)
    }

    /// The mean latency, in µs.
    pub fn mean_us(&self) -> Option<f64> {
        (!self.latencies.is_empty())
            .then(|| self.latencies.iter().sum::<f64>() / self.latencies.len() as f64 / 1e3)
    }
}

/// The `q` quantile of `v` (sorted or not), nearest rank.
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    let (_, x, _) = s.select_nth_unstable_by(i, |a, b| a.total_cmp(b));
    Some(*x)
}

/// A request in flight.
#[derive(Clone, Copy, Debug)]
struct Req {
    arrival: f64,
    conn: usize,
    service: f64,
}

/// A step of work for a server: which request, whether it is lb's way back
/// (the reply written by the dispatcher), and whether the dispatcher also
/// runs it (lb's quick path).
#[derive(Clone, Copy, Debug)]
struct Job {
    req: usize,
    reply: bool,
    runs_here: bool,
}

impl Job {
    fn new(req: usize) -> Job {
        Job {
            req,
            reply: false,
            runs_here: false,
        }
    }
}

/// A server: one thread that runs its queue's jobs in order.
#[derive(Default)]
struct Server {
    queue: VecDeque<Job>,
    busy: bool,
}

/// An inline dispatcher's turns: round-robin over its connections with
/// work, each turn `quota` requests long (see [`Run::read_turns`]).
#[derive(Default)]
struct Turns {
    serving: Option<usize>,
    served: usize,
    quota: usize,
    waiting: VecDeque<usize>,
}

impl Turns {
    /// `conn`'s turn begins with one of its requests, of `quota`.
    fn begin(&mut self, conn: usize, quota: usize) {
        self.serving = Some(conn);
        self.served = 1;
        self.quota = quota;
    }

    /// The connection whose request runs next; `queued` says how many
    /// requests a connection has waiting, `quota` how long its turn is with
    /// that many. `None` when no connection has any.
    fn next(
        &mut self,
        queued: impl Fn(usize) -> usize,
        quota: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        if let Some(c) = self.serving.filter(|&c| queued(c) > 0) {
            if self.served < self.quota {
                self.served += 1;
                return Some(c);
            }
            self.waiting.push_back(c);
        }
        self.serving = None;
        let next = self.waiting.pop_front()?;
        self.begin(next, quota(queued(next)));
        Some(next)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Dispatcher(usize),
    Worker(usize),
    Conn(usize),
}

/// An event: a server finishes its current job at `at`.
#[derive(Clone, Copy, Debug)]
struct Done {
    at: f64,
    seq: u64,
    who: Who,
    job: Job,
}

impl PartialEq for Done {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Done {}
impl PartialOrd for Done {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Done {
    /// Earliest first in a max-heap; ties in the order they were scheduled.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// The simulation's state.
struct Sim<'a> {
    run: &'a Run,
    reqs: Vec<Req>,
    done_at: Vec<f64>,
    events: BinaryHeap<Done>,
    seq: u64,
    dispatchers: Vec<Server>,
    conn_dispatcher: Vec<usize>,
    workers: Vec<Server>,
    idle_workers: Vec<usize>,
    shared_queue: VecDeque<usize>,
    /// Until then a task handed to a waking worker still sits in ramkv's
    /// queue (the worker has not taken it yet), so nobody is ready.
    handed_until: f64,
    /// Per connection: thread-per-connection's thread, or, for an inline
    /// dispatcher taking turns, the requests read from it and not yet run.
    conns: Vec<Server>,
    /// Per inline dispatcher taking turns: the connection it serves, how
    /// many it has run this turn, and the connections waiting for a turn.
    turns: Vec<Turns>,
    /// Thread-per-connection threads waiting for a core (CPU-bound only).
    core_waiters: VecDeque<usize>,
    free_cores: usize,
    queued: u64,
    handed_off: u64,
}

/// Simulates `run`.
pub fn simulate(run: &Run) -> Outcome {
    let mut rng = StdRng::seed_from_u64(run.seed);
    let reqs = arrivals(run, &mut rng);
    let n_disp = match run.arch {
        Arch::Inline { n, .. } => n,
        Arch::Lb { d, .. } => d,
        Arch::ThreadPerConn => 0,
    };
    let assign = match run.arch {
        Arch::Inline { assign, .. } | Arch::Lb { assign, .. } => assign,
        Arch::ThreadPerConn => Assign::RoundRobin,
    };
    let conn_dispatcher = (0..run.connections)
        .map(|c| match (assign, &run.placement) {
            _ if n_disp == 0 => 0,
            (_, Some(p)) => p.get(c).map_or(0, |&d| d % n_disp),
            (Assign::RoundRobin, None) => c % n_disp,
            (Assign::Hash, None) => rng.random_range(0..n_disp),
        })
        .collect();
    let workers = match run.arch {
        Arch::Lb { w, .. } => w,
        _ => 0,
    };
    let mut sim = Sim {
        run,
        done_at: vec![f64::INFINITY; reqs.len()],
        reqs,
        events: BinaryHeap::new(),
        seq: 0,
        dispatchers: (0..n_disp).map(|_| Server::default()).collect(),
        conn_dispatcher,
        workers: (0..workers).map(|_| Server::default()).collect(),
        idle_workers: (0..workers).rev().collect(),
        handed_until: 0.0,
        shared_queue: VecDeque::new(),
        conns: (0..run.connections).map(|_| Server::default()).collect(),
        turns: (0..n_disp).map(|_| Turns::default()).collect(),
        core_waiters: VecDeque::new(),
        free_cores: run.cores.max(1),
        queued: 0,
        handed_off: 0,
    };
    sim.run_to(run.warmup + run.duration + run.drain);
    sim.outcome()
}

/// Every request of the run, in arrival order: each connection's own
/// Poisson stream at its share of the rate, merged.
fn arrivals(run: &Run, rng: &mut StdRng) -> Vec<Req> {
    let end_ns = (run.warmup + run.duration) * 1e9;
    let weights = conn_weights(run.connections, run.hot);
    let mut reqs =
        Vec::with_capacity((run.rate * (run.warmup + run.duration) * 1.05) as usize + 16);
    for (conn, w) in weights.iter().enumerate() {
        let rate = run.rate * w;
        if rate <= 0.0 {
            continue;
        }
        let mut t = poisson_gap_ns(rate, rng);
        while t < end_ns {
            reqs.push(Req {
                arrival: t,
                conn,
                service: 0.0,
            });
            t += poisson_gap_ns(rate, rng);
        }
    }
    reqs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    // Service times drawn in arrival order, so they do not depend on the
    // connection layout.
    for r in &mut reqs {
        r.service = run.service.sample_ns(rng) + run.costs.overshoot;
    }
    reqs
}

impl Sim<'_> {
    fn run_to(&mut self, end_s: f64) {
        let end = end_s * 1e9;
        let mut next = 0usize;
        loop {
            let arrival = self.reqs.get(next).map(|r| r.arrival);
            let event = self.events.peek().map(|e| e.at);
            match (arrival, event) {
                (Some(a), e) if e.is_none_or(|e| a <= e) => {
                    if a > end {
                        break;
                    }
                    self.arrive(next, a);
                    next += 1;
                }
                (_, Some(e)) => {
                    if e > end {
                        break;
                    }
                    let done = self.events.pop().expect("peeked");
                    self.finish(done);
                }
                _ => break,
            }
        }
    }

    fn schedule(&mut self, at: f64, who: Who, job: Job) {
        self.seq += 1;
        self.events.push(Done {
            at,
            seq: self.seq,
            who,
            job,
        });
    }

    fn arrive(&mut self, req: usize, now: f64) {
        let conn = self.reqs[req].conn;
        let job = Job::new(req);
        match self.run.arch {
            Arch::ThreadPerConn => self.enqueue(Who::Conn(conn), job, now),
            _ => {
                let d = self.conn_dispatcher[conn];
                self.enqueue(Who::Dispatcher(d), job, now);
            }
        }
    }

    fn server(&mut self, who: Who) -> &mut Server {
        match who {
            Who::Dispatcher(i) => &mut self.dispatchers[i],
            Who::Worker(i) => &mut self.workers[i],
            Who::Conn(i) => &mut self.conns[i],
        }
    }

    /// Whether `who` is an inline dispatcher that takes its connections in turns.
    fn takes_turns(&self, who: Who) -> Option<usize> {
        match (self.run.arch, who) {
            (Arch::Inline { .. }, Who::Dispatcher(d)) if self.run.turn > 0 => Some(d),
            _ => None,
        }
    }

    /// Queues `job` on `who`, starting it (late by a wake-up) if idle.
    fn enqueue(&mut self, who: Who, job: Job, now: f64) {
        if let Some(d) = self.takes_turns(who) {
            let conn = self.reqs[job.req].conn;
            if self.dispatchers[d].busy {
                let t = &mut self.turns[d];
                if self.conns[conn].queue.is_empty() && t.serving != Some(conn) {
                    t.waiting.push_back(conn);
                }
                self.conns[conn].queue.push_back(job);
                return;
            }
            // An idle dispatcher reads this one request: a turn of one.
            let quota = if self.run.read_turns {
                1
            } else {
                self.run.turn
            };
            self.turns[d].begin(conn, quota);
        }
        let s = self.server(who);
        if s.busy {
            s.queue.push_back(job);
        } else {
            s.busy = true;
            let wake = self.run.costs.wake;
            self.start(who, job, now + wake);
        }
    }

    /// What `job` costs the server `who`.
    fn cost(&self, who: Who, job: Job) -> f64 {
        let c = &self.run.costs;
        let service = self.reqs[job.req].service;
        match (self.run.arch, who) {
            (Arch::Lb { .. }, Who::Dispatcher(_)) if job.runs_here => c.dispatch + service,
            (Arch::Lb { .. }, Who::Dispatcher(_)) if job.reply => c.dispatch / 2.0,
            (Arch::Lb { .. }, Who::Dispatcher(_)) => c.dispatch / 2.0 + c.handoff,
            (Arch::Lb { .. }, _) => service,
            _ => c.dispatch + service,
        }
    }

    fn start(&mut self, who: Who, job: Job, at: f64) {
        if let (Who::Conn(conn), true) = (who, self.run.cpu_bound) {
            if self.free_cores == 0 {
                self.core_waiters.push_back(conn);
                // Parked until a core frees; remember the job at the front.
                self.conns[conn].queue.push_front(job);
                return;
            }
            self.free_cores -= 1;
        }
        let job = self.quick(who, job, at);
        let cost = self.cost(who, job);
        self.schedule(at + cost, who, job);
    }

    /// ramkv's quick path: a short request that a dispatcher starts on while
    /// the shared queue is empty (nobody is ready for it) is run and
    /// answered by that dispatcher in one go, with no hand-off to pay.
    fn quick(&self, who: Who, job: Job, at: f64) -> Job {
        let quick = matches!((self.run.arch, who), (Arch::Lb { .. }, Who::Dispatcher(_)))
            && !job.reply
            && self.reqs[job.req].service - self.run.costs.overshoot <= self.run.quick
            && self.shared_queue.is_empty()
            && at >= self.handed_until;
        if quick {
            Job {
                reply: true,
                runs_here: true,
                ..job
            }
        } else {
            job
        }
    }

    fn finish(&mut self, done: Done) {
        let now = done.at;
        let job = done.job;
        match (self.run.arch, done.who) {
            (Arch::Lb { .. }, Who::Dispatcher(_)) if !job.reply => self.hand_off(job.req, now),
            (Arch::Lb { .. }, Who::Worker(w)) => {
                let d = self.conn_dispatcher[self.reqs[job.req].conn];
                let reply = Job {
                    reply: true,
                    ..Job::new(job.req)
                };
                self.enqueue(Who::Dispatcher(d), reply, now);
                self.next_for_worker(w, now);
                return;
            }
            _ => self.done_at[job.req] = now,
        }
        if let (Who::Conn(_), true) = (done.who, self.run.cpu_bound) {
            self.free_cores += 1;
            if let Some(waiter) = self.core_waiters.pop_front() {
                let parked = self.conns[waiter].queue.pop_front().expect("a parked job");
                self.start(Who::Conn(waiter), parked, now);
            }
        }
        self.next_on(done.who, now);
    }

    /// The server `who` finished a job: the next in its queue starts at once.
    fn next_on(&mut self, who: Who, now: f64) {
        let waiting_for_core = matches!(who, Who::Conn(c) if self.core_waiters.contains(&c));
        if waiting_for_core {
            return;
        }
        if let Some(d) = self.takes_turns(who) {
            let (conns, turn, by_read) = (&self.conns, self.run.turn, self.run.read_turns);
            let quota = |waiting: usize| if by_read { waiting.min(turn) } else { turn };
            match self.turns[d].next(|c| conns[c].queue.len(), quota) {
                Some(conn) => {
                    let job = self.conns[conn].queue.pop_front().expect("a waiting job");
                    self.start(who, job, now);
                }
                None => self.dispatchers[d].busy = false,
            }
            return;
        }
        match self.server(who).queue.pop_front() {
            Some(next) => self.start(who, next, now),
            None => self.server(who).busy = false,
        }
    }

    /// lb: the dispatcher queued `req`; a free worker takes it (after a
    /// wake-up), else it waits in the shared queue.
    fn hand_off(&mut self, req: usize, now: f64) {
        self.handed_off += 1;
        match self.idle_workers.pop() {
            Some(w) if self.shared_queue.is_empty() => {
                self.workers[w].busy = true;
                let wake = self.run.costs.wake;
                self.handed_until = self.handed_until.max(now + wake);
                self.start(Who::Worker(w), Job::new(req), now + wake);
            }
            idle => {
                if let Some(w) = idle {
                    self.idle_workers.push(w);
                }
                self.queued += 1;
                self.shared_queue.push_back(req);
            }
        }
    }

    fn next_for_worker(&mut self, w: usize, now: f64) {
        match self.shared_queue.pop_front() {
            Some(req) => self.start(Who::Worker(w), Job::new(req), now),
            None => {
                self.workers[w].busy = false;
                self.idle_workers.push(w);
            }
        }
    }

    fn outcome(&self) -> Outcome {
        let (from, to) = (
            self.run.warmup * 1e9,
            (self.run.warmup + self.run.duration) * 1e9,
        );
        let mut out = Outcome {
            queued: self.queued,
            handed_off: self.handed_off,
            ..Outcome::default()
        };
        for (r, &done) in self.reqs.iter().zip(&self.done_at) {
            if r.arrival < from || r.arrival >= to {
                continue;
            }
            if done.is_finite() {
                out.latencies.push(done - r.arrival);
            } else {
                out.timeouts += 1;
            }
        }
        out.achieved_rate = out.latencies.len() as f64 / self.run.duration.max(f64::MIN_POSITIVE);
        out
    }
}

/// One run as a row of ramkv-bench's report, so simulated sweeps share its
/// CSV and plots. A simulated sender is never late.
pub fn summary(run: &Run, o: &Outcome) -> crate::report::Summary {
    crate::report::Summary {
        offered_rate: run.rate,
        achieved_rate: o.achieved_rate,
        completed: o.latencies.len() as u64,
        errors: 0,
        timeouts: o.timeouts,
        mean_us: o.mean_us(),
        p50_us: o.quantile_us(0.5),
        p90_us: o.quantile_us(0.9),
        p99_us: o.quantile_us(0.99),
        p999_us: o.quantile_us(0.999),
        p9999_us: o.quantile_us(0.9999),
        max_us: o.quantile_us(1.0),
        errors_by_status: Vec::new(),
        adherence: None,
        on_time_us: 0.0,
        late_p50_us: None,
        late_p99_us: None,
        late_p999_us: None,
        late_max_us: None,
        generator_late: false,
        valid: true,
        generator_cpu: 0.0,
        generator_busiest_thread: 0.0,
        generator_preempted: 0,
        generator_limited: false,
        placement: None,
        server_service_us: None,
        requested_service_us: None,
    }
}

/// M/M/1's mean time in system, 1 / (μ − λ), in ns, for arrival rate `lambda`
/// (per s) and mean service time `s_ns`.
pub fn mm1_mean_response_ns(lambda: f64, s_ns: f64) -> f64 {
    let mu = 1e9 / s_ns;
    1e9 / (mu - lambda)
}

/// Erlang C: the probability that an arrival waits in M/M/k with offered
/// load `a` = λ × mean service (in Erlangs).
pub fn erlang_c(k: usize, a: f64) -> f64 {
    // Erlang B by its stable recurrence, then C from B.
    let mut b = 1.0;
    for i in 1..=k {
        b = a * b / (i as f64 + a * b);
    }
    let rho = a / k as f64;
    b / (1.0 - rho + rho * b)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run(arch: &str, rate: f64, service: ServiceDist) -> Run {
        Run {
            arch: Arch::parse(arch).unwrap(),
            rate,
            connections: 16,
            hot: None,
            service: Service::Dist(service),
            costs: Costs::default(),
            cores: 1,
            cpu_bound: false,
            warmup: 0.5,
            duration: 10.0,
            drain: 1.0,
            seed: 7,
            quick: 0.0,
            placement: None,
            turn: RAMKV_TURN,
            read_turns: true,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let r = run(
            "lb:1:4",
            30_000.0,
            ServiceDist::Exp(Duration::from_micros(100)),
        );
        let (a, b) = (simulate(&r), simulate(&r));
        assert_eq!(a.latencies, b.latencies);
        let other = simulate(&Run { seed: 8, ..r });
        assert_ne!(a.latencies, other.latencies);
    }

    #[test]
    fn one_server_with_exponential_service_matches_m_m_1() {
        for rho in [0.5, 0.7] {
            let s = 10_000.0; // ns
            let lambda = rho * 1e9 / s;
            let r = Run {
                duration: 20.0,
                ..run(
                    "single",
                    lambda,
                    ServiceDist::Exp(Duration::from_nanos(s as u64)),
                )
            };
            let got = simulate(&r).mean_us().unwrap() * 1e3;
            let want = mm1_mean_response_ns(lambda, s);
            let err = (got / want - 1.0).abs();
            assert!(
                err < 0.02,
                "rho {rho}: {got:.0} ns vs {want:.0} ns ({err:.3})"
            );
        }
    }

    #[test]
    fn lb_without_costs_matches_erlang_c() {
        for (k, rho) in [(4, 0.6), (8, 0.8)] {
            let s = 10_000.0;
            let lambda = rho * k as f64 * 1e9 / s;
            let r = Run {
                duration: 20.0,
                ..run(
                    &format!("lb:1:{k}"),
                    lambda,
                    ServiceDist::Exp(Duration::from_nanos(s as u64)),
                )
            };
            let o = simulate(&r);
            let got = o.queued as f64 / o.handed_off as f64;
            let want = erlang_c(k, rho * k as f64);
            let err = (got / want - 1.0).abs();
            assert!(err < 0.02, "k {k}, rho {rho}: {got:.4} vs {want:.4}");
        }
    }

    #[test]
    fn a_hot_connection_overloads_its_dispatcher_but_not_lb() {
        // 2 of 16 connections carry half the load, at 60% of 8 threads'
        // capacity: a hot connection alone is 2.4 threads' worth.
        let service = ServiceDist::Fixed(Duration::from_micros(100));
        let rate = 0.6 * 8.0 * 1e4;
        let hot = |arch: &str| Run {
            hot: Some((2, 0.5)),
            duration: 2.0,
            ..run(arch, rate, service.clone())
        };
        let lb = simulate(&hot("lb:1:8")).quantile_us(0.99).unwrap();
        let inline = simulate(&hot("inline:8")).quantile_us(0.99).unwrap();
        assert!(lb < 1_000.0, "lb p99 {lb} us");
        assert!(inline > 100_000.0, "inline p99 {inline} us");
    }

    #[test]
    fn a_quiet_connection_waits_for_one_turn_of_a_busy_neighbour_not_its_backlog() {
        // One dispatcher, 1 ms requests at 1.2× its capacity, 90% of them
        // on one connection: that connection's backlog grows all run long.
        // The other connection's requests (10%) wait behind it for ever
        // when the dispatcher serves first come, first served, and for at
        // most one turn of 8 requests when it takes turns.
        let served_within_20ms = |turn: usize| {
            let r = Run {
                connections: 2,
                hot: Some((1, 0.9)),
                duration: 2.0,
                turn,
                read_turns: false,
                ..run(
                    "inline:1",
                    1_200.0,
                    ServiceDist::Fixed(Duration::from_millis(1)),
                )
            };
            let o = simulate(&r);
            let fast = o.latencies.iter().filter(|&&l| l <= 20e6).count();
            fast as f64 / o.latencies.len() as f64
        };
        let (fifo, turns) = (served_within_20ms(0), served_within_20ms(8));
        assert!(fifo < 0.02, "first come, first served: {fifo}");
        assert!(turns > 0.08, "in turns: {turns}");
    }

    #[test]
    fn a_turn_ends_with_what_one_read_brought_in() {
        // One dispatcher 90% busy, three quarters of its requests on one
        // connection. Turns of 128 requests make the other connection wait
        // out the busy one's backlog; turns of one read's batch, as ramkv
        // takes them, serve the two nearly first come, first served.
        let p99 = |turn: usize, read_turns: bool| {
            let r = Run {
                connections: 2,
                hot: Some((1, 0.75)),
                duration: 5.0,
                turn,
                read_turns,
                ..run(
                    "inline:1",
                    900.0,
                    ServiceDist::Fixed(Duration::from_millis(1)),
                )
            };
            simulate(&r).quantile_us(0.99).unwrap()
        };
        let (fifo, reads, budget) = (p99(0, false), p99(128, true), p99(128, false));
        assert!(
            reads < 0.8 * budget,
            "by read {reads} us, by budget {budget} us"
        );
        assert!(
            reads < 1.25 * fifo,
            "by read {reads} us, first come {fifo} us"
        );
    }

    #[test]
    fn a_recorded_placement_decides_which_connections_share_a_dispatcher() {
        // Together on dispatcher 0, the hot connections give it 1.2× its
        // capacity; kept apart, each dispatcher is 80% busy. A seed's own
        // draw plays no part.
        let service = ServiceDist::Fixed(Duration::from_micros(100));
        let placed = |p: Vec<usize>, seed| Run {
            hot: Some((2, 0.5)),
            duration: 2.0,
            seed,
            placement: Some(p),
            ..run("inline:2:hash", 0.8 * 2.0 * 1e4, service.clone())
        };
        let mut together = vec![0, 0];
        together.extend((2..16).map(|c| c % 2));
        let apart: Vec<usize> = (0..16).map(|c| c % 2).collect();
        let p99 = |r: &Run| simulate(r).quantile_us(0.99).unwrap();
        let (t1, t2) = (p99(&placed(together.clone(), 1)), p99(&placed(together, 2)));
        let a = p99(&placed(apart, 1));
        assert!(t1 > 100_000.0 && t2 > 100_000.0, "together: {t1} / {t2} us");
        assert!(a < 5_000.0, "apart: {a} us");
    }

    #[test]
    fn thread_per_conn_on_few_cores_queues_for_them() {
        let service = ServiceDist::Fixed(Duration::from_micros(100));
        let base = Run {
            cpu_bound: true,
            cores: 2,
            ..run("tpc", 15_000.0, service)
        };
        // 1.5 cores' worth of work on 2 cores: some requests wait for one.
        let p99 = simulate(&base).quantile_us(0.99).unwrap();
        assert!(p99 > 150.0, "p99 {p99}");
        let spare = simulate(&Run { cores: 16, ..base })
            .quantile_us(0.99)
            .unwrap();
        assert!(spare < p99);
    }

    #[test]
    fn quick_requests_stay_on_an_idle_dispatcher() {
        let service = ServiceDist::Fixed(Duration::from_micros(1));
        let r = Run {
            quick: 2_000.0,
            costs: Costs {
                dispatch: 4_000.0,
                handoff: 3_000.0,
                wake: 5_000.0,
                ..Costs::default()
            },
            ..run("lb:1:4", 1_000.0, service)
        };
        let o = simulate(&r);
        assert_eq!(o.handed_off, 0);
        // One wake-up (the dispatcher's), the dispatch cost and the service:
        // no hand-off cost.
        let p50 = o.quantile_us(0.5).unwrap();
        assert!((p50 - 10.0).abs() < 0.01, "p50 {p50}");
        let slow = simulate(&Run { quick: 0.0, ..r });
        assert!(
            slow.quantile_us(0.5).unwrap() > 22.0,
            "hand-offs cost the hand-off and two more wake-ups"
        );
    }

    #[test]
    fn a_task_a_worker_has_not_yet_taken_keeps_the_quick_path_closed() {
        // Half the requests are slow and handed off; a worker takes 50 µs to
        // wake. In ramkv the slow one sits in the queue until then, so a
        // quick request arriving meanwhile (gaps average 10 µs) is handed off
        // too: most of them (85% measured; 50% if quick requests ignored it).
        let service = ServiceDist::Bimodal {
            p: 0.5,
            a: Duration::from_micros(1),
            b: Duration::from_millis(1),
        };
        let r = Run {
            quick: 1_000.0,
            costs: Costs {
                wake: 50_000.0,
                ..Costs::default()
            },
            warmup: 0.05,
            duration: 0.5,
            ..run("lb:1:64", 100_000.0, service)
        };
        let sent = r.rate * (r.warmup + r.duration);
        let share = simulate(&r).handed_off as f64 / sent;
        assert!(share > 0.75, "only {share:.2} handed off");
    }

    #[test]
    fn the_quick_path_raises_a_lone_dispatchers_capacity() {
        // One dispatcher: 5 µs a request on the quick path (dispatch and
        // service), 6 µs handed off (dispatch and hand-off). At 180,000/s
        // (0.9 and 1.08 of those capacities) only the quick path keeps up.
        let service = ServiceDist::Fixed(Duration::from_micros(1));
        let r = Run {
            quick: 1_000.0,
            costs: Costs {
                dispatch: 4_000.0,
                handoff: 2_000.0,
                ..Costs::default()
            },
            ..run("lb:1:4", 180_000.0, service)
        };
        let quick = simulate(&r).quantile_us(0.99).unwrap();
        let handed_off = simulate(&Run { quick: 0.0, ..r })
            .quantile_us(0.99)
            .unwrap();
        assert!(quick < 200.0, "quick p99 {quick} µs");
        assert!(handed_off > 10_000.0, "handed-off p99 {handed_off} µs");
    }

    #[test]
    fn calibration_and_service_files_parse() {
        let c = Costs::from_calibration("dispatch_us=5 # read+write\nwake_us=20\nmean_us=1004.8\n")
            .unwrap();
        assert_eq!((c.dispatch, c.wake, c.handoff), (5e3, 20e3, 0.0));
        let s = Service::from_file_text("# measured\n500us\n\n1500\n").unwrap();
        assert_eq!(s, Service::Empirical(vec![500e3, 1500.0]));
        assert!(Service::from_file_text("# nothing\n").is_err());
        assert!(Arch::parse("lb:0:4").is_err());
        assert_eq!(
            Arch::parse("inline:8:hash").unwrap(),
            Arch::Inline {
                n: 8,
                assign: Assign::Hash
            }
        );
    }
}
