//! Who sees what: a folder is offered, sent and served only to the peers it is shared with
//! (`devices`), anything a peer sends for another folder is refused and logged once; and under
//! `trust = "network-key"` peers holding the same key join with no device IDs configured, while a
//! peer with a wrong key or none is refused at the start.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{tree, wait_until, Node};
use futures::StreamExt;
use syncnode::core::DeviceId;
use syncnode::net::dial::{dial, Outbound};
use syncnode::net::identity::Identity;
use syncnode::net::proto::{self, control_message, data_message, ControlMessage, DataMessage};

const REFUSED_UNSHARED: &str = "refused: folder not shared with this peer";
const REFUSED_KEY: &str = "refused peer: no valid network-key proof";

/// One `[[folder]]` of a test config.
struct Folder {
    id: &'static str,
    path: PathBuf,
    /// `devices = [...]`; `None` leaves the key out (every trusted peer).
    devices: Option<Vec<String>>,
}

impl Folder {
    /// A folder at `<node dir>/<id>` (the node's usual folder for "default"), created if missing.
    fn on(node: &Node, id: &'static str, devices: Option<Vec<String>>) -> Folder {
        let path = if id == "default" { node.folder.clone() } else { node.dir.join(id) };
        std::fs::create_dir_all(&path).unwrap();
        Folder { id, path, devices }
    }
}

trait Configure {
    fn configure(&mut self, folders: &[Folder], peers: &[(Option<String>, Option<String>)], security: &str);
}

impl Configure for Node {
    /// Writes the node's config with these folders (`default` first), `[[peer]]`s (device ID
    /// and/or address) and `[security]` body.
    fn configure(&mut self, folders: &[Folder], peers: &[(Option<String>, Option<String>)], security: &str) {
        let node = self;
        assert_eq!(folders[0].id, "default", "the harness's config has folder `default` first");
        node.extra.clear();
        for f in folders {
            let devices = match &f.devices {
                Some(devices) => {
                    let list: Vec<String> = devices.iter().map(|d| format!("\"{d}\"")).collect();
                    format!("devices = [{}]\n", list.join(", "))
                }
                None => String::new(),
            };
            if f.id == "default" {
                node.folder = f.path.clone();
                node.folder_keys = devices;
            } else {
                node.extra += &format!("\n[[folder]]\nid = \"{}\"\npath = \"{}\"\n{devices}", f.id, f.path.display());
            }
        }
        node.peers = peers.iter().map(|(id, address)| (id.clone().unwrap_or_default(), address.clone())).collect();
        node.security = security.into();
        node.write_config();
    }
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    std::fs::write(dir.join(rel), data).unwrap();
}

fn has(dir: &Path, rel: &str, data: &[u8]) -> bool {
    std::fs::read(dir.join(rel)).is_ok_and(|d| d == data)
}

/// Lines of `log` at WARN that contain every one of `parts`.
fn warn_lines(log: &str, parts: &[&str]) -> usize {
    log.lines().filter(|l| l.contains(" WARN ") && parts.iter().all(|p| l.contains(p))).count()
}

const LISTED: &str = "trust = \"listed\"\nnetwork_key = \"\"";

fn network_key(key: &str) -> String {
    format!("trust = \"network-key\"\nnetwork_key = \"{key}\"")
}

#[test]
fn a_folder_not_shared_with_a_peer_never_reaches_it_while_shared_folders_sync() {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    let stranger = DeviceId([9; 32]).to_string();
    // A: "default" for every trusted peer, "team" listed for B, "private" for someone else only.
    let a_private = Folder::on(&a, "private", Some(vec![stranger.clone()]));
    let a_team = Folder::on(&a, "team", Some(vec![b.device_id.clone()]));
    let (a_private_dir, a_team_dir) = (a_private.path.clone(), a_team.path.clone());
    a.configure(
        &[Folder::on(&a, "default", None), a_team, a_private],
        &[(Some(b.device_id.clone()), Some(b.address()))],
        LISTED,
    );
    // B would take "private" from A, and offers its own "private" to A.
    let b_private = Folder::on(&b, "private", None);
    let b_team = Folder::on(&b, "team", Some(vec![a.device_id.clone()]));
    let (b_private_dir, b_team_dir) = (b_private.path.clone(), b_team.path.clone());
    b.configure(
        &[Folder::on(&b, "default", None), b_team, b_private],
        &[(Some(a.device_id.clone()), Some(a.address()))],
        LISTED,
    );

    write(&a_private_dir, "secret.txt", b"A's private notes");
    write(&b_private_dir, "b-secret.txt", b"B's private notes");
    a.start();
    b.start();
    a.write("from-a.txt", b"shared by default");
    write(&a_team_dir, "plan.txt", b"shared by device list");
    b.write("from-b.txt", b"and back");

    // The shared folders sync both ways.
    assert!(
        wait_until(Duration::from_secs(20), || has(&b.folder, "from-a.txt", b"shared by default")
            && has(&b_team_dir, "plan.txt", b"shared by device list")
            && has(&a.folder, "from-b.txt", b"and back")),
        "shared folders did not sync:\nA: {:?}\nB: {:?}",
        tree(&a.folder),
        tree(&b.folder)
    );
    // A later change in a shared folder arrives too; by then the private folder has had every
    // chance to travel, and has not, in either direction.
    write(&a_team_dir, "later.txt", b"later");
    assert!(wait_until(Duration::from_secs(20), || has(&b_team_dir, "later.txt", b"later")));
    assert!(
        tree(&b_private_dir).keys().all(|k| k == "b-secret.txt"),
        "A's private folder leaked to B: {:?}",
        tree(&b_private_dir)
    );
    assert!(
        tree(&a_private_dir).keys().all(|k| k == "secret.txt"),
        "B's private folder reached A: {:?}",
        tree(&a_private_dir)
    );
    // Neither side had to refuse anything: the private folder was never offered, so never sent.
    assert_eq!(warn_lines(&a.log_text(), &[REFUSED_UNSHARED]), 0);
    assert_eq!(warn_lines(&b.log_text(), &[REFUSED_UNSHARED]), 0);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}

// ---- a peer speaking the real protocol with B's identity, to send what an honest B never would ----

fn offer(id: &str) -> proto::FolderOffer {
    proto::FolderOffer { id: id.into(), your_index_id: 0, your_max_sequence: 0, receive_only: false }
}

fn control(kind: control_message::Kind) -> ControlMessage {
    ControlMessage { kind: Some(kind) }
}

/// A valid one-chunk record of `path` holding `data`, made by `device`.
fn record(device: &DeviceId, path: &str, data: &[u8]) -> proto::FileInfo {
    let me = device.short().0;
    proto::FileInfo {
        path: path.into(),
        kind: proto::FileKind::File as i32,
        size: data.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        permissions: 0o644,
        version: Some(proto::Vector { counters: vec![proto::Counter { id: me, value: 1_700_000_000_000 }] }),
        deleted: false,
        sequence: 1,
        modified_by: me,
        chunks: vec![proto::Chunk { offset: 0, size: data.len() as u32, hash: blake3::hash(data).as_bytes().to_vec() }],
        base_sequence: 0,
        edits: Vec::new(),
        base_path: String::new(),
        link_target: String::new(),
    }
}

fn index(folder: &str, files: Vec<proto::FileInfo>) -> ControlMessage {
    control(control_message::Kind::Index(proto::IndexUpdate { folder: folder.into(), index_id: 7, files }))
}

fn chunk_request(id: u64, folder: &str, path: &str, data: &[u8]) -> DataMessage {
    let request = proto::ChunkRequest {
        id,
        folder: folder.into(),
        path: path.into(),
        offset: 0,
        size: data.len() as u32,
        hash: blake3::hash(data).as_bytes().to_vec(),
        signature: Vec::new(),
    };
    DataMessage { kind: Some(data_message::Kind::Request(request)) }
}

/// Serves A's chunk requests with `served` until both our chunk requests are answered and `done`
/// holds (the connection must stay up until A has what it asked for). Returns the answers to our
/// requests and the (folder, path) of every chunk request A sent us.
/// Answers A's chunk requests with `served` and collects A's answers to ours, until at least
/// `want` answers came and `done` holds (or 20 s pass).
async fn converse(
    out: &mut Outbound,
    served: &[u8],
    want: usize,
    done: impl Fn() -> bool,
) -> (Vec<proto::ChunkResponse>, Vec<(String, String)>) {
    let mut responses = Vec::new();
    let mut asked = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while responses.len() < want || !done() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = poll.tick() => {}
            msg = out.data.rx.next() => match msg {
                Some(Ok(DataMessage { kind: Some(data_message::Kind::Response(r)) })) => responses.push(r),
                Some(Ok(DataMessage { kind: Some(data_message::Kind::Request(r)) })) => {
                    asked.push((r.folder.clone(), r.path.clone()));
                    let response = proto::ChunkResponse { id: r.id, data: served.to_vec(), encoding: proto::Encoding::Raw as i32, ..Default::default() };
                    out.data.tx.send(DataMessage { kind: Some(data_message::Kind::Response(response)) }).await.unwrap();
                }
                _ => break,
            },
            msg = out.control.rx.next() => {
                if !matches!(msg, Some(Ok(_))) {
                    break;
                }
            }
        }
    }
    (responses, asked)
}

#[test]
fn records_and_chunk_requests_for_a_folder_not_shared_with_the_peer_are_refused_and_logged_once() {
    let mut a = Node::new("a");
    let b = Node::new("b"); // never started: its identity is what the test speaks with
    let a_private = Folder::on(&a, "private", Some(Vec::new()));
    let a_private_dir = a_private.path.clone();
    a.configure(&[Folder::on(&a, "default", None), a_private], &[(Some(b.device_id.clone()), None)], LISTED);
    a.write("mine.txt", b"A shares this");
    write(&a_private_dir, "secret.txt", b"A keeps this");
    a.start();
    // A indexes `mine.txt` once it has settled (written under a second before the start): only
    // then can it serve it.
    let (indexed, f) = a.folder_until("default", Duration::from_secs(10), |f| f["local_files"] == 1);
    assert!(indexed, "A never indexed mine.txt: {f}");

    let identity = Identity::load(&b.data_dir).unwrap();
    let device_b = identity.device_id;
    let device_a: DeviceId = a.device_id.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (responses, asked) = runtime.block_on(async {
        let mut out = None;
        for _ in 0..100 {
            match dial(&identity, Some(device_a), &a.address(), None).await {
                Ok(o) => {
                    out = Some(o);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut out = out.expect("A never accepted B's connection");
        let hello = proto::Hello {
            protocol_version: syncnode::net::PROTOCOL_VERSION,
            device_name: "b".into(),
            folders: vec![offer("default"), offer("private")],
        };
        out.control.tx.send(control(control_message::Kind::Hello(hello))).await.unwrap();
        // Records for the folder A does not share with B, three times; then one for the shared folder.
        for _ in 0..3 {
            out.control.tx.send(index("private", vec![record(&device_b, "leak.txt", b"pushed at A")])).await.unwrap();
        }
        out.control.tx.send(index("default", vec![record(&device_b, "from-b.txt", b"honest data")])).await.unwrap();
        // Chunk requests only once A has taken our Hello (it pulled the shared record): the data
        // stream is not ordered with the control stream, and a request before Hello is a
        // protocol violation.
        let (_, mut asked) =
            converse(&mut out, b"honest data", 0, || has(&a.folder, "from-b.txt", b"honest data")).await;
        out.data.tx.send(chunk_request(1, "default", "mine.txt", b"A shares this")).await.unwrap();
        out.data.tx.send(chunk_request(2, "private", "secret.txt", b"A keeps this")).await.unwrap();
        let (responses, more) = converse(&mut out, b"honest data", 2, || true).await;
        asked.extend(more);
        (responses, asked)
    });

    // Served from the shared folder; refused, with no data, from the other.
    let by_id = |id| {
        responses.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no answer to request {id}: {responses:?}"))
    };
    assert_eq!(by_id(1).code(), proto::ChunkError::None, "{:?}", by_id(1).error);
    assert!(!by_id(1).data.is_empty());
    assert!(by_id(2).data.is_empty());
    assert_eq!(by_id(2).code(), proto::ChunkError::NotShared, "{:?}", by_id(2).error);
    // A took B's record of the shared folder (it asked for its chunk), and never one of the other.
    assert!(asked.contains(&("default".into(), "from-b.txt".into())), "{asked:?}");
    assert!(asked.iter().all(|(f, _)| f == "default"), "{asked:?}");
    assert!(has(&a.folder, "from-b.txt", b"honest data"), "A did not take the shared folder's record");
    assert!(!a_private_dir.join("leak.txt").exists());
    assert!(!a.folder.join("leak.txt").exists());
    // Each refusal logged with the peer and the folder, once for the folder however often it came.
    let log = a.log_text();
    let peer = format!("peer={}", device_b.prefix());
    assert_eq!(warn_lines(&log, &[REFUSED_UNSHARED, &peer, "folder=private"]), 1, "{log}");
    assert!(log.contains("chunk request") && log.contains("index records"), "{log}");
    assert_eq!(warn_lines(&log, &[REFUSED_UNSHARED, "folder=default"]), 0);
    drop(runtime);
    assert_eq!(a.stop(), Some(0));
}

// ---- trust = "network-key" ----

#[test]
fn nodes_with_the_same_network_key_join_and_sync_without_device_ids() {
    let key = "kV7p2QmZ9xR4tL8wN3bY6cH1";
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    // A knows only its own address (as in a config listing every node's); B knows only A's address.
    a.configure(&[Folder::on(&a, "default", None)], &[(None, Some(a.address()))], &network_key(key));
    b.configure(&[Folder::on(&b, "default", None)], &[(None, Some(a.address()))], &network_key(key));
    a.start();
    b.start();
    a.write("from-a.txt", b"hello from A");
    b.write("from-b.txt", b"hello from B");
    assert!(
        wait_until(Duration::from_secs(20), || has(&b.folder, "from-a.txt", b"hello from A")
            && has(&a.folder, "from-b.txt", b"hello from B")),
        "A: {:?}\nB: {:?}",
        tree(&a.folder),
        tree(&b.folder)
    );
    // Each side learned the other's device ID from the session, not from its config.
    assert!(a.log_text().contains("peer connected") && b.log_text().contains("peer connected"));
    assert!(!a.log_text().contains(REFUSED_KEY) && !b.log_text().contains("network-key exchange failed"));
    let own = "this node's own address; not dialed";
    assert!(wait_until(Duration::from_secs(10), || a.log_text().contains(own)), "{}", a.log_text());
    assert_eq!(a.log_text().matches(own).count(), 1, "{}", a.log_text());
    // A restarts: B redials the address and the key admits it again.
    assert_eq!(a.stop(), Some(0));
    a.start();
    a.write("after-restart.txt", b"A is back");
    assert!(
        wait_until(Duration::from_secs(20), || has(&b.folder, "after-restart.txt", b"A is back")),
        "{}",
        b.log_text()
    );
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}

#[test]
fn a_peer_with_a_wrong_key_or_no_key_is_refused_at_the_start_and_logged_once() {
    let mut a = Node::new("a");
    let mut wrong = Node::new("wrong");
    let mut keyless = Node::new("keyless");
    a.configure(&[Folder::on(&a, "default", None)], &[], &network_key("the-right-key-for-this-cluster"));
    wrong.configure(
        &[Folder::on(&wrong, "default", None)],
        &[(None, Some(a.address()))],
        &network_key("a-wrong-key-for-this-cluster"),
    );
    // Under "listed", trusting A's device ID: the TLS handshake passes, then no proof comes.
    keyless.configure(
        &[Folder::on(&keyless, "default", None)],
        &[(Some(a.device_id.clone()), Some(a.address()))],
        LISTED,
    );
    a.write("a.txt", b"A's");
    wrong.write("wrong.txt", b"wrong's");
    keyless.write("keyless.txt", b"keyless's");
    a.start();
    wrong.start();
    keyless.start();

    // Both keep redialing with backoff; wait for three attempts each.
    let dial_failures = |n: &Node| n.log_text().lines().filter(|l| l.contains("dial failed")).count();
    assert!(
        wait_until(Duration::from_secs(30), || dial_failures(&wrong) >= 3 && dial_failures(&keyless) >= 3),
        "wrong: {}\nkeyless: {}",
        wrong.log_text(),
        keyless.log_text()
    );
    let log = a.log_text();
    let by = |n: &Node| format!("device={}", n.device_id);
    assert_eq!(warn_lines(&log, &[REFUSED_KEY, &by(&wrong), "different network key"]), 1, "{log}");
    assert_eq!(warn_lines(&log, &[REFUSED_KEY, &by(&keyless), "no network-key proof"]), 1, "{log}");
    assert!(!log.contains("peer connected"), "{log}");
    // The dialer with the wrong key says so once, too.
    assert_eq!(
        warn_lines(&wrong.log_text(), &["network-key exchange failed", "refused our network-key proof"]),
        1,
        "{}",
        wrong.log_text()
    );
    // Nothing crossed.
    assert_eq!(tree(&a.folder).keys().collect::<Vec<_>>(), vec!["a.txt"]);
    assert_eq!(tree(&wrong.folder).keys().collect::<Vec<_>>(), vec!["wrong.txt"]);
    assert_eq!(tree(&keyless.folder).keys().collect::<Vec<_>>(), vec!["keyless.txt"]);
    for n in [&mut a, &mut wrong, &mut keyless] {
        assert_eq!(n.stop(), Some(0));
    }
}

// ---- configuration ----

#[test]
fn bad_sharing_and_trust_settings_are_config_errors_naming_the_file_and_key() {
    let mut node = Node::new("cfg");
    let file = node.config.display().to_string();
    node.configure(&[Folder::on(&node, "default", Some(vec!["not-a-device".into()]))], &[], LISTED);
    let (code, _, err) = node.cli(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file) && err.contains("folder[0].devices[0]") && err.contains("not-a-device"), "{err}");

    node.configure(&[Folder::on(&node, "default", None)], &[], &network_key(""));
    let (code, _, err) = node.cli(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file) && err.contains("security.network_key"), "{err}");

    // A bare HOST:PORT peer needs network-key trust.
    node.configure(&[Folder::on(&node, "default", None)], &[(None, Some("127.0.0.1:9".into()))], LISTED);
    let (code, _, err) = node.cli(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&file) && err.contains("peer[0].device_id"), "{err}");
    node.configure(&[Folder::on(&node, "default", None)], &[], LISTED);
    let (code, _, err) = node.cli(&["--peer", "127.0.0.1:9"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--peer 127.0.0.1:9") && err.contains("network-key"), "{err}");
}
