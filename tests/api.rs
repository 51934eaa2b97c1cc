//! The local HTTP API and `syncnode status`, against real running nodes: `GET /rest/status` (shape
//! and values), `GET /metrics` (Prometheus text agreeing with the status), the status command's
//! table and JSON, and its clear failure when no node runs.
//!
//! The status is read with the harness's client (`Node::status`, the one the status command uses);
//! `/metrics` and the page are fetched by hand over `std::net::TcpStream` (HTTP/1.1, `Connection:
//! close`), so that their headers and framing are checked too.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// A minimal HTTP/1.1 GET: status code, headers (lower-cased names), body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, BTreeMap<String, String>, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    } else if let Some(len) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        assert_eq!(body.len(), len, "{path}: body length differs from Content-Length");
    }
    Ok((code, headers, String::from_utf8(body).expect("UTF-8 body")))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).split(';').next().unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// The OpenMetrics text format, parsed strictly enough to catch a malformed exposition: every
/// sample belongs to a family announced by `# TYPE` (a counter's samples end in `_total`), every
/// value is a number, and the text ends with `# EOF`. Keys are the sample name with its labels as
/// written (`{}` and no braces are the same thing).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut families = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF at the end");
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad TYPE line {line:?}");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line == "# EOF" {
            assert!(text.trim_end().ends_with("# EOF"), "# EOF before the end");
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line.starts_with("# UNIT "), "unexpected comment {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value is not a number in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name in {line:?}");
        let family = match name.strip_suffix("_total") {
            Some(counter) if families.get(counter).is_some_and(|k| k == "counter") => counter,
            _ => name,
        };
        assert!(families.contains_key(family), "sample {name} without a # TYPE line");
        let key = series.strip_suffix("{}").unwrap_or(series).to_string();
        if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}') && labels.contains("=\""),
                "bad labels in {line:?}"
            );
        }
        assert!(samples.insert(key, value).is_none(), "duplicate sample in {line:?}");
    }
    samples
}

fn metrics(port: u16) -> Option<BTreeMap<String, f64>> {
    let (code, headers, body) = http_get(port, "/metrics").ok()?;
    assert_eq!(code, 200);
    assert!(
        headers.get("content-type").is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "metrics content type: {headers:?}"
    );
    Some(parse_metrics(&body))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an unsigned number: {v}"))
}

/// Two connected nodes; `a` holds three files and `b` has pulled them.
fn synced_pair() -> Vec<Node> {
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    a.write("one.txt", b"one\n");
    a.write("two.txt", b"two two\n");
    a.write("three.bin", &random_bytes(300_000, 3));
    assert!(converged(&[a, b], T, |t| t.len() == 3), "no sync:\n{}", describe(&[a, b]));
    nodes
}

#[test]
fn rest_status_and_metrics_describe_two_connected_nodes() {
    let started = Instant::now();
    let nodes = synced_pair();
    let (a, b) = (&nodes[0], &nodes[1]);

    let (code, out, err) = a.cli(&["id"]);
    assert_eq!(code, 0, "{err}");
    let printed_id = out.trim().to_string();
    assert_eq!(printed_id, a.device_id);

    // Both sides settle: files counted, nothing needed, the peer connected with traffic counted.
    for (me, peer) in [(a, b), (b, a)] {
        let (ok, s) = me.status_until(T, |s| {
            let f = &s["folders"][0];
            let p = &s["peers"][0];
            f["local_files"] == 3
                && f["need_files"] == 0
                && f["state"] == "idle"
                && p["connected"] == true
                && p["name"] == peer.name.as_str()
                && p["bytes_in"].as_u64().unwrap_or(0) > 0
                && p["bytes_out"].as_u64().unwrap_or(0) > 0
        });
        assert!(ok, "{}: status never settled: {s:#}", me.name);

        // The shape the contract fixes, with the values we know.
        let expected_id = if me.name == "a" { &printed_id } else { &me.device_id };
        assert_eq!(s["device_id"], expected_id.as_str());
        assert_eq!(s["name"], me.name.as_str());
        let folders = s["folders"].as_array().expect("folders[]");
        assert_eq!(folders.len(), 1);
        let f = &folders[0];
        assert_eq!(f["id"], "default");
        assert_eq!(f["path"], me.folder.display().to_string().as_str());
        assert_eq!(u(&f["need_bytes"]), 0);
        assert_eq!(u(&f["local_bytes"]), 4 + 8 + 300_000);
        let peers = s["peers"].as_array().expect("peers[]");
        assert_eq!(peers.len(), 1, "{s:#}");
        let p = &peers[0];
        assert_eq!(p["device_id"], peer.device_id.as_str());
        assert!(p["address"].as_str().expect("address").starts_with("127.0.0.1:"), "{p}");
        // b pulled the big file, so its received bytes are at least that much (compression cannot
        // shrink random data).
        if me.name == "b" {
            assert!(u(&p["bytes_in"]) >= 300_000, "b received only {} bytes", p["bytes_in"]);
            assert!(u(&f["pulls"]) >= 3, "{f}");
        }
    }

    // /metrics agrees with /rest/status.
    for me in [a, b] {
        let mut last = BTreeMap::new();
        let ok = wait_until(T, || {
            let Some(m) = metrics(me.api_port) else { return false };
            let good = m.get("syncnode_peers_connected") == Some(&1.0)
                && m.get("syncnode_folder_files{folder=\"default\"}") == Some(&3.0)
                && m.get("syncnode_folder_need_files{folder=\"default\"}") == Some(&0.0);
            last = m;
            good
        });
        assert!(ok, "{}: metrics never matched: {last:#?}", me.name);
        let s = me.status().unwrap();
        assert_eq!(last["syncnode_folder_bytes{folder=\"default\"}"], u(&s["folders"][0]["local_bytes"]) as f64);
        assert_eq!(last["syncnode_reused_bytes_total{folder=\"default\"}"], u(&s["folders"][0]["bytes_reused"]) as f64);
        assert_eq!(
            last["syncnode_wire_saved_bytes_total{folder=\"default\"}"],
            u(&s["folders"][0]["bytes_saved_on_wire"]) as f64
        );
        let other = if me.name == "a" { b } else { a };
        let bytes_in = last[&format!("syncnode_peer_bytes_in_total{{peer=\"{}\"}}", other.device_id)];
        let bytes_out = last[&format!("syncnode_peer_bytes_out_total{{peer=\"{}\"}}", other.device_id)];
        assert!(bytes_in > 0.0 && bytes_out > 0.0, "{}: {bytes_in} in, {bytes_out} out", me.name);
    }

    // The status page is served too.
    let (code, headers, body) = http_get(a.api_port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(headers["content-type"].starts_with("text/html"));
    assert!(body.contains("/rest/status"));
    eprintln!("api test took {:?}", started.elapsed());
}

#[test]
fn status_command_prints_a_table_and_json() {
    let nodes = synced_pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    let (ok, s) = a.status_until(T, |s| s["peers"][0]["connected"] == true && s["peers"][0]["name"] == "b");
    assert!(ok, "{s:#}");

    let (code, table, err) = a.cli(&["status"]);
    assert_eq!(code, 0, "status failed: {err}");
    eprintln!("{table}");
    assert!(table.contains(&a.device_id), "{table}");
    let folder_row =
        table.lines().find(|l| l.starts_with("default")).unwrap_or_else(|| panic!("no folder row:\n{table}"));
    assert!(folder_row.contains(&a.folder.display().to_string()), "{folder_row}");
    assert!(folder_row.split_whitespace().nth(2) == Some("3"), "3 files expected: {folder_row}");
    let peer_row = table.lines().find(|l| l.contains(&b.device_id)).unwrap_or_else(|| panic!("no peer row:\n{table}"));
    assert!(peer_row.starts_with("b ") && peer_row.contains("connected"), "{peer_row}");

    let (code, out, err) = a.cli(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).expect("status --json prints JSON");
    assert_eq!(json["device_id"], a.device_id.as_str());
    assert_eq!(json["name"], "a");
    assert_eq!(json["peers"][0]["device_id"], b.device_id.as_str());
    assert_eq!(json["folders"][0]["path"], a.folder.display().to_string().as_str());
}

#[test]
fn status_command_without_a_node_fails_clearly() {
    let node = Node::new("lonely"); // configured, never started
    let started = Instant::now();
    let (code, stdout, stderr) = node.cli(&["status"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no node is running"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{}", node.api_port)), "the message names the address: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty());
    let (code, _, stderr) = node.cli(&["status", "--json"]);
    assert!(code != 0 && stderr.contains("no node is running"));
    assert!(started.elapsed() < Duration::from_secs(10), "status took {:?} to give up", started.elapsed());
}

/// While a file is being pulled it is still needed: `need_bytes` must count it, as `need_files`
/// does (the puller's `update_gauges` counts the files in flight in both).
#[test]
fn need_bytes_counts_the_file_being_pulled() {
    const BIG: u64 = 256 << 20;
    let nodes = pair();
    let (a, b) = (&nodes[0], &nodes[1]);
    assert!(a.status_until(T, |s| s["peers"][0]["connected"] == true).0);
    let staged = b.dir.join("big.staging");
    std::fs::write(&staged, random_bytes(BIG as usize, 9)).unwrap();
    std::fs::rename(&staged, b.path("big.bin")).unwrap();
    let mut samples = Vec::new();
    let done = wait_until(T, || {
        let Some(s) = a.status() else { return false };
        let f = &s["folders"][0];
        if u(&f["need_files"]) > 0 {
            samples.push((u(&f["need_files"]), u(&f["need_bytes"]), u(&f["current_done"])));
        }
        f["local_files"] == 1 && f["need_files"] == 0
    });
    assert!(done, "the pull did not finish");
    assert!(!samples.is_empty(), "the pull was never seen in progress");
    let wrong: Vec<_> = samples.iter().filter(|(_, bytes, _)| *bytes == 0).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} samples during the pull say need_bytes 0: (need_files, need_bytes, current_done) {:?}",
        wrong.len(),
        samples.len(),
        &wrong[..wrong.len().min(5)]
    );
}
