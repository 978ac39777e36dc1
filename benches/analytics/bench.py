"""Issue 16's analytics benchmark, the Python half (scripts/analytics-bench.sh
runs it): the four questions against `megalith serve`'s REST API, against
DuckDB and against chDB, the answers checked equal, and the delay from a
reaction's OK to its effect in the API.

    bench.py --jsonl FILE --base http://127.0.0.1:PORT --work DIR [--ingest FILE]

Prints the table on stdout and writes DIR/results.json. Exit status 1 if any
answer differs (each difference is listed) or a step fails.
"""

import argparse
import hashlib
import http.client
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines  # noqa: E402

VIDEO_KINDS = (21, 22, 34235, 34236)
KIND_RE = re.compile(rb'"kind":\s*(\d+)')
QUESTIONS = [
    ("stats", "video stats by id"),
    ("trending", "trending top 50"),
    ("hashtags", "hashtag top 20"),
    ("active", "active users per day, 30 days"),
]


def log(*parts):
    print("analytics-bench:", *parts, file=sys.stderr, flush=True)


def percentile(values, q):
    """Nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(seconds):
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 0.50) * 1e3,
        "p99_ms": percentile(seconds, 0.99) * 1e3,
        "max_ms": max(seconds) * 1e3 if seconds else float("nan"),
    }


# ---------------------------------------------------------------------------
# The API over one keep-alive connection
# ---------------------------------------------------------------------------


class Api:
    def __init__(self, base):
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def get(self, path):
        """(status, parsed JSON body, headers)."""
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            # The server closed the kept-alive connection: once more.
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None, response.headers

    def timed(self, path):
        started = time.perf_counter()
        status, body, _ = self.get(path)
        return status, body, time.perf_counter() - started


def api_figures(video):
    return (video["reactions"], video["downvotes"], video["comments"],
            video["legacy_comments"], video["reposts"])


def api_key(video):
    return video["address"] or video["id"]


def api_questions(api, ids, reps):
    """Times each question `reps` times (stats: one request per id)."""
    paths = {
        "trending": "/api/videos?sort=trending&limit=50",
        "hashtags": "/api/hashtags?limit=20",
        "active": "/api/users/active?period=day&days=30",
    }
    for path in paths.values():  # warm-up
        for _ in range(3):
            api.get(path)
    for event_id in ids[-3:]:
        api.get(f"/api/videos/{event_id}/stats")
    times, stats = {}, {}
    times["stats"] = []
    for event_id in ids[:reps]:
        status, body, seconds = api.timed(f"/api/videos/{event_id}/stats")
        if status not in (200, 404):
            raise SystemExit(f"GET stats of {event_id}: status {status} {body}")
        times["stats"].append(seconds)
        stats[event_id] = (api_key(body), api_figures(body)) if status == 200 else None
    for name, path in paths.items():
        times[name] = []
        for _ in range(reps):
            status, body, seconds = api.timed(path)
            if status != 200:
                raise SystemExit(f"GET {path}: status {status} {body}")
            times[name].append(seconds)
    return times, stats


def api_snapshot(api):
    """Trending, hashtags and the active series answered within one second
    of the clock, and that second (the `now` the server used)."""
    for _ in range(20):
        before = time.time()
        _, trending, _ = api.get("/api/videos?sort=trending&limit=50")
        _, hashtags, _ = api.get("/api/hashtags?limit=20")
        _, active, _ = api.get("/api/users/active?period=day&days=30")
        after = time.time()
        if int(before) == int(after):
            return int(before), {
                "trending": [(api_key(v), v["trending_score"]) for v in trending],
                "hashtags": [(h["hashtag"], h["count"], h["creators"], h["last_used"])
                             for h in hashtags],
                "active": [d["active"] for d in active["series"]],
            }
        time.sleep(max(0.0, math.ceil(after) - after) + 0.01)
    raise SystemExit("could not read the API within one second of the clock")


def api_all_videos(api):
    """Every live video's figures, through the recent list's cursor."""
    out, cursor, pages = {}, None, 0
    while True:
        path = "/api/videos?sort=recent&limit=100" + (f"&cursor={cursor}" if cursor else "")
        status, body, headers = api.get(path)
        if status != 200:
            raise SystemExit(f"GET {path}: status {status} {body}")
        pages += 1
        for video in body:
            out[api_key(video)] = api_figures(video)
        cursor = headers.get("x-next-cursor")
        if not cursor or pages > 100_000:
            return out


# ---------------------------------------------------------------------------
# The data: every video version id and its key
# ---------------------------------------------------------------------------


def video_versions(path):
    versions = {}
    with open(path, "rb") as lines:
        for line in lines:
            found = KIND_RE.search(line)
            if not found or int(found.group(1)) not in VIDEO_KINDS:
                continue
            event = json.loads(line)
            kind = event["kind"]
            if kind >= 34235:
                d = next((t[1] for t in event["tags"] if len(t) >= 2 and t[0] == "d"), "")
                versions[event["id"]] = f"{kind}:{event['pubkey']}:{d}"
            else:
                versions[event["id"]] = event["id"]
    return versions


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def compare(engine, truth, answers, mismatches):
    """`answers` of an SQL engine against the API's `truth`."""
    name = engine

    def bad(what):
        mismatches.append(f"{name}: {what}")

    # Figures of every live video.
    api_all, sql_all = truth["all"], answers["all"]
    missing = sorted(set(api_all) - set(sql_all))
    extra = sorted(set(sql_all) - set(api_all))
    differ = sorted(k for k in set(api_all) & set(sql_all) if api_all[k] != sql_all[k])
    if missing:
        bad(f"{len(missing)} live video(s) the API lists are not live in SQL, e.g. {missing[:3]}")
    if extra:
        bad(f"{len(extra)} video(s) live in SQL are not in the API's list, e.g. {extra[:3]}")
    for key in differ[:10]:
        bad(f"figures of {key} (reactions, downvotes, comments, legacy, reposts): "
            f"API {api_all[key]}, SQL {sql_all[key]}")
    if len(differ) > 10:
        bad(f"... {len(differ) - 10} more videos with different figures")
    # The sampled ids' stats (the API answered them one by one).
    versions = truth["versions"]
    for event_id, got in truth["stats"].items():
        key = versions[event_id]
        want = (key, sql_all[key]) if key in sql_all else None
        if got != want:
            bad(f"stats of id {event_id}: API {got}, SQL {want}")
    for event_id, got in answers["stats"].items():
        want = truth["stats"].get(event_id)
        want = want[1] if want else None
        if got != want:
            bad(f"{name}'s per-id query for {event_id}: {got}, API {want}")
    # Trending: the same order; scores within 1e-6 relative.
    api_t, sql_t = truth["trending"], answers["trending"]
    if len(api_t) != len(sql_t):
        bad(f"trending has {len(api_t)} videos in the API, {len(sql_t)} in SQL")
    sql_score = dict(sql_t)
    for i, ((ka, sa), (ks, ss)) in enumerate(zip(api_t, sql_t)):
        if not close(sa, ss):
            bad(f"trending #{i + 1}: API {ka} {sa!r}, SQL {ks} {ss!r}")
        elif ka != ks and not (ka in sql_score and close(sql_score[ka], sa)):
            bad(f"trending #{i + 1}: API {ka}, SQL {ks} (scores {sa!r} / {ss!r})")
    if answers["hashtags"] != truth["hashtags"]:
        bad(f"hashtags: API {truth['hashtags']}, SQL {answers['hashtags']}")
    if answers["active"] != truth["active"]:
        bad(f"active per day: API {truth['active']}, SQL {answers['active']}")


# ---------------------------------------------------------------------------
# SQL engines
# ---------------------------------------------------------------------------


def run_engine(engine, jsonl, now, ids, reps, budget):
    log(f"{engine.name}: loading {jsonl}")
    count, load_seconds = engines.timed(engine.load, jsonl)
    log(f"{engine.name}: {count} events loaded in {load_seconds:.1f} s")
    answers = {
        "all": engine.all_figures(now),
        "trending": engine.trending(now),
        "hashtags": engine.hashtags(now),
        "active": engine.active(now),
        "stats": {},
    }
    times = {}
    calls = {
        "trending": lambda i: engine.trending(time.time()),
        "hashtags": lambda i: engine.hashtags(time.time()),
        "active": lambda i: engine.active(time.time()),
    }

    def stats_call(i):
        event_id = ids[i % len(ids)]
        answers["stats"][event_id] = engine.video_stats(event_id, time.time())

    calls = {"stats": stats_call, **calls}
    for name, call in calls.items():
        # One warm-up; then `reps`, or fewer when a call is slow (at least 5).
        _, first = engines.timed(call, reps)
        n = reps if first * reps <= budget else max(5, int(budget / max(first, 1e-9)))
        times[name] = []
        for i in range(n):
            _, seconds = engines.timed(call, i)
            times[name].append(seconds)
        log(f"{engine.name}: {name}: {n} runs, p50 {percentile(times[name], .5) * 1e3:.1f} ms")
    return {"load_seconds": load_seconds, "events": count, "times": times,
            "answers": answers, "version": engine.version}


# ---------------------------------------------------------------------------
# Visibility: a reaction's OK, then its effect in the API
# ---------------------------------------------------------------------------


def sign(secret, created_at, kind, tags, content):
    from coincurve import PrivateKey

    key = PrivateKey(secret)
    pubkey = key.public_key_xonly.format().hex()
    serial = json.dumps([0, pubkey, created_at, kind, tags, content],
                        separators=(",", ":"), ensure_ascii=False)
    event_id = hashlib.sha256(serial.encode()).digest()
    return {"id": event_id.hex(), "pubkey": pubkey, "created_at": created_at, "kind": kind,
            "tags": tags, "content": content,
            "sig": key.sign_schnorr(event_id, os.urandom(32)).hex()}


def visibility(api, base, video, tries, deadline_s=2.0):
    from websockets.sync.client import connect

    ws_url = "ws://" + base.split("://", 1)[1].rstrip("/") + "/"
    address = video["address"]
    path = "/api/videos/" + urllib.parse.quote(address or video["id"], safe=":") + "/stats"
    ack, delay, polls, first_poll = [], [], [], 0
    nonce = os.urandom(8).hex()
    with connect(ws_url, open_timeout=10, close_timeout=5, max_size=2**22) as ws:
        for i in range(tries):
            status, before, _ = api.get(path)
            if status != 200:
                raise SystemExit(f"GET {path}: {status} {before}")
            tags = [["e", video["id"], "", video["pubkey"]], ["p", video["pubkey"]]]
            if address:
                tags.append(["a", address])
            tags.append(["k", str(video["kind"])])
            secret = hashlib.sha256(f"analytics-bench {nonce} {i}".encode()).digest()
            event = sign(secret, int(time.time()), 7, tags, "+")
            sent = time.perf_counter()
            ws.send(json.dumps(["EVENT", event]))
            while True:
                message = json.loads(ws.recv(timeout=10))
                if message[0] == "OK" and message[1] == event["id"]:
                    break
            ok = time.perf_counter()
            if message[2] is not True:
                raise SystemExit(f"the relay refused the reaction: {message}")
            n = 0
            while True:
                _, now, _ = api.get(path)
                n += 1
                seen = time.perf_counter()
                if now["reactions"] == before["reactions"] + 1:
                    break
                if seen - ok > deadline_s:
                    raise SystemExit(
                        f"reaction {event['id']} not counted {deadline_s} s after its OK "
                        f"({before['reactions']} -> {now['reactions']})")
            ack.append(ok - sent)
            delay.append(seen - ok)
            polls.append(n)
            first_poll += n == 1
    return {"tries": tries, "ok_after_send": summary(ack), "visible_after_ok": summary(delay),
            "seen_at_first_poll": first_poll, "max_polls": max(polls)}


# ---------------------------------------------------------------------------


def ingest_summary(path):
    """Medians of the shell script's import runs (run, analytics, events, ms)."""
    rates = {"on": [], "off": []}
    cpu = {"on": [], "off": []}
    each = []
    with open(path) as f:
        next(f)
        for line in f:
            run, mode, events, ms, cpu_s = line.split()
            rate = int(events) / (int(ms) / 1e3)
            user, system = (float(x) for x in cpu_s.split("+"))
            rates[mode].append(rate)
            cpu[mode].append((user + system) * 1e6 / int(events))
            each.append({"run": int(run), "analytics": mode, "seconds": int(ms) / 1e3,
                         "events_per_s": rate, "cpu_s": user + system})
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    return {"runs": len(rates["on"]), "each": each, "on_median": on, "off_median": off,
            "ratio": on / off, "cpu_us_per_event_on": cpu_on, "cpu_us_per_event_off": cpu_off,
            "cpu_ratio": cpu_off / cpu_on}


def fmt_ms(ms):
    if ms != ms:
        return "-"
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def table(results):
    api = results["api"]["times"]
    sql = results["sql"]
    lines = ["| question | Megalith API p50 / p99 | DuckDB p50 / p99 (runs) "
             "| chDB p50 / p99 (runs) | faster SQL ÷ Megalith, p50 / p99 |",
             "|---|---|---|---|---|"]
    for key, label in QUESTIONS:
        cells = [label, f"{fmt_ms(api[key]['p50_ms'])} / {fmt_ms(api[key]['p99_ms'])} ms"]
        best50 = best99 = float("inf")
        for engine in ("DuckDB", "chDB"):
            t = sql.get(engine, {}).get("times", {}).get(key)
            if not t:
                cells.append("-")
                continue
            cells.append(f"{fmt_ms(t['p50_ms'])} / {fmt_ms(t['p99_ms'])} ms ({t['n']})")
            best50, best99 = min(best50, t["p50_ms"]), min(best99, t["p99_ms"])
        ratio = (f"{best50 / api[key]['p50_ms']:,.0f}× / {best99 / api[key]['p99_ms']:,.0f}×"
                 if best50 < float("inf") else "-")
        cells.append(ratio)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl", required=True)
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT of megalith serve")
    parser.add_argument("--work", required=True, help="directory for chDB's files and results")
    parser.add_argument("--ingest", help="JSON of the ingest runs (from the shell script)")
    parser.add_argument("--api-reps", type=int, default=200)
    parser.add_argument("--sql-reps", type=int, default=20)
    parser.add_argument("--sql-budget", type=float, default=120.0,
                        help="seconds per SQL question at most (fewer runs, at least 5)")
    parser.add_argument("--engines", default="duckdb,chdb")
    parser.add_argument("--visibility-tries", type=int, default=50)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()

    results = {"jsonl": args.jsonl}
    if args.ingest:
        results["ingest"] = ingest_summary(args.ingest)
    log("reading video ids from", args.jsonl)
    versions = video_versions(args.jsonl)
    rng = random.Random(args.seed)
    ids = rng.sample(sorted(versions), min(args.api_reps, len(versions)))
    log(f"{len(versions)} video versions; {len(ids)} sampled")

    api = Api(args.base)
    log("API: timing the four questions")
    api_times, api_stats = api_questions(api, ids, args.api_reps)
    now, snapshot = api_snapshot(api)
    log("API: listing every live video")
    all_videos = api_all_videos(api)
    truth = {**snapshot, "all": all_videos, "stats": api_stats, "versions": versions}
    results["api"] = {"times": {k: summary(v) for k, v in api_times.items()},
                      "now": now, "live_videos": len(all_videos),
                      "not_found": sum(v is None for v in api_stats.values())}
    log(f"API: {len(all_videos)} live videos; "
        f"{results['api']['not_found']} of {len(ids)} sampled ids not live (404)")

    mismatches = []
    results["sql"] = {}
    for name in args.engines.split(","):
        if name == "duckdb":
            engine = engines.DuckDB()
        elif name == "chdb":
            chdb_dir = os.path.join(args.work, "chdb")
            shutil.rmtree(chdb_dir, ignore_errors=True)
            engine = engines.Chdb(chdb_dir)
        else:
            raise SystemExit(f"unknown engine {name}")
        run = run_engine(engine, args.jsonl, now, ids[:args.sql_reps], args.sql_reps,
                         args.sql_budget)
        engine.close()
        if name == "chdb":
            shutil.rmtree(chdb_dir, ignore_errors=True)
        compare(engine.name, truth, run["answers"], mismatches)
        results["sql"][engine.name] = {
            "version": run["version"], "load_seconds": run["load_seconds"],
            "events": run["events"],
            "times": {k: summary(v) for k, v in run["times"].items()}}
        del run, engine

    if args.visibility_tries > 0:
        log("visibility: publishing reactions over WebSocket")
        top = api.get("/api/videos?sort=trending&limit=1")[1][0]
        results["visibility"] = visibility(api, args.base, top, args.visibility_tries)
    results["mismatches"] = mismatches

    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    print()
    print(table(results))
    print()
    for engine, r in results["sql"].items():
        print(f"{engine} {r['version']}: loaded {r['events']:,} events in "
              f"{r['load_seconds']:.1f} s")
    if "ingest" in results:
        ing = results["ingest"]
        print(f"ingest (megalith import --trusted): analytics on {ing['on_median']:,.0f} events/s, "
              f"off {ing['off_median']:,.0f} events/s (medians of {ing['runs']} runs each): "
              f"on/off = {ing['ratio']:.2f}; CPU per event on {ing['cpu_us_per_event_on']:.1f} µs, "
              f"off {ing['cpu_us_per_event_off']:.1f} µs (off/on {ing['cpu_ratio']:.2f})")
        print("  runs: " + ", ".join(
            f"{r['analytics']} {r['events_per_s']:,.0f}/s" for r in ing["each"]))
    v = results.get("visibility")
    if v:
        print(f"visibility: {v['tries']} reactions; OK after send p50 "
              f"{fmt_ms(v['ok_after_send']['p50_ms'])} ms, p99 {fmt_ms(v['ok_after_send']['p99_ms'])} ms; "
              f"counted in the API at the first poll after OK in {v['seen_at_first_poll']}/{v['tries']}; "
              f"OK -> seen p50 {fmt_ms(v['visible_after_ok']['p50_ms'])} ms, "
              f"p99 {fmt_ms(v['visible_after_ok']['p99_ms'])} ms, "
              f"max {fmt_ms(v['visible_after_ok']['max_ms'])} ms")
    print(f"answers checked at now={now}: {len(all_videos)} live videos' figures, "
          f"{len(ids)} ids' stats, trending top 50, hashtag top 20, 30-day active series")
    if mismatches:
        print(f"\nMISMATCH: {len(mismatches)} difference(s) between the API and SQL:")
        for m in mismatches:
            print("  " + m)
        return 1
    print("all answers equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
