//! Convergence under faults: three nodes in a triangle, a seeded random workload (creates, edits,
//! deletes, renames, concurrent edits of the same files on different nodes) while nodes are stopped,
//! killed with SIGKILL mid-transfer and restarted. After healing, every folder is identical, and
//! every content that was on disk at the end of a quiet period is still there, as a file or a
//! conflict copy. The seed is printed (set CHAOS_SEED to replay).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

/// A tiny deterministic generator (xorshift), so a seed replays the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn files(n: &Node) -> Vec<String> {
    // A user's files only: syncnode's in-flight temp files are not the workload's to move.
    tree(&n.folder)
        .into_iter()
        .filter(|(k, e)| matches!(e, Entry::File { .. }) && !k.contains(".syncnode-tmp-"))
        .map(|(k, _)| k)
        .collect()
}

fn contents(nodes: &[&Node]) -> BTreeSet<[u8; 32]> {
    nodes
        .iter()
        .flat_map(|n| tree(&n.folder).into_values())
        .filter_map(|e| match e {
            Entry::File { hash, .. } => Some(hash),
            Entry::Dir => None,
        })
        .collect()
}

/// What the workload wrote, and which writes a later operation on the same path may legitimately
/// have replaced. A write that no later operation touched (on any node) must survive somewhere, as
/// the file or as a conflict copy — that includes concurrent writes of one path on several nodes,
/// whose losers must all be kept. (A write followed by another operation on its path may have been
/// seen by that operation, and then it is rightly gone; whether it was seen depends on timing the
/// test cannot observe, so such writes are not checked. tests/conflicts.rs checks those cases
/// deterministically.)
#[derive(Default)]
struct Ledger {
    written: Vec<([u8; 32], String)>,
    what: Vec<String>,
    replaced: BTreeSet<usize>,
}

impl Ledger {
    fn replacing(&mut self, rel: &str) {
        for (i, (_, path)) in self.written.iter().enumerate() {
            if path == rel {
                self.replaced.insert(i);
            }
        }
    }

    fn write(&mut self, node: &Node, rel: &str, data: &[u8]) {
        self.replacing(rel);
        self.written.push((*blake3::hash(data).as_bytes(), rel.to_string()));
        self.what.push(format!(
            "{} wrote {rel} ({} bytes, {})",
            node.name,
            data.len(),
            String::from_utf8_lossy(&data[data.len().saturating_sub(6)..])
        ));
        node.write(rel, data);
    }
}

fn step(rng: &mut Rng, node: &Node, counter: &mut u64, ledger: &mut Ledger) {
    *counter += 1;
    let names = ["a.txt", "b.txt", "c.bin", "d/e.txt", "d/f/g.txt", "h/i.dat"];
    let existing = files(node);
    match rng.below(10) {
        0..=4 => {
            let name = names[rng.below(names.len() as u64) as usize];
            let len =
                if rng.below(8) == 0 { 300_000 + rng.below(400_000) as usize } else { 10 + rng.below(2000) as usize };
            let mut data = random_bytes(len, rng.next());
            data.extend_from_slice(format!("#{counter}").as_bytes());
            ledger.write(node, name, &data);
        }
        5..=6 if !existing.is_empty() => {
            let victim = &existing[rng.below(existing.len() as u64) as usize];
            ledger.replacing(victim);
            let _ = std::fs::remove_file(node.path(victim));
        }
        7..=8 if !existing.is_empty() => {
            let from = &existing[rng.below(existing.len() as u64) as usize];
            let to = format!("moved/{}-{counter}", from.replace('/', "_").replace(".sync-conflict-", ".c-"));
            ledger.replacing(from);
            std::fs::create_dir_all(node.path("moved")).unwrap();
            let _ = std::fs::rename(node.path(from), node.path(&to));
        }
        _ => {
            let mut data = random_bytes(100, rng.next());
            data.extend_from_slice(format!("#{counter}").as_bytes());
            ledger.write(node, "shared.txt", &data);
        }
    }
}

#[test]
fn three_nodes_converge_through_kills_and_restarts_without_losing_a_version() {
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut nodes = triangle();
    let mut counter = 0u64;
    let mut ledger = Ledger::default();

    for round in 0..4 {
        // A burst of work on random nodes, some of it concurrent on the same file.
        for _ in 0..25 {
            let i = rng.below(3) as usize;
            if nodes[i].is_running() || rng.below(2) == 0 {
                step(&mut rng, &nodes[i], &mut counter, &mut ledger);
            }
        }
        // A fault: a clean stop, or a SIGKILL right away (likely mid-transfer), while work goes on.
        let victim = rng.below(3) as usize;
        if rng.below(2) == 0 {
            nodes[victim].kill();
        } else {
            nodes[victim].stop();
        }
        for _ in 0..10 {
            let i = rng.below(3) as usize;
            step(&mut rng, &nodes[i], &mut counter, &mut ledger);
        }
        nodes[victim].start();
        // Quiet period: everyone converges; whatever is on disk now must never be lost later.
        let refs: Vec<&Node> = nodes.iter().collect();
        let ok = converged(&refs, Duration::from_secs(90), |_| true);
        if !ok {
            for ((hash, _), what) in ledger.written.iter().zip(&ledger.what) {
                eprintln!("ledger: {what} hash={:?}", &hash[..4]);
            }
        }
        assert!(ok, "round {round} did not converge (CHAOS_SEED={seed}):\n{}", describe(&refs));
        let present = contents(&refs);
        let lost: Vec<_> = ledger
            .written
            .iter()
            .enumerate()
            .filter(|(i, (hash, _))| !ledger.replaced.contains(i) && !present.contains(hash))
            .map(|(i, _)| ledger.what[i].clone())
            .collect();
        eprintln!("LOST: {lost:?}");
        assert!(
            lost.is_empty(),
            "round {round}: {} written versions lost (CHAOS_SEED={seed}):\n{}",
            lost.len(),
            describe(&refs)
        );
    }
    for n in &nodes {
        let leftovers: Vec<_> = walkdir::WalkDir::new(&n.folder)
            .into_iter()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".syncnode-tmp-"))
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(leftovers.is_empty(), "temp files left (CHAOS_SEED={seed}): {leftovers:?}");
    }
}
