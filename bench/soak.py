#!/usr/bin/env python3
"""A soak of a small cluster under mixed load and repeated SIGKILLs; run by bench/soak.sh.

A tracker, a two-node group and a live role (recording into the group) run as child
processes. For MINUTES, real clients load them: `sluice upload`, `sluice download` and
`sluice delete` through the tracker, ffmpeg publishing live streams and ffmpeg players over
RTMP and HTTP-FLV. Every KILL_EVERY seconds one storage node (in turn) is SIGKILLed and started
again on the same data after a pause. At the end, with both nodes back and caught up, every
file is checked on both nodes: acknowledged files must be whole on both, deleted ones gone from
both. The report counts acknowledged, lost, corrupted, missing on a replica and resurrected
files, the clients' failures by cause, and the largest RSS of each process.
"""

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SECRET = "soak-cluster-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=30, headers=None):
    """(status, body); status 0 when the server could not be reached."""
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_until(what, timeout, check, pause=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(pause)
    raise SystemExit(f"soak: timed out waiting for {what}")


class Proc:
    """A child process of a role, restartable on the same arguments, whose RSS is sampled."""

    def __init__(self, name, args, work):
        self.name, self.args, self.work = name, args, work
        self.popen = None
        self.max_rss_kib = 0
        self.starts = 0

    def start(self):
        log = open(os.path.join(self.work, f"{self.name}.log"), "ab")
        env = dict(os.environ, SLUICE_CLUSTER_SECRET=SECRET)
        self.popen = subprocess.Popen(self.args, stdout=log, stderr=log, env=env)
        self.starts += 1

    def kill9(self):
        self.sample_rss()
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def stop(self):
        if self.popen and self.popen.poll() is None:
            self.sample_rss()
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()

    def sample_rss(self):
        """The process's peak RSS so far (VmHWM), kept across restarts."""
        if not self.popen or self.popen.poll() is not None:
            return
        try:
            with open(f"/proc/{self.popen.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.max_rss_kib = max(self.max_rss_kib, int(line.split()[1]))
        except OSError:
            pass


class Ledger:
    """What clients were told: the ground truth the final check compares the cluster with."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.acked = {}  # fileid -> sha256 hex
        self.deleted = set()
        self.uncertain = set()  # a delete that failed: either state is right
        self.busy = set()  # being deleted now: not read
        self.counts = collections.Counter()
        self.errors = collections.Counter()
        self.journal = open(path, "a")

    def note(self, event, **fields):
        with self.lock:
            self.journal.write(json.dumps(dict(event=event, t=time.time(), **fields)) + "\n")
            self.journal.flush()

    def count(self, what, error=None):
        with self.lock:
            self.counts[what] += 1
            if error:
                self.errors[f"{what}: {error[:160]}"] += 1

    def readable(self):
        with self.lock:
            ids = [i for i in self.acked if i not in self.deleted and i not in self.uncertain and i not in self.busy]
        return random.choice(ids) if ids else None


def first_line(text):
    lines = [l for l in text.decode(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no message"


def uploader(ctx, seed):
    rng = random.Random(seed)
    pause = 1.0 / ctx.args.upload_rate * ctx.args.uploaders
    while not ctx.stop.is_set():
        began = time.monotonic()
        size = rng.choice([rng.randint(1, 200_000)] * 9 + [rng.randint(1_000_000, 8_000_000)])
        body = os.urandom(size)
        path = os.path.join(ctx.scratch, f"up-{seed}")
        with open(path, "wb") as f:
            f.write(body)
        try:
            out = subprocess.run(
                [ctx.sluice, "upload", "--tracker", ctx.tracker_url, path],
                capture_output=True, timeout=120)
            fileid = out.stdout.decode().strip()
            if out.returncode == 0 and fileid:
                digest = hashlib.sha256(body).hexdigest()
                with ctx.ledger.lock:
                    ctx.ledger.acked[fileid] = digest
                ctx.ledger.note("acked", fileid=fileid, sha256=digest, size=size)
                ctx.ledger.count("upload ok")
            else:
                ctx.ledger.count("upload failed", first_line(out.stderr))
        except subprocess.TimeoutExpired:
            ctx.ledger.count("upload failed", "timed out after 120 s")
        ctx.stop.wait(max(0.0, pause - (time.monotonic() - began)))


def reader(ctx, seed):
    rng = random.Random(seed)
    while not ctx.stop.is_set():
        fileid = ctx.ledger.readable()
        if fileid is None:
            ctx.stop.wait(0.2)
            continue
        try:
            out = subprocess.run(
                [ctx.sluice, "download", "--tracker", ctx.tracker_url, fileid, "-o", "-"],
                capture_output=True, timeout=120)
        except subprocess.TimeoutExpired:
            ctx.ledger.count("read failed", "timed out after 120 s")
            continue
        with ctx.ledger.lock:
            expected = ctx.ledger.acked.get(fileid)
            gone = fileid in ctx.ledger.deleted or fileid in ctx.ledger.busy
        if out.returncode != 0:
            if not gone:
                ctx.ledger.count("read failed", first_line(out.stderr))
        elif hashlib.sha256(out.stdout).hexdigest() != expected:
            ctx.ledger.count("read corrupt")
            ctx.ledger.note("read corrupt", fileid=fileid)
        else:
            ctx.ledger.count("read ok")
        ctx.stop.wait(rng.uniform(0, 0.05))


def deleter(ctx):
    while not ctx.stop.wait(1.0 / ctx.args.delete_rate):
        fileid = ctx.ledger.readable()
        if fileid is None:
            continue
        with ctx.ledger.lock:
            ctx.ledger.busy.add(fileid)
        try:
            out = subprocess.run(
                [ctx.sluice, "delete", "--tracker", ctx.tracker_url, fileid],
                capture_output=True, timeout=60)
            ok = out.returncode == 0
            why = first_line(out.stderr)
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out after 60 s"
        with ctx.ledger.lock:
            (ctx.ledger.deleted if ok else ctx.ledger.uncertain).add(fileid)
            ctx.ledger.busy.discard(fileid)
        ctx.ledger.note("deleted" if ok else "delete failed", fileid=fileid)
        ctx.ledger.count("delete ok" if ok else "delete failed", None if ok else why)


def publisher(ctx):
    """Back-to-back live publishes of a minute each (ffmpeg, real time, H.264 + AAC)."""
    n = 0
    while not ctx.stop.is_set():
        n += 1
        name = f"soak{n}"
        seconds = min(60, max(5, int(ctx.end - time.monotonic())))
        publish = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
             "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
             "-g", "50", "-b:v", "800k", "-c:a", "aac", "-b:a", "64k",
             "-f", "flv", f"rtmp://{ctx.live_rtmp}/live/{name}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Players are sent to a stream once the server lists it, not before.
        deadline = time.monotonic() + 15
        while publish.poll() is None and time.monotonic() < deadline:
            if name in live_streams(ctx):
                ctx.live_stream = name
                break
            time.sleep(0.1)
        _, err = publish.communicate()
        ctx.live_stream = None
        if publish.returncode == 0:
            ctx.ledger.count("publish ok")
        else:
            ctx.ledger.count("publish failed", first_line(err))
            ctx.stop.wait(1)


def live_streams(ctx):
    status, body = http_get(f"http://{ctx.live_http}/v1/live/streams", timeout=5)
    if status != 200:
        return set()
    listed = json.loads(body)
    if isinstance(listed, dict):
        listed = listed.get("streams", [])
    return {s.get("stream") for s in listed}


def player(ctx, kind):
    """Plays the current live stream for 15 s at a time, over RTMP or HTTP-FLV."""
    while not ctx.stop.is_set():
        name = ctx.live_stream
        if name is None:
            ctx.stop.wait(0.5)
            continue
        url = (f"rtmp://{ctx.live_rtmp}/live/{name}" if kind == "rtmp"
               else f"http://{ctx.live_http}/live/live/{name}.flv")
        try:
            out = subprocess.run(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-rw_timeout", "10000000",
                 "-i", url, "-t", "15", "-f", "null", "-"],
                capture_output=True, timeout=60)
            ok, why = out.returncode == 0, first_line(out.stderr)
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out after 60 s"
        if ok:
            ctx.ledger.count(f"play {kind} ok")
        elif ctx.live_stream == name:
            # A stream that ended under the player is not a failure of the server.
            ctx.ledger.count(f"play {kind} failed", why)
        ctx.stop.wait(0.5)


def killer(ctx):
    """SIGKILLs a storage node (in turn) every KILL_EVERY seconds; starts it again later."""
    turn = 0
    while not ctx.stop.wait(ctx.args.kill_every):
        node = ctx.nodes[turn % len(ctx.nodes)]
        turn += 1
        node.kill9()
        ctx.ledger.note("killed", node=node.name)
        with ctx.ledger.lock:
            ctx.kills[node.name] += 1
        ctx.stop.wait(random.uniform(5, 30))
        node.start()
        ctx.ledger.note("restarted", node=node.name)


def rss_sampler(ctx):
    while not ctx.stop.wait(2):
        for p in ctx.procs:
            p.sample_rss()


def cluster_nodes(ctx):
    status, body = http_get(f"{ctx.tracker_url}/v1/cluster", timeout=5)
    if status != 200:
        return []
    view = json.loads(body)
    return [n for g in view["groups"] for n in g["nodes"]]


def settled(ctx):
    nodes = cluster_nodes(ctx)
    return (len(nodes) == 2
            and all(n["state"] == "active" and n.get("catch_up_pending", 0) == 0
                    and n.get("sync_lag", 0) == 0 for n in nodes)
            and len({n["files"] for n in nodes}) == 1)


def local_copy(node_url, fileid):
    """A node's own copy (the peers' route: never fetched from a peer on the way)."""
    return http_get(f"{node_url}/v1/internal/blobs/{fileid}", timeout=60,
                    headers={"sluice-cluster-secret": SECRET})


def verify(ctx):
    """Every file on both nodes against the ledger."""
    result = collections.Counter()
    examples = collections.defaultdict(list)
    with ctx.ledger.lock:
        acked = dict(ctx.ledger.acked)
        deleted = set(ctx.ledger.deleted)
        uncertain = set(ctx.ledger.uncertain)
    for fileid, digest in acked.items():
        if fileid in uncertain:
            result["uncertain (a delete failed)"] += 1
            continue
        answers = [local_copy(url, fileid) for url in ctx.node_urls]
        if fileid in deleted:
            outcome = "resurrected" if any(s == 200 for s, _ in answers) else "deleted, gone"
        else:
            whole = [s == 200 and hashlib.sha256(b).hexdigest() == digest for s, b in answers]
            damaged = [s == 200 and not w for (s, _), w in zip(answers, whole)]
            if any(damaged):
                outcome = "corrupted"
            elif all(whole):
                outcome = "whole on both nodes"
            elif any(whole):
                outcome = "missing on a replica"
            else:
                outcome = "lost"
        result[outcome] += 1
        if outcome in ("resurrected", "corrupted", "missing on a replica", "lost"):
            examples[outcome].append(fileid)
    return result, examples


def verify_recordings(ctx):
    status, body = http_get(f"http://{ctx.live_http}/v1/live/recordings", timeout=10)
    result = collections.Counter()
    if status != 200:
        result[f"recordings list answered {status}"] += 1
        return result
    listed = json.loads(body)
    if isinstance(listed, dict):
        listed = listed.get("recordings", [])
    for rec in listed:
        fileid = rec.get("fileid")
        status, data = http_get(f"{ctx.node_urls[0]}/v1/files/{fileid}", timeout=60)
        if status != 200:
            result["recording unreadable"] += 1
            continue
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                                "-of", "csv=p=0", "-"], input=data, capture_output=True)
        result["recording plays" if probe.returncode == 0 else "recording broken"] += 1
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--kill-every", type=float, default=180, help="seconds between SIGKILLs")
    parser.add_argument("--upload-rate", type=float, default=10, help="uploads per second, all uploaders")
    parser.add_argument("--uploaders", type=int, default=3)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--delete-rate", type=float, default=1, help="deletes per second")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()

    ctx = argparse.Namespace(args=args, sluice=args.sluice, stop=threading.Event(), live_stream=None,
                             kills=collections.Counter())
    ctx.scratch = tempfile.mkdtemp(dir=args.work, prefix="scratch.")
    ctx.ledger = Ledger(os.path.join(args.work, "ledger.jsonl"))
    tracker_port, a_port, b_port = free_port(), free_port(), free_port()
    ctx.tracker_url = f"http://127.0.0.1:{tracker_port}"
    ctx.node_urls = [f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"]
    ctx.live_rtmp, ctx.live_http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    w = args.work
    tracker = Proc("tracker", [args.sluice, "tracker", "--http", f"127.0.0.1:{tracker_port}",
                               "--data", f"{w}/tracker"], w)
    ctx.nodes = [
        Proc(name, [args.sluice, "storage", "--group", "g1", "--tracker", ctx.tracker_url,
                    "--http", f"127.0.0.1:{port}", "--data", f"{w}/{name}",
                    "--heartbeat-interval-ms", "500"], w)
        for name, port in (("node-a", a_port), ("node-b", b_port))
    ]
    live = Proc("live", [args.sluice, "live", "--rtmp", ctx.live_rtmp, "--http", ctx.live_http,
                         "--tracker", ctx.tracker_url, "--record", "--data", f"{w}/live"], w)
    ctx.procs = [tracker, *ctx.nodes, live]
    for p in ctx.procs:
        p.start()
    try:
        wait_until("both nodes active", 60,
                   lambda: sum(n["state"] == "active" for n in cluster_nodes(ctx)) == 2)
        wait_until("the live role", 60, lambda: http_get(f"http://{ctx.live_http}/healthz", 2)[0] == 200)
        print(f"soak: {args.minutes:g} min, a SIGKILL every {args.kill_every:g} s; logs and ledger in {w}",
              file=sys.stderr)
        started = time.monotonic()
        ctx.end = started + args.minutes * 60
        workers = [threading.Thread(target=uploader, args=(ctx, i)) for i in range(args.uploaders)]
        workers += [threading.Thread(target=reader, args=(ctx, 100 + i)) for i in range(args.readers)]
        workers += [threading.Thread(target=f, args=a) for f, a in (
            (deleter, (ctx,)), (publisher, (ctx,)), (player, (ctx, "rtmp")),
            (player, (ctx, "flv")), (killer, (ctx,)), (rss_sampler, (ctx,)))]
        for t in workers:
            t.start()
        while time.monotonic() < ctx.end:
            time.sleep(min(60, max(0.1, ctx.end - time.monotonic())))
            c = ctx.ledger.counts
            failed = sum(n for what, n in c.items() if "failed" in what or "corrupt" in what)
            print(f"soak: {int(time.monotonic() - started)} s: {c['upload ok']} acked, "
                  f"{c['read ok']} reads, {c['delete ok']} deletes, "
                  f"{c['publish ok']} publishes, {c['play rtmp ok'] + c['play flv ok']} plays, "
                  f"{sum(ctx.kills.values())} SIGKILLs, {failed} client failures", file=sys.stderr)
        ctx.stop.set()
        for t in workers:
            t.join(timeout=180)
        for node in ctx.nodes:
            if node.popen.poll() is not None:
                node.start()
        settle_began = time.monotonic()
        wait_until("both nodes active and caught up", 600, lambda: settled(ctx), pause=1)
        settle_secs = time.monotonic() - settle_began
        files, examples = verify(ctx)
        recordings = verify_recordings(ctx)
        for p in ctx.procs:
            p.sample_rss()
    finally:
        for p in ctx.procs:
            p.stop()

    c = ctx.ledger.counts
    failures = files["lost"] + files["corrupted"] + files["resurrected"] + c["read corrupt"]
    report = {
        "minutes": args.minutes,
        "sigkills": dict(ctx.kills),
        "acknowledged": c["upload ok"],
        "lost": files["lost"],
        "corrupted": files["corrupted"],
        "missing_on_a_replica": files["missing on a replica"],
        "resurrected": files["resurrected"],
        "files": dict(files),
        "clients": dict(c),
        "client_errors": dict(ctx.ledger.errors.most_common(12)),
        "recordings": dict(recordings),
        "seconds_to_settle": round(settle_secs, 1),
        "max_rss_mib": {p.name: round(p.max_rss_kib / 1024, 1) for p in ctx.procs},
        "examples": {k: v[:5] for k, v in examples.items()},
    }
    print(json.dumps(report, indent=2))
    sys.exit(1 if failures or files["missing on a replica"] else 0)


if __name__ == "__main__":
    main()
