//! Throughput of the pure core: three `Core`s wired together in memory (no disk,
//! no network, no threads), with persists acknowledged at once. Prints entries
//! committed per second at proposal batches of 1, 64 and 256, and a JSON line.
//!
//! `cargo run --release -p raftkv-core --example core_bench [-- --seconds 3]`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv_core::{Action, Core, CoreConfig, DurableState, Message, NodeId};

struct Cluster {
    cores: Vec<Core>,
    inbox: VecDeque<(NodeId, NodeId, Message)>,
    now: u64,
    committed_at_leader: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let cores = ids
            .iter()
            .map(|id| {
                let mut config = CoreConfig::new(*id);
                // No CheckQuorum startup guard: the bench elects at once.
                config.check_quorum = false;
                Core::new(config, DurableState::bootstrap(ids), 0, id.0).expect("valid bench configuration")
            })
            .collect();
        Cluster { cores, inbox: VecDeque::new(), now: 0, committed_at_leader: 0 }
    }

    fn index(id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    /// Drains one core's actions: persists are durable at once, messages queued.
    fn drain(&mut self, node: usize) {
        let from = self.cores[node].id();
        let mut persisted = None;
        let actions: Vec<Action> = self.cores[node].drain_actions().collect();
        for action in actions {
            match action {
                Action::Persist(request) => persisted = Some(request.seq),
                Action::Send { to, message } => self.inbox.push_back((from, to, message)),
                Action::Apply { entries } if node == 0 => self.committed_at_leader += entries.len() as u64,
                _ => {}
            }
        }
        if let Some(seq) = persisted {
            self.cores[node].handle_persisted(seq).expect("sequence was just issued");
            self.drain(node);
        }
    }

    fn run_until_quiet(&mut self) {
        for node in 0..3 {
            self.drain(node);
        }
        while let Some((from, to, message)) = self.inbox.pop_front() {
            let node = Self::index(to);
            self.cores[node].handle_message(self.now, from, message);
            self.drain(node);
        }
    }

    fn elect_node_1(&mut self) {
        while !self.cores[0].is_leader() {
            self.now += 10;
            self.cores[0].handle_tick(self.now);
            self.run_until_quiet();
        }
        self.run_until_quiet();
    }
}

fn measure(batch: usize, seconds: f64) -> (f64, u64) {
    let mut cluster = Cluster::new();
    cluster.elect_node_1();
    let payload = Bytes::from_static(b"0123456789abcdef");
    let start_committed = cluster.committed_at_leader;
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(seconds);
    let mut rounds = 0u64;
    while started.elapsed() < deadline {
        for _ in 0..16 {
            let commands = std::iter::repeat_n(payload.clone(), batch);
            cluster.cores[0].propose_batch(commands).expect("node 1 stays leader without ticks");
            cluster.run_until_quiet();
            rounds += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let committed = cluster.committed_at_leader - start_committed;
    (committed as f64 / elapsed, rounds)
}

fn main() {
    let mut seconds = 2.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds);
        }
    }
    let mut json = Vec::new();
    for batch in [1usize, 64, 256] {
        let (rate, rounds) = measure(batch, seconds);
        println!("batch {batch:>3}: {rate:>12.0} entries committed/s ({rounds} proposal rounds)");
        json.push(format!("\"batch_{batch}_entries_per_s\":{rate:.0}"));
    }
    println!("{{{}}}", json.join(","));
}
