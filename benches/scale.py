#!/usr/bin/env python3
"""Scaling probe: two syncnode processes on loopback; N files of 1 KiB (in N/100 directories) are
written into A, and the probe measures the seconds from the end of the write until B holds them
all, the peak RSS of both nodes (VmHWM), and the index bytes per file after a clean stop.

    benches/scale.py 10000 20000 40000 100000      # one line per N
    SYNCNODE=/path/to/syncnode benches/scale.py 1000000
    RESTART=1 benches/scale.py 100000              # also: restart A on its synced tree
    INDEXING=1 DROP_CACHES=1 benches/scale.py 1000000   # also: B indexes its tree from nothing
    DROP_CACHES=1 benches/scale.py --alone 1000000      # one node: index a tree, then restart on it

With RESTART=1, after the sync both nodes stop cleanly and A starts again on its tree with its
index intact: "restart s" is the time until A's status says its first full scan is done and the
folder idle, "scan ms" how long that scan took (what a periodic rescan of the unchanged tree
costs), "hashed" the files it read again (0), "idle MiB" its RSS 5 s later.
With INDEXING=1, B then starts on its tree with an empty index (DROP_CACHES=1, as root: with a
cold page cache): seconds until indexed, files/s, MB/s hashed, and peak RSS.

Stdlib only. Scratch data goes to $SCALE_WORK (default /tmp/syncnode-scale), removed per run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

BIN = os.environ.get("SYNCNODE") or os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/cache/syncnode/target"), "release/syncnode")
WORK = os.environ.get("SCALE_WORK", "/tmp/syncnode-scale")
FILES_PER_DIR = 100


def init(name, port, api, peer_id=None, peer_port=None):
    home = os.path.join(WORK, name)
    os.makedirs(home, exist_ok=True)
    cfg = os.path.join(home, "node.toml")
    out = subprocess.run([BIN, "init", "--config", cfg, "--sync-folder", os.path.join(home, "sync")], check=True, capture_output=True, text=True)
    return {"name": name, "home": home, "cfg": cfg, "id": out.stdout.strip(), "port": port, "api": api}


def write_config(n, peer):
    with open(n["cfg"], "w") as f:
        f.write(f"""[node]
name = "{n['name']}"
data_dir = "{n['home']}/node-data"
listen = "127.0.0.1:{n['port']}"
api_listen = "127.0.0.1:{n['api']}"

[[folder]]
id = "default"
path = "{n['home']}/sync"

[sync]
rescan_interval = "1h"

[discovery]
mdns = false

[[peer]]
device_id = "{peer['id']}"
address = "127.0.0.1:{peer['port']}"
""")


def status(n):
    with urllib.request.urlopen(f"http://127.0.0.1:{n['api']}/rest/status", timeout=5) as r:
        return json.load(r)


def proc_mib(pid, field):
    """A memory line of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def hwm(pid):
    return proc_mib(pid, "VmHWM")


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def write_tree(root, n_files):
    """N distinct files of 1 KiB in N/100 directories under `root`."""
    payload = os.urandom(1024)
    for i in range(n_files):
        d = os.path.join(root, f"d{i // FILES_PER_DIR:05}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07}"), "wb") as f:
            f.write(payload[: 1024 - 8] + i.to_bytes(8, "little"))


def run(n_files):
    shutil.rmtree(WORK, ignore_errors=True)
    a, b = init("a", 27411, 28411), init("b", 27412, 28412)
    write_config(a, b)
    write_config(b, a)
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    logs = {n["name"]: open(os.path.join(WORK, n["name"] + ".log"), "w") for n in (a, b)}
    procs = {n["name"]: subprocess.Popen([BIN, "--config", n["cfg"]], stderr=logs[n["name"]], env=env) for n in (a, b)}
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if any(p["connected"] for p in status(a)["peers"]):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        start = time.time()
        write_tree(os.path.join(a["home"], "sync"), n_files)
        written = time.time()
        timeout = 60 + n_files / 100
        while time.time() - written < timeout:
            try:
                f = status(b)["folders"][0]
                if f["local_files"] >= n_files + n_files // FILES_PER_DIR and f["need_files"] == 0:
                    break
            except OSError:
                pass
            time.sleep(0.2 if n_files < 100000 else 1)
        done = time.time()
        rss = {k: hwm(p.pid) for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(timeout=60)
    index = {n["name"]: du(os.path.join(n["home"], "node-data", "index")) for n in (a, b)}
    restart = measure_restart(a) if os.environ.get("RESTART") else {}
    indexing = measure_indexing(b, n_files) if os.environ.get("INDEXING") else {}
    return {
        **restart,
        **indexing,
        "files": n_files,
        "write_s": round(written - start, 2),
        "after_write_s": round(done - written, 2),
        "rss_a_mib": rss["a"],
        "rss_b_mib": rss["b"],
        "index_bytes_per_file_b": round(index["b"] / n_files),
    }


def rss_now(pid):
    return proc_mib(pid, "VmRSS")


def start_alone(n, log_name):
    """Starts `n` on its tree and waits until its first full scan is done and the folder is idle;
    returns the seconds that took, the folder's status then, and the peak and settled RSS."""
    with open(os.path.join(WORK, log_name), "w") as log:
        start = time.time()
        p = subprocess.Popen([BIN, "--config", n["cfg"]], stderr=log, env=dict(os.environ, RUST_LOG="info"))
        try:
            ready, f = None, {}
            while time.time() - start < 3600:
                try:
                    f = status(n)["folders"][0]
                    if f.get("full_scans", 0) >= 1 and f["state"] == "idle":
                        ready = time.time() - start
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            time.sleep(5)  # settled: what an idle node holds
            return ready, f, hwm(p.pid), rss_now(p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)


def measure_restart(a):
    """A restarts on its synced tree with its index intact: ready when its first full scan is
    done (that scan is what a periodic rescan of the unchanged tree costs); nothing is read again."""
    ready, f, peak, idle = start_alone(a, "a-restart.log")
    return {"restart_s": round(ready, 2) if ready else None, "restart_scan_ms": f.get("last_full_scan_ms"),
            "restart_hashed": f.get("hashed_files"), "restart_rss_mib": peak, "idle_rss_mib": idle}


def measure_indexing(b, n_files):
    """B starts on its synced tree with an empty index (and, as root with DROP_CACHES=1, a cold
    page cache): how fast it indexes the tree."""
    shutil.rmtree(os.path.join(b["home"], "node-data"), ignore_errors=True)
    if os.environ.get("DROP_CACHES") == "1":
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    ready, f, peak, _ = start_alone(b, "b-index.log")
    return {"index_s": round(ready, 2) if ready else None, "index_files_per_s": round(n_files / ready) if ready else None,
            "index_mb_per_s": round(f.get("hashed_bytes", 0) / 1e6 / ready, 1) if ready else None,
            "index_hashed": f.get("hashed_files"), "index_rss_mib": peak}


def alone(n_files):
    """One node, no peer: N files written into its folder before it first starts (indexed from
    an empty index), then a restart on the unchanged tree with the index intact."""
    shutil.rmtree(WORK, ignore_errors=True)
    a = init("a", 27411, 28411)
    write_config(a, {"id": init("b", 27412, 28412)["id"], "port": 27412})
    write_tree(os.path.join(a["home"], "sync"), n_files)
    if os.environ.get("DROP_CACHES") == "1":
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    ready, f, peak, idle = start_alone(a, "a-index.log")
    index = du(os.path.join(a["home"], "node-data", "index"))
    restart = measure_restart(a)
    print(f"{n_files} files: indexed in {ready:.2f} s = {n_files / ready:.0f} files/s, "
          f"{f.get('hashed_bytes', 0) / 1e6 / ready:.1f} MB/s hashed ({f.get('hashed_files')} files), "
          f"peak RSS {peak} MiB, idle {idle} MiB, index {index / n_files:.0f} B/file; restart: ready in "
          f"{restart['restart_s']} s, its full scan {restart['restart_scan_ms']} ms, {restart['restart_hashed']} files "
          f"read again, peak RSS {restart['restart_rss_mib']} MiB, idle {restart['idle_rss_mib']} MiB", flush=True)


def main():
    if sys.argv[1:2] == ["--alone"]:
        for n in [int(x) for x in sys.argv[2:]]:
            alone(n)
        return
    counts = [int(x) for x in sys.argv[1:]] or [10000, 20000, 40000]
    cols = [("files", "files", 9), ("write_s", "write s", 8), ("after_write_s", "after write s", 14),
            ("per_10k", "s per 10k", 10), ("rss_a_mib", "RSS A MiB", 10), ("rss_b_mib", "RSS B MiB", 10),
            ("index_bytes_per_file_b", "index B/file", 13)]
    if os.environ.get("RESTART"):
        cols += [("restart_s", "restart s", 10), ("restart_scan_ms", "scan ms", 8), ("restart_hashed", "hashed", 7),
                 ("restart_rss_mib", "RSS MiB", 8), ("idle_rss_mib", "idle MiB", 9)]
    if os.environ.get("INDEXING"):
        cols += [("index_s", "index s", 8), ("index_files_per_s", "files/s", 8), ("index_mb_per_s", "MB/s", 6),
                 ("index_hashed", "hashed", 8), ("index_rss_mib", "RSS MiB", 8)]
    print(" ".join(f"{title:>{w}}" for _, title, w in cols))
    for n in counts:
        r = run(n)
        r["per_10k"] = round(r["after_write_s"] * 10000 / n, 2)
        print(" ".join(f"{str(r.get(k)):>{w}}" for k, _, w in cols), flush=True)


if __name__ == "__main__":
    main()
