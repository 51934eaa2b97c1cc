#!/usr/bin/env python3
"""Scaling probe: two syncnode processes on loopback; N files of 1 KiB (in N/100 directories) are
written into A, and the probe measures the seconds from the end of the write until B holds them
all, the peak RSS of both nodes (VmHWM), and the index bytes per file after a clean stop.

    benches/scale.py 10000 20000 40000 100000      # one line per N
    SYNCNODE=/path/to/syncnode benches/scale.py 1000000
    RESTART=1 benches/scale.py 100000              # also: restart A on its synced tree

With RESTART=1, after the sync both nodes stop cleanly and A starts again on its tree with its
index intact: "restart s" is the time until A's status answers with the folder idle (its first
full scan done), "scan ms" and "changed" come from that scan's debug line (changed 0: no file
was read again).

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


def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


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
        payload = os.urandom(1024)
        start = time.time()
        root = os.path.join(a["home"], "sync")
        for i in range(n_files):
            d = os.path.join(root, f"d{i // FILES_PER_DIR:05}")
            if i % FILES_PER_DIR == 0:
                os.mkdir(d)
            with open(os.path.join(d, f"f{i:07}"), "wb") as f:
                f.write(payload[: 1024 - 8] + i.to_bytes(8, "little"))
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
    return {
        **restart,
        "files": n_files,
        "write_s": round(written - start, 2),
        "after_write_s": round(done - written, 2),
        "rss_a_mib": rss["a"],
        "rss_b_mib": rss["b"],
        "index_bytes_per_file_b": round(index["b"] / n_files),
    }


def measure_restart(a):
    log_path = os.path.join(WORK, "a-restart.log")
    env = dict(os.environ, RUST_LOG="info,syncnode=debug")
    with open(log_path, "w") as log:
        start = time.time()
        p = subprocess.Popen([BIN, "--config", a["cfg"]], stderr=log, env=env)
        try:
            ready = None
            while time.time() - start < 600:
                try:
                    if status(a)["folders"][0]["state"] == "idle" and "full scan done" in open(log_path).read():
                        ready = time.time() - start
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            rss = hwm(p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    scan = next((l for l in open(log_path) if "full scan done" in l), "")
    field = lambda k: (scan.split(f"{k}=")[1].split()[0] if f"{k}=" in scan else "?")
    return {"restart_s": round(ready, 2) if ready else None, "restart_scan_ms": field("ms"),
            "restart_changed": field("changed"), "restart_rss_mib": rss}


def main():
    counts = [int(x) for x in sys.argv[1:]] or [10000, 20000, 40000]
    print(f"{'files':>9} {'write s':>8} {'after write s':>14} {'s per 10k':>10} {'RSS A MiB':>10} {'RSS B MiB':>10} {'index B/file':>13}"
          + (f" {'restart s':>10} {'scan ms':>8} {'changed':>8} {'RSS MiB':>8}" if os.environ.get("RESTART") else ""))
    for n in counts:
        r = run(n)
        print(f"{r['files']:>9} {r['write_s']:>8} {r['after_write_s']:>14} {r['after_write_s'] * 10000 / n:>10.2f} {r['rss_a_mib']:>10} {r['rss_b_mib']:>10} {r['index_bytes_per_file_b']:>13}"
              + (f" {r['restart_s']:>10} {r['restart_scan_ms']:>8} {r['restart_changed']:>8} {r['restart_rss_mib']:>8}" if r.get("restart_rss_mib") is not None else ""), flush=True)


if __name__ == "__main__":
    main()
