#!/usr/bin/env python3
"""Interop of Megalith's ingester with a relay that is not Megalith: the
LocalRelay (mock relay) of rust-nostr's Python bindings (PyPI `nostr-sdk`).

Usage: interop.py MEGALITH_BIN

1. Starts a LocalRelay on a free loopback port and publishes 150 signed
   notes to it with the SDK's Client, five to a second (so that mirror pages
   cut through seconds).
2. `megalith mirror --once --page-size 20` copies them into a fresh store:
   the summary must say 150 stored, and `megalith query` must give back
   exactly those 150 events, each verifying with `Event.from_json().verify()`.
3. `megalith publish` sends 60 notes signed by the SDK (as JSONL) to the
   LocalRelay through the relay pool: all accepted, and the SDK's Client
   must fetch exactly those 60 back from the LocalRelay.
4. `megalith sync --dir both` (NIP-77) with the LocalRelay, after 25
   notes only the store holds are imported: exactly the 60 come down and
   the 25 go up, checked on both sides.
Exits 1 on any mismatch.
"""

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta

from nostr_sdk import (
    Client,
    Event,
    EventBuilder,
    Filter,
    Keys,
    Kind,
    LocalRelayBuilder,
    RateLimit,
    RelayUrl,
    ReqTarget,
    Timestamp,
)

TIMEOUT = timedelta(seconds=10)


def fail(what: str) -> None:
    print(f"interop: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


async def main(binary: str) -> None:
    port = free_port()
    # The LocalRelay's default rate limit (60 notes a minute) is lifted: the
    # test publishes 210 notes.
    relay = (
        LocalRelayBuilder()
        .addr("127.0.0.1")
        .port(port)
        .rate_limit(RateLimit(max_reqs=500, notes_per_minute=100_000))
        .build()
    )
    await relay.run()
    url = f"ws://127.0.0.1:{port}"
    relay_url = RelayUrl.parse(url)

    keys = Keys.generate()
    client = Client()
    await client.add_relay(relay_url)
    await client.connect()
    base = 1_700_000_000
    sent = set()
    for i in range(150):
        event = (
            EventBuilder(Kind(1), f"interop note {i}")
            .custom_created_at(Timestamp.from_secs(base + i // 5))
            .finalize(keys)
        )
        out = await client.send_event(event, ok_timeout=TIMEOUT)
        if out.failed:
            fail(f"the LocalRelay refused note {i}: {out.failed}")
        sent.add(event.id().to_hex())

    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/store"
        mirrored = run([binary, "mirror", "--once", "--json", "--page-size", "20",
                        "--data", data, "--relay", url])
        if mirrored.returncode != 0:
            fail(f"megalith mirror exited {mirrored.returncode}: {mirrored.stderr}")
        summary = json.loads(mirrored.stdout)
        stored = summary["relays"][0]["stored"]
        if stored != 150:
            fail(f"megalith mirror stored {stored} of 150: {summary}")
        queried = run([binary, "query", "--data", data, '{"kinds":[1]}'])
        if queried.returncode != 0:
            fail(f"megalith query exited {queried.returncode}: {queried.stderr}")
        got = set()
        for line in queried.stdout.splitlines():
            event = Event.from_json(line)
            if not event.verify():
                fail(f"a mirrored event does not verify: {line[:120]}")
            got.add(event.id().to_hex())
        if got != sent:
            fail(f"mirrored {len(got)} events, {len(got & sent)} of the 150 sent")
        print(f"interop: mirror from the LocalRelay: 150 of 150 in {summary['relays'][0]['pages']} pages",
              file=sys.stderr)

        # Megalith's pool publishing to the LocalRelay.
        other = Keys.generate()
        path = f"{tmp}/out.jsonl"
        published = set()
        with open(path, "w") as f:
            for i in range(60):
                event = EventBuilder(Kind(1), f"from megalith {i}").finalize(other)
                f.write(event.as_json() + "\n")
                published.add(event.id().to_hex())
        pub = run([binary, "publish", "--json", "--relay", url, path])
        if pub.returncode != 0:
            fail(f"megalith publish exited {pub.returncode}: {pub.stdout} {pub.stderr}")
        counts = json.loads(pub.stdout)["relays"]
        accepted = sum(r["accepted"] for r in counts.values())
        if accepted != 60:
            fail(f"megalith publish: {accepted} of 60 accepted: {counts}")
        fetched = await client.fetch_events(
            ReqTarget.single(relay_url, [Filter().author(other.public_key()).kind(Kind(1))]), TIMEOUT
        )
        ids = {e.id().to_hex() for e in fetched}
        if ids != published:
            fail(f"the LocalRelay holds {len(ids & published)} of the 60 published")
        print("interop: publish to the LocalRelay: 60 of 60", file=sys.stderr)

        # NIP-77 both ways with the LocalRelay: it holds the 60 above that
        # the store lacks; the store gets 25 notes the relay lacks.
        third = Keys.generate()
        path = f"{tmp}/own.jsonl"
        own = set()
        with open(path, "w") as f:
            for i in range(25):
                event = EventBuilder(Kind(1), f"only in the store {i}").finalize(third)
                f.write(event.as_json() + "\n")
                own.add(event.id().to_hex())
        imported = run([binary, "import", "--quiet", "--data", data, path])
        if imported.returncode != 0:
            fail(f"megalith import exited {imported.returncode}: {imported.stderr}")
        synced = run([binary, "sync", url, "--dir", "both", "--json", "--data", data])
        if synced.returncode != 0:
            fail(f"megalith sync exited {synced.returncode}: {synced.stderr}")
        report = json.loads(synced.stdout)
        want = {"only_here": 25, "only_there": 60, "stored": 60, "accepted": 25, "refused": 0}
        got = {k: report[k] for k in want}
        if got != want:
            fail(f"megalith sync with the LocalRelay: {got}, expected {want}")
        fetched = await client.fetch_events(
            ReqTarget.single(relay_url, [Filter().author(third.public_key())]), TIMEOUT
        )
        if {e.id().to_hex() for e in fetched} != own:
            fail(f"after megalith sync the LocalRelay holds {len(fetched)} of the store's 25")
        queried = run([binary, "query", "--data", data, json.dumps({"authors": [other.public_key().to_hex()]})])
        ids = {Event.from_json(line).id().to_hex() for line in queried.stdout.splitlines()}
        if ids != published:
            fail(f"after megalith sync the store holds {len(ids & published)} of the relay's 60")
        print(f"interop: megalith sync with the LocalRelay: 60 down, 25 up in {report['rounds']} rounds",
              file=sys.stderr)
    relay.shutdown()
    print("interop: passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1]))
