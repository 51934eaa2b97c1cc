use super::*;
use crate::core::record::fixtures::file;
use crate::core::ShortId;
use proptest::prelude::*;
use std::cell::{Cell, RefCell};

/// A folder's root, disk and index as a step sees them.
struct Io {
    root: RefCell<Result<(), RootProblem>>,
    holds: Cell<bool>,
    live: Cell<u64>,
}

impl Default for Io {
    fn default() -> Self {
        Io { root: RefCell::new(Ok(())), holds: Cell::new(true), live: Cell::new(100) }
    }
}

impl FolderIo for Io {
    fn check_root(&self) -> Result<(), RootProblem> {
        self.root.borrow().clone()
    }
    fn delete_holds(&self, _: &FileRecord) -> bool {
        self.holds.get()
    }
    fn live_records(&self) -> u64 {
        self.live.get()
    }
}

fn paths(v: &[&str]) -> Vec<String> {
    v.iter().map(|p| p.to_string()).collect()
}

fn deleted(path: &str) -> FileRecord {
    file(path, 1, &[(1, 1)], 1, 1).tombstone(ShortId(1), 2)
}

/// The scope of the one scan `effects` start, if any.
fn scope_of(effects: &[Effect]) -> Option<(Vec<String>, bool)> {
    let mut scans = effects.iter().filter_map(|e| match e {
        Effect::StartScan { scope, full, .. } => Some((scope.clone(), *full)),
        _ => None,
    });
    let first = scans.next();
    assert!(scans.next().is_none(), "two scans started at once: {effects:?}");
    first
}

/// Ends the running scan with `deletes` found, at `now` (what it says of unreadable files left out).
fn end_scan(f: &mut Folder, io: &Io, full: bool, deletes: Vec<FileRecord>, now: u64) -> Vec<Effect> {
    let mut effects = f.scan_finished(io.check_root(), full, &[], Vec::new()).expect("root held");
    effects.retain(|e| !matches!(e, Effect::Unreadable { .. }));
    f.scanned(Vec::new(), deletes, now);
    effects.extend(f.scan_done(full, now, io));
    effects
}

#[test]
fn changes_during_a_scan_wait_for_it_and_go_together() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)));
    assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), None, "a scan runs");
    assert_eq!(scope_of(&f.changed(paths(&["c"]), &io)), None);
    let effects = end_scan(&mut f, &io, false, Vec::new(), 10);
    assert_eq!(scope_of(&effects), Some((paths(&["b", "c"]), false)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 20)), None, "nothing left");
    assert!(!f.scanning());
}

#[test]
fn a_burst_of_changes_waiting_for_a_scan_gives_way_to_their_directories() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert!(scope_of(&f.changed(paths(&["x"]), &io)).is_some(), "a scan runs");
    let burst: Vec<String> = (0..=MAX_PENDING_PATHS).map(|i| format!("d{}/e/f{i}", i % 3)).collect();
    assert_eq!(scope_of(&f.changed(burst, &io)), None);
    assert_eq!(f.pending.len(), 3, "{:?}", f.pending);
    let effects = end_scan(&mut f, &io, false, Vec::new(), 10);
    assert_eq!(scope_of(&effects), Some((paths(&["d0/e", "d1/e", "d2/e"]), false)));
}

#[test]
fn a_path_being_pulled_waits_for_its_pull_then_is_scanned_once() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert!(f.pulling("a".into(), PullPhase::Started, &io).is_empty());
    assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), None, "only a pulled path is pending");
    let effects = f.changed(paths(&["b"]), &io);
    let Some(Effect::StartScan { scope, busy, .. }) = effects.first() else { panic!("{effects:?}") };
    assert_eq!((scope.clone(), busy.clone()), (paths(&["b"]), HashSet::from(["a".to_string()])));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 1)), None, "a is still pulled");
    let ended = PullPhase::Ended { failed: false };
    assert_eq!(scope_of(&f.pulling("a".into(), ended, &io)), Some((paths(&["a"]), false)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, Vec::new(), 2)), None, "once");
}

#[test]
fn a_pull_is_looked_at_after_it_only_when_it_failed() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert!(f.pulling("a".into(), PullPhase::Started, &io).is_empty());
    assert!(f.pulling("a".into(), PullPhase::Ended { failed: false }, &io).is_empty(), "its Applied said it all");
    assert!(f.pulling("b".into(), PullPhase::Started, &io).is_empty());
    assert_eq!(scope_of(&f.pulling("b".into(), PullPhase::Ended { failed: true }, &io)), Some((paths(&["b"]), false)));
}

#[test]
fn a_changed_ignore_file_scans_everything_and_recomputes_after() {
    let (mut f, io) = (Folder::new(10), Io::default());
    let effects = f.changed(paths(&[IGNORE_FILE]), &io);
    let Some(Effect::StartScan { scope, full: true, reload_ignore: true, .. }) = effects.first() else {
        panic!("{effects:?}")
    };
    assert_eq!(scope, &paths(&[IGNORE_FILE, ""]));
    assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 1), vec![Effect::Recompute]);
    let generation = f.next_recompute();
    assert!(f.recompute_current(generation));
    assert!(!f.recompute_current(generation - 1));
}

#[test]
fn a_rehashed_path_is_suspect_in_the_next_scan_only() {
    let (mut f, io) = (Folder::new(10), Io::default());
    let effects = f.rehash("a".into(), &io);
    let Some(Effect::StartScan { suspect, .. }) = effects.first() else { panic!("{effects:?}") };
    assert_eq!(suspect, &HashSet::from(["a".to_string()]));
    let effects = end_scan(&mut f, &io, false, Vec::new(), 1);
    assert!(effects.is_empty(), "{effects:?}");
    let effects = f.changed(paths(&["a"]), &io);
    let Some(Effect::StartScan { suspect, .. }) = effects.first() else { panic!("{effects:?}") };
    assert!(suspect.is_empty());
}

#[test]
fn a_root_gone_stops_everything_until_it_is_back_then_rescans_and_recomputes() {
    let (mut f, io) = (Folder::new(10), Io::default());
    *io.root.borrow_mut() = Err(RootProblem::Missing);
    assert_eq!(f.changed(paths(&["a"]), &io), vec![Effect::EnterFault(Fault::Root(RootProblem::Missing))]);
    assert!(f.changed(paths(&["b"]), &io).is_empty(), "said once, nothing scanned");
    assert!(f.root_checked(Err(RootProblem::Missing), &io).is_empty());
    *io.root.borrow_mut() = Ok(());
    assert!(f.changed(paths(&["c"]), &io).is_empty(), "only a root check resumes");
    let effects = f.root_checked(Ok(()), &io);
    assert_eq!(effects[0], Effect::LeaveFault);
    assert_eq!(scope_of(&effects), Some((paths(&[""]), true)));
    assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 1), vec![Effect::Recompute]);
}

#[test]
fn a_scan_that_outlived_its_root_is_void() {
    let (mut f, io) = (Folder::new(10), Io::default());
    scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
    let effects = f.scan_finished(Err(RootProblem::OtherFilesystem), false, &paths(&["a"]), Vec::new());
    assert_eq!(effects, Err(vec![Effect::EnterFault(Fault::Root(RootProblem::OtherFilesystem))]));
    assert!(!f.scanning());
}

#[test]
fn deletes_wait_for_quiet_then_are_judged_together() {
    let (mut f, io) = (Folder::new(10), Io::default());
    scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
    let effects = end_scan(&mut f, &io, false, vec![deleted("a")], 1_000);
    assert_eq!(effects, vec![Effect::ScheduleFlush { at: 1_000 + DELETE_QUIET, generation: 1 }]);
    scope_of(&f.changed(paths(&["b"]), &io)).expect("scan");
    let effects = end_scan(&mut f, &io, false, vec![deleted("b")], 1_050);
    assert_eq!(effects, vec![Effect::ScheduleFlush { at: 1_050 + DELETE_QUIET, generation: 2 }]);
    assert!(f.flush_due(1, &io).is_empty(), "replaced by a later one");
    assert_eq!(f.flush_due(2, &io), vec![Effect::CommitDeletes(vec![deleted("a"), deleted("b")])]);
    assert!(f.flush_due(2, &io).is_empty(), "nothing held");
}

#[test]
fn deletes_found_without_pause_are_judged_after_the_max_wait() {
    let (mut f, io) = (Folder::new(10), Io::default());
    let mut now = 5_000;
    let mut last_at = 0;
    for i in 0..30 {
        scope_of(&f.changed([format!("p{i}")], &io)).expect("scan");
        let effects = end_scan(&mut f, &io, false, vec![deleted(&format!("p{i}"))], now);
        match &effects[..] {
            [Effect::ScheduleFlush { at, .. }] => {
                assert!(*at <= 5_000 + DELETE_MAX_WAIT);
                last_at = *at;
            }
            [Effect::CommitDeletes(d)] => {
                assert!(now >= 5_000 + DELETE_MAX_WAIT, "overdue");
                assert_eq!(d.len(), i + 1);
                assert_eq!(last_at, 5_000 + DELETE_MAX_WAIT, "the flush was due by then");
                return;
            }
            other => panic!("{other:?}"),
        }
        now += 90;
    }
    panic!("never judged");
}

#[test]
fn a_change_during_a_full_scan_is_scanned_beside_it() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
    assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)), "not held up");
    assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), None, "one scan of paths at a time");
    assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), None, "the next full scan waits");
    let effects = end_scan(&mut f, &io, false, vec![], 1);
    assert_eq!(scope_of(&effects), Some((paths(&["b"]), false)), "beside the full scan still running");
    assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 2)), None, "a full scan starts alone");
    // The paths scanned beside the full scan are looked at again after it: here by the next one.
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 3)), Some((paths(&["", "a", "b"]), true)));
}

/// Found by tests/sim.rs (seeds 6953, 9585): a node starts, its full scan sees file `a`,
/// whose record is a tombstone (the file came back with a power loss); the user deletes it
/// meanwhile, and the watcher's scan of `a`, beside the full scan, finds it absent as recorded
/// and commits nothing. The full scan's sight of `a` was then committed, and the index said
/// `a` exists, with nothing to look at it again: peers pulled it forever. A path scanned beside
/// a full scan is now scanned again once the full scan is done.
#[test]
fn a_path_scanned_beside_a_full_scan_is_scanned_again_after_it() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
    assert_eq!(scope_of(&f.changed(paths(&["a"]), &io)), Some((paths(&["a"]), false)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 1)), None, "nothing else to scan yet");
    assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 2)), Some((paths(&["a"]), false)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 3)), None, "once");
    // A path scan that starts after the full one is not.
    assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), Some((paths(&["b"]), false)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, false, vec![], 4)), None);
}

#[test]
fn periodic_rescans_space_out_on_a_tree_that_takes_long_to_scan() {
    let (mut f, io) = (Folder::new(10), Io::default());
    // The first is due at once; a full scan then took 20 s and ended at 100 s.
    assert_eq!(scope_of(&f.periodic(80_000, 0, &io)), Some((paths(&[""]), true)));
    assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 100_000)), None);
    assert_eq!(scope_of(&f.periodic(160_000, 20_000, &io)), None, "within 9 x 20 s of its end");
    assert_eq!(scope_of(&f.periodic(280_000, 20_000, &io)), Some((paths(&[""]), true)));
    // A change, or a full scan asked for by anything but the timer, is never held back.
    assert_eq!(scope_of(&end_scan(&mut f, &io, true, vec![], 300_000)), None);
    assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
}

#[test]
fn a_delete_that_no_longer_holds_is_scanned_again() {
    let (mut f, io) = (Folder::new(10), Io::default());
    assert_eq!(scope_of(&f.changed(paths(&[""]), &io)), Some((paths(&[""]), true)));
    io.holds.set(false);
    let effects = end_scan(&mut f, &io, true, vec![deleted("a")], 1);
    assert_eq!(scope_of(&effects), Some((paths(&["a"]), false)));
    assert!(!effects.iter().any(|e| matches!(e, Effect::CommitDeletes(_))));
}

#[test]
fn a_folder_emptied_is_held_until_confirmed_or_back() {
    let (mut f, io) = (Folder::new(2), Io::default());
    io.live.set(3);
    let all = || vec![deleted("a"), deleted("b"), deleted("c")];
    scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
    assert_eq!(end_scan(&mut f, &io, true, all(), 1), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
    // Any change is looked at with a full scan; the files are still gone.
    assert_eq!(scope_of(&f.changed(paths(&["x"]), &io)), Some((paths(&[""]), true)));
    assert!(end_scan(&mut f, &io, true, all(), 2).is_empty(), "held, said once");
    // The user confirms: the next full scan sends them, and the folder resumes.
    assert_eq!(f.confirming(), Confirming::Deletes { files: 3 });
    assert_eq!(scope_of(&f.confirm(&io)), Some((paths(&[""]), true)));
    let effects = end_scan(&mut f, &io, true, all(), 3);
    assert_eq!(f.confirming(), Confirming::NotStopped, "resumed");
    assert_eq!(effects, vec![Effect::CommitDeletes(all()), Effect::LeaveFault, Effect::Recompute]);
    // The confirmation is spent.
    scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
    assert_eq!(end_scan(&mut f, &io, true, all(), 4), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
    // The files come back: a full scan finds no delete, and the folder resumes.
    scope_of(&f.changed(paths(&["a"]), &io)).expect("scan");
    assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 5), vec![Effect::LeaveFault, Effect::Recompute]);
    assert_eq!(f.fault(), None);
}

#[test]
fn a_confirm_is_spent_by_its_full_scan_even_when_the_files_came_back() {
    // tests/sim.rs, seed 202: the user put the files back and confirmed all the same; the confirm
    // stayed in force, and a mass delete minutes later went to every peer unheld.
    let (mut f, io) = (Folder::new(2), Io::default());
    io.live.set(3);
    let all = || vec![deleted("a"), deleted("b"), deleted("c")];
    scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
    assert_eq!(end_scan(&mut f, &io, true, all(), 1), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
    assert_eq!(scope_of(&f.confirm(&io)), Some((paths(&[""]), true)));
    assert_eq!(end_scan(&mut f, &io, true, Vec::new(), 2), vec![Effect::LeaveFault, Effect::Recompute]);
    scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
    assert_eq!(end_scan(&mut f, &io, true, all(), 3), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
}

#[test]
fn deletes_a_scan_of_some_paths_finds_while_a_mass_delete_is_held_wait_for_a_full_scan() {
    // tests/sim.rs, seed 2: a scan of one path, running when the full scan stopped the folder,
    // found that path deleted; judged alone (one of three: not a mass delete), it was sent.
    let (mut f, io) = (Folder::new(2), Io::default());
    io.live.set(3);
    let all = || vec![deleted("a"), deleted("b"), deleted("c")];
    scope_of(&f.changed(paths(&[""]), &io)).expect("scan");
    assert_eq!(scope_of(&f.changed(paths(&["b"]), &io)), Some((paths(&["b"]), false)), "beside it");
    assert_eq!(end_scan(&mut f, &io, true, all(), 1), vec![Effect::EnterFault(Fault::Emptied { files: 3 })]);
    let effects = end_scan(&mut f, &io, false, vec![deleted("b")], 2);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::CommitDeletes(_) | Effect::ScheduleFlush { .. })),
        "{effects:?}"
    );
    assert!(end_scan(&mut f, &io, false, Vec::new(), 2 + DELETE_MAX_WAIT).is_empty(), "not even overdue");
    assert!(f.flush_due(f.delete_flush, &io).is_empty());
    // The next full scan judges them all, and holds them still.
    assert_eq!(scope_of(&f.changed(paths(&["x"]), &io)), Some((paths(&[""]), true)));
    assert!(end_scan(&mut f, &io, true, all(), 3).is_empty(), "held, said once");
    assert!(matches!(f.fault(), Some(Fault::Emptied { files: 3 })));
}

#[test]
fn a_new_root_confirmed_resumes_with_a_full_scan_whose_deletes_go() {
    let (mut f, io) = (Folder::new(2), Io::default());
    io.live.set(2);
    assert_eq!(f.confirming(), Confirming::NotStopped);
    f.root_checked(Err(RootProblem::OtherDirectory), &io);
    assert_eq!(f.confirming(), Confirming::NewRoot);
    let effects = f.confirm(&io);
    assert_eq!(effects[0], Effect::LeaveFault);
    assert_eq!(scope_of(&effects), Some((paths(&[""]), true)));
    let effects = end_scan(&mut f, &io, true, vec![deleted("a"), deleted("b")], 1);
    assert_eq!(effects, vec![Effect::CommitDeletes(vec![deleted("a"), deleted("b")]), Effect::Recompute]);
}

#[test]
fn unreadable_files_are_said_once_and_forgotten_when_a_scan_of_them_reads_them() {
    let mut f = Folder::new(2);
    let reason = |p: &str| (p.to_string(), "denied".to_string());
    let found = f.scan_finished(Ok(()), true, &paths(&[""]), vec![reason("d/a"), reason("b")]).unwrap();
    let Effect::Unreadable { now, found, readable } = &found[0] else { panic!() };
    assert_eq!((now.len(), found.len(), readable.len()), (2, 2, 0));
    // A scan of d/ still cannot read d/a: not said again; b is outside it and stays.
    let effects = f.scan_finished(Ok(()), false, &paths(&["d"]), vec![reason("d/a")]).unwrap();
    let Effect::Unreadable { now, found, readable } = &effects[0] else { panic!() };
    assert_eq!((now.len(), found.len(), readable.len()), (2, 0, 0));
    let effects = f.scan_finished(Ok(()), false, &paths(&["b"]), Vec::new()).unwrap();
    let Effect::Unreadable { now, found, readable } = &effects[0] else { panic!() };
    assert_eq!(
        (now.keys().map(String::as_str).collect::<Vec<_>>(), found.len(), readable.clone()),
        (vec!["d/a"], 0, paths(&["b"]))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Changed(usize),
    /// The Puller starts (`true`) or ends a pull of a path; the pull fails (the second `bool`).
    Pull(usize, bool, bool),
    /// The running scan ends, with deletes of these paths found.
    ScanEnds(Vec<usize>),
    Wait(u64),
    /// `n` times: a change, its scan ending with a delete, `gap` ms (an `rm -rf` in batches).
    Burst {
        n: usize,
        gap: u64,
    },
    Root(bool),
    RootCheck,
    Confirm,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..5usize).prop_map(Op::Changed),
        3 => (0..5usize, any::<bool>(), any::<bool>()).prop_map(|(p, a, failed)| Op::Pull(p, a, failed)),
        4 => proptest::collection::vec(0..5usize, 0..3).prop_map(Op::ScanEnds),
        // Mostly less than DELETE_QUIET: deletes found without a pause, until DELETE_MAX_WAIT.
        3 => prop_oneof![3 => 0..DELETE_QUIET + 20, 1 => 0..3_000u64].prop_map(Op::Wait),
        1 => (1..40usize, 0..DELETE_QUIET + 20).prop_map(|(n, gap)| Op::Burst { n, gap }),
        1 => any::<bool>().prop_map(Op::Root),
        1 => Just(Op::RootCheck),
        1 => Just(Op::Confirm),
    ]
}

const PATHS: [&str; 5] = ["", "a", "b", "d/c", IGNORE_FILE];

/// The Index actor, as far as the rules see it, with what the properties check.
struct Sim {
    f: Folder,
    io: Io,
    now: u64,
    /// The scans running (full or not), in the order they started.
    running: Vec<bool>,
    timers: Vec<(u64, u64)>,
    pulling: BTreeSet<String>,
    /// Paths whose pull failed, not scanned since.
    owed: BTreeSet<String>,
    /// Paths said to have changed, not scanned since.
    asked: BTreeSet<String>,
    /// Paths scanned beside the running full scan: owed a scan once it ends.
    beside: BTreeSet<String>,
}

impl Sim {
    fn apply(&mut self, effects: Vec<Effect>) -> Result<(), TestCaseError> {
        for e in effects {
            match e {
                Effect::StartScan { scope, full, busy, .. } => {
                    // A full scan starts alone; a scan of paths beside a full one at most.
                    if full {
                        prop_assert!(self.running.is_empty(), "a full scan started while a scan runs");
                    } else {
                        prop_assert!(!self.running.contains(&false), "two scans of paths at once");
                    }
                    prop_assert!(self.io.check_root().is_ok(), "scanned without a root");
                    prop_assert!(!matches!(self.f.fault(), Some(Fault::Root(_))), "scanned while stopped");
                    prop_assert_eq!(busy, self.pulling.iter().cloned().collect::<HashSet<_>>());
                    for p in scope.iter().filter(|p| !p.is_empty()) {
                        prop_assert!(!self.pulling.contains(p), "{} scanned while pulled", p);
                        let owed = self.owed.remove(p);
                        prop_assert!(self.asked.remove(p) || owed, "{} scanned again without a cause", p);
                    }
                    if full {
                        // A full scan skips the paths being pulled: what one is owed still waits.
                        let pulling = &self.pulling;
                        self.owed.retain(|p| pulling.contains(p));
                        self.asked.retain(|p| scope.contains(p) || pulling.contains(p));
                    } else if self.running.contains(&true) {
                        self.beside.extend(scope.iter().cloned());
                    }
                    self.running.push(full);
                }
                // Pending paths are dropped: the full scan that resumes covers them.
                Effect::EnterFault(_) => {
                    self.owed.clear();
                    self.asked.clear();
                    self.beside.clear();
                }
                Effect::ScheduleFlush { at, generation } => {
                    prop_assert!(at >= self.now);
                    self.timers.push((at, generation));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Held deletes are judged within `DELETE_MAX_WAIT` of being found; while a mass delete is
    /// held, by the next full scan.
    fn check_deletes(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.f.deletes.is_empty(), self.f.deletes_since.is_none());
        let emptied = matches!(self.f.fault(), Some(Fault::Emptied { .. }));
        if let Some(since) = self.f.deletes_since.filter(|_| !emptied) {
            prop_assert!(self.now <= since + DELETE_MAX_WAIT, "held since {} at {}", since, self.now);
        }
        Ok(())
    }

    fn wait(&mut self, until: u64) -> Result<(), TestCaseError> {
        loop {
            self.timers.sort();
            match self.timers.first() {
                Some(&(at, generation)) if at <= until => {
                    self.timers.remove(0);
                    self.now = self.now.max(at);
                    self.check_deletes()?;
                    let effects = self.f.flush_due(generation, &self.io);
                    self.apply(effects)?;
                }
                _ => break,
            }
        }
        self.now = until;
        self.check_deletes()
    }

    fn end_scan(&mut self, deletes: &[usize]) -> Result<(), TestCaseError> {
        // Either running scan may end first.
        if self.running.is_empty() {
            return Ok(());
        }
        let full =
            if deletes.len().is_multiple_of(2) { self.running.remove(0) } else { self.running.pop().expect("one") };
        if full {
            self.owed.append(&mut self.beside);
        }
        let root = self.io.check_root();
        match self.f.scan_finished(root, full, &[], Vec::new()) {
            Err(effects) => self.apply(effects),
            Ok(effects) => {
                self.apply(effects)?;
                let deletes = deletes.iter().map(|&i| deleted(PATHS[i])).filter(|r| !r.path.is_empty()).collect();
                self.f.scanned(Vec::new(), deletes, self.now);
                let effects = self.f.scan_done(full, self.now, &self.io);
                self.apply(effects)
            }
        }
    }
}

proptest! {
    /// A scan never starts while one runs, nor while the root is gone or the folder stopped
    /// for it; a path being pulled is never in a scan's scope (only in its `busy`), and once its
    /// pull ends it is scanned once more; a held delete is judged within `DELETE_MAX_WAIT` of
    /// being found; and once the root holds and pulls end, every scan asked for has run.
    #[test]
    fn scans_and_deletes_follow_the_rules(ops in proptest::collection::vec(op(), 1..200), guard in 0u64..3) {
        let mut s = Sim {
            f: Folder::new(guard),
            io: Io::default(),
            now: 1_000,
            running: Vec::new(),
            timers: Vec::new(),
            pulling: BTreeSet::new(),
            owed: BTreeSet::new(),
            asked: BTreeSet::new(),
            beside: BTreeSet::new(),
        };
        s.io.live.set(3);
        for op in ops {
            match op {
                Op::Changed(i) => {
                    s.asked.insert(PATHS[i].to_string());
                    let effects = s.f.changed([PATHS[i].to_string()], &s.io);
                    s.apply(effects)?;
                }
                Op::Pull(i, active, failed) => {
                    let path = PATHS[i].to_string();
                    if path.is_empty() || active == s.pulling.contains(&path) {
                        continue;
                    }
                    let phase = if active {
                        s.pulling.insert(path.clone());
                        PullPhase::Started
                    } else {
                        s.pulling.remove(&path);
                        // A pull that failed owes the path a look; one that succeeded recorded
                        // what it left (`Applied`), which settles a look owed before and dropped
                        // meanwhile (the root went away); a look still waiting is taken.
                        if failed {
                            s.owed.insert(path.clone());
                        } else if !s.f.pending.contains(&path) {
                            s.owed.remove(&path);
                        }
                        PullPhase::Ended { failed }
                    };
                    let effects = s.f.pulling(path, phase, &s.io);
                    s.apply(effects)?;
                }
                Op::ScanEnds(deletes) => s.end_scan(&deletes)?,
                Op::Wait(ms) => s.wait(s.now + ms)?,
                Op::Burst { n, gap } => {
                    for k in 0..n {
                        let i = 1 + k % 3;
                        s.asked.insert(PATHS[i].to_string());
                        let effects = s.f.changed([PATHS[i].to_string()], &s.io);
                        s.apply(effects)?;
                        s.end_scan(&[i])?;
                        s.check_deletes()?;
                        s.wait(s.now + gap)?;
                    }
                }
                Op::Root(ok) => {
                    *s.io.root.borrow_mut() = if ok { Ok(()) } else { Err(RootProblem::Missing) };
                }
                Op::RootCheck => {
                    let effects = s.f.root_checked(s.io.check_root(), &s.io);
                    s.apply(effects)?;
                }
                Op::Confirm => {
                    let effects = s.f.confirm(&s.io);
                    s.apply(effects)?;
                }
            }
            s.check_deletes()?;
        }
        // The root holds and every pull ends: whatever was asked for gets scanned.
        *s.io.root.borrow_mut() = Ok(());
        let effects = s.f.root_checked(Ok(()), &s.io);
        s.apply(effects)?;
        while let Some(path) = s.pulling.pop_first() {
            s.owed.insert(path.clone());
            let effects = s.f.pulling(path, PullPhase::Ended { failed: true }, &s.io);
            s.apply(effects)?;
        }
        for _ in 0..10 {
            s.end_scan(&[])?;
            s.wait(s.now + DELETE_MAX_WAIT)?;
        }
        prop_assert!(s.running.is_empty() && !s.f.scanning());
        prop_assert!(s.owed.is_empty(), "never scanned after their pull: {:?}", s.owed);
        prop_assert!(s.f.pending.is_empty(), "left pending: {:?}", s.f.pending);
        prop_assert!(s.f.beside.is_empty(), "left to scan again: {:?}", s.f.beside);
    }
}
