//! The status page (`GET /`) in a real headless Chromium, driven over the WebDriver protocol
//! (chromedriver, spoken with plain std TcpStream JSON requests): the page shows the connected
//! peer, follows a folder from idle to syncing (a large file being pulled) and back with one file
//! more, and says so when the node goes away. It also takes the screenshot in the docs.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/setup.sh installs them).
//! The screenshot is written to `$CARGO_TARGET_TMPDIR/status-page.png`; with
//! `UPDATE_STATUS_SCREENSHOT=1` also to `docs/status-page.png` (not `SYNCNODE_...`: the nodes
//! would refuse that as an unknown config key from the environment).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);
/// Large enough that pulling it takes a few page refreshes.
const BIG: usize = 256 << 20;

/// One HTTP/1.1 request with an optional JSON body; the status code and the JSON answer.
/// chromedriver keeps the connection open despite `Connection: close`, so the body is read by its
/// Content-Length (or its chunks), not to the end of the stream.
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content = if method == "POST" {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{content}Connection: close\r\n\r\n{body}")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut more = |raw: &mut Vec<u8>| -> std::io::Result<()> {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
        Ok(())
    };
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        more(&mut raw)?;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim().to_string()))
    };
    let data = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while raw.len() < split + 4 + len {
            more(&mut raw)?;
        }
        raw[split + 4..split + 4 + len].to_vec()
    } else if header("transfer-encoding").is_some_and(|v| v == "chunked") {
        let mut out = Vec::new();
        let mut at = split + 4;
        loop {
            let Some(eol) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
                more(&mut raw)?;
                continue;
            };
            let n = usize::from_str_radix(
                String::from_utf8_lossy(&raw[at..at + eol]).split(';').next().unwrap().trim(),
                16,
            )
            .map_err(std::io::Error::other)?;
            if n == 0 {
                break;
            }
            while raw.len() < at + eol + 2 + n + 2 {
                more(&mut raw)?;
            }
            out.extend_from_slice(&raw[at + eol + 2..at + eol + 2 + n]);
            at += eol + 2 + n + 2;
        }
        out
    } else {
        while more(&mut raw).is_ok() {}
        raw[split + 4..].to_vec()
    };
    let value =
        if data.is_empty() { Value::Null } else { serde_json::from_slice(&data).map_err(std::io::Error::other)? };
    Ok((code, value))
}

fn find_program(name: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// chromedriver and one headless Chromium session; both go away on drop, pass or fail.
struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
}

impl Browser {
    fn start() -> Browser {
        let (Some(driver), Some(chromium)) = (find_program("chromedriver"), find_program("chromium")) else {
            panic!("chromium and chromedriver are needed: run scripts/setup.sh (it installs the Debian packages chromium and chromium-driver)");
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut browser = Browser { driver: child, port, session: None };
        assert!(
            wait_until(T, || request(port, "GET", "/status", None).is_ok_and(|(_, v)| v["value"]["ready"] == true)),
            "chromedriver did not get ready on port {port}"
        );
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1200,700", "--hide-scrollbars", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let (code, v) = request(port, "POST", "/session", Some(&caps)).expect("new session");
        assert_eq!(code, 200, "cannot start chromium: {v}");
        browser.session = Some(v["value"]["sessionId"].as_str().expect("sessionId").to_string());
        browser
    }

    fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session.as_ref().unwrap());
        let (code, v) =
            request(self.port, method, &path, body.as_ref()).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "url", Some(json!({ "url": url })));
    }

    /// A viewport of exactly this size (a window size would include the browser's own frame).
    fn viewport(&self, width: u32, height: u32) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.command(
            "POST",
            "goog/cdp/execute",
            Some(json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": params })),
        );
    }

    /// What the page shows now, read from its DOM (as its own once-a-second refresh left it).
    fn page(&self) -> Value {
        let script = format!("{READ_PAGE}\nreturn readPage();");
        self.command("POST", "execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Makes the page run its refresh (fetch /rest/status, re-render) now, then reads it: samples
    /// a short-lived state far more often than the page's own 1 s timer would.
    fn page_refreshed(&self) -> Value {
        let script = format!(
            "{READ_PAGE}\nconst done = arguments[arguments.length - 1];\nrefresh().then(() => done(readPage()), e => done({{ failed: String(e) }}));"
        );
        self.command("POST", "execute/async", Some(json!({ "script": script, "args": [] })))
    }

    fn screenshot_png(&self) -> Vec<u8> {
        let b64 = self.command("GET", "screenshot", None);
        data_encoding::BASE64.decode(b64.as_str().expect("base64 screenshot").as_bytes()).expect("valid base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = request(self.port, "DELETE", &format!("/session/{s}"), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads the rendered tables: folder rows carry data-folder and data-state, peer rows data-peer
/// and data-connected (src/api/page.html).
const READ_PAGE: &str = r#"
function readPage() {
  const rows = sel => [...document.querySelectorAll(sel)];
  const cells = tr => [...tr.cells].map(c => c.textContent);
  return {
    title: document.getElementById("name").textContent,
    device: document.getElementById("device").textContent,
    error: document.getElementById("err").textContent,
    folders: rows("tr[data-folder]").map(tr => ({ id: tr.dataset.folder, state: tr.dataset.state, cells: cells(tr),
                                                 progress: tr.cells[6] ? tr.cells[6].title : "" })),
    peers: rows("tr[data-peer]").map(tr => ({ id: tr.dataset.peer, connected: tr.dataset.connected, cells: cells(tr) })),
  };
}
"#;

/// (width, height) from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR", "not a PNG");
    (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()))
}

#[test]
fn status_page_shows_the_peer_and_follows_a_folder_through_a_sync() {
    let started = Instant::now();
    let mut nodes = Cluster::new(&["alpha", "beta"], &[(0, 1)]).start();
    {
        let (alpha, beta) = (&nodes[0], &nodes[1]);
        alpha.write("readme.txt", b"hello from alpha\n");
        alpha.write("notes/todo.txt", &random_bytes(40_000, 7));
        assert!(converged(&[alpha, beta], T, |t| t.len() == 3), "{}", describe(&[alpha, beta]));
    }
    let (alpha, beta) = (&nodes[0], &nodes[1]);

    let browser = Browser::start();
    browser.viewport(1200, 700);
    browser.open(&format!("http://127.0.0.1:{}/", alpha.api_port));
    eprintln!("browser up after {:?}", started.elapsed());

    // The peer is shown connected, the folder idle with its three records.
    let mut page = Value::Null;
    let shown = wait_until(T, || {
        page = browser.page();
        let (f, p) = (&page["folders"][0], &page["peers"][0]);
        p["id"] == beta.device_id.as_str() && p["connected"] == "true" && f["state"] == "idle" && f["cells"][3] == "3"
    });
    assert!(shown, "the page never showed the connected peer: {page:#}");
    assert_eq!(page["title"], "syncnode · alpha");
    assert_eq!(page["device"], alpha.device_id.as_str());
    assert_eq!(page["error"], "");
    assert_eq!(page["folders"].as_array().unwrap().len(), 1);
    let f = &page["folders"][0];
    assert_eq!(f["id"], "default");
    assert_eq!(f["cells"][1], alpha.folder.display().to_string().as_str());
    assert_eq!(f["cells"][2], "idle");
    let p = &page["peers"][0];
    assert_eq!(p["cells"][0], "beta");
    assert_eq!(p["cells"][1], &beta.device_id[..7]);
    assert_eq!(p["cells"][3], "connected");

    // A file added on alpha: the page, refreshing itself, counts it.
    alpha.write("notes/plan.txt", b"sync all the things\n");
    let counted = wait_until(T, || {
        page = browser.page();
        page["folders"][0]["cells"][3] == "4"
    });
    assert!(counted, "the page never counted the new file: {page:#}");

    // A large file appears on beta (renamed in whole); alpha's page goes syncing, then idle again
    // with one file more. The pull takes about a second here, as long as one tick of the page's
    // timer, so the page is made to refresh on every sample.
    let staged = beta.dir.join("big.staging");
    std::fs::write(&staged, random_bytes(BIG, 42)).unwrap();
    std::fs::rename(&staged, beta.path("big.bin")).unwrap();
    let written = Instant::now();
    let mut states: Vec<String> = Vec::new();
    let mut syncing_shot: Option<(Vec<u8>, Value)> = None;
    let done = wait_until(Duration::from_secs(45), || {
        page = browser.page_refreshed();
        let f = &page["folders"][0];
        let state = f["state"].as_str().unwrap_or("?").to_string();
        if states.last() != Some(&state) {
            eprintln!("{:>6} ms: {state} {}", written.elapsed().as_millis(), f["cells"]);
            states.push(state.clone());
        }
        // The doc screenshot: mid-pull, with the progress bar partly filled.
        let percent: u32 = f["progress"].as_str().and_then(|p| p.trim_end_matches('%').parse().ok()).unwrap_or(0);
        if state == "syncing" && syncing_shot.is_none() && (10..=90).contains(&percent) {
            syncing_shot = Some((browser.screenshot_png(), page.clone()));
        }
        state == "idle"
            && f["cells"][3] == "5"
            && std::fs::metadata(alpha.path("big.bin")).is_ok_and(|m| m.len() == BIG as u64)
    });
    assert!(done, "the page never showed the pulled file: {page:#}\nstates {states:?}\n{}", describe(&[alpha, beta]));
    eprintln!("pulled and shown after {:?}; states {states:?}", written.elapsed());
    assert!(states.iter().any(|s| s == "syncing"), "the page never showed the folder syncing: {states:?}");
    assert_eq!(states.last().map(String::as_str), Some("idle"));
    assert_eq!(page["peers"][0]["connected"], "true");

    // Screenshot: mid-pull if we caught one, else now.
    let (png, shown) = syncing_shot.unwrap_or_else(|| (browser.screenshot_png(), page.clone()));
    assert_eq!(shown["peers"][0]["connected"], "true", "the screenshot shows a connected peer");
    let (w, h) = png_size(&png);
    assert_eq!((w, h), (1200, 700), "screenshot size");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot ({w}x{h}, folder {}): {}", shown["folders"][0]["state"], out.display());
    if std::env::var_os("UPDATE_STATUS_SCREENSHOT").is_some_and(|v| v == "1") {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(&doc, &png).unwrap();
        eprintln!("updated {}", doc.display());
    }

    // The node goes away: the page says so instead of showing stale numbers as live.
    nodes[0].stop();
    let gone = wait_until(T, || {
        page = browser.page();
        page["error"].as_str().is_some_and(|e| e.contains("node not reachable"))
    });
    assert!(gone, "the page did not notice the node stopped: {page:#}");
    eprintln!("test took {:?}", started.elapsed());
}

/// Kept versions on the page: a file deleted on alpha is listed on beta's page (who deleted it,
/// its size), and its Restore button brings it back on both nodes.
#[test]
fn status_page_lists_kept_versions_and_restores_one() {
    let nodes = Cluster::new(&["alpha", "beta"], &[(0, 1)]).start();
    let (alpha, beta) = (&nodes[0], &nodes[1]);
    alpha.write("report.txt", b"quarterly numbers\n");
    assert!(converged(&[alpha, beta], T, |t| t.contains_key("report.txt")), "{}", describe(&[alpha, beta]));
    std::fs::remove_file(alpha.path("report.txt")).unwrap();
    assert!(converged(&[alpha, beta], T, |t| t.is_empty()), "{}", describe(&[alpha, beta]));

    let browser = Browser::start();
    browser.open(&format!("http://127.0.0.1:{}/", beta.api_port));
    let script = |s: &str| browser.command("POST", "execute/sync", Some(json!({ "script": s, "args": [] })));
    let read =
        "return [...document.querySelectorAll('tr[data-version]')].map(tr => [...tr.cells].map(c => c.textContent));";
    let mut rows = Value::Null;
    let listed = wait_until(T, || {
        rows = script(read);
        rows.as_array().is_some_and(|r| r.len() == 1)
    });
    assert!(listed, "the page never listed the kept version: {rows:#}");
    let row = &rows[0];
    assert_eq!(
        (row[0].as_str(), row[1].as_str(), row[3].as_str(), row[4].as_str()),
        (Some("default"), Some("report.txt"), Some("18 B"), Some("deleted"))
    );
    assert_eq!(row[5], &alpha.device_id[..7]);

    script("document.querySelector('tr[data-version] button.restore').click();");
    assert!(converged(&[alpha, beta], T, |t| t.contains_key("report.txt")), "{}", describe(&[alpha, beta]));
    assert_eq!(std::fs::read(alpha.path("report.txt")).unwrap(), b"quarterly numbers\n");
    let mut message = Value::Null;
    let told = wait_until(T, || {
        message = script("return document.getElementById('versions-msg').textContent;");
        rows = script(read);
        message.as_str().is_some_and(|m| m.contains("restored report.txt"))
            && rows.as_array().is_some_and(|r| r.is_empty())
    });
    assert!(told, "the page did not report the restore: {message} {rows:#}");
}
