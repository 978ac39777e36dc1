#!/usr/bin/env python3
"""NIP-77 negentropy sync of rust-nostr's Python SDK (PyPI `nostr-sdk`,
`Client.sync`) against `megalith serve`, both ways.

Usage: sync.py RELAY_URL

1. 30 notes of a fresh key: notes 0-19 are published to the relay over a
   plain WebSocket (so the SDK's database does not see them), notes 10-29
   are saved in the SDK's own database (nostr-lmdb in a temporary
   directory). Shared: 10-19; only on the relay: 0-9; only local: 20-29.
2. `Client.sync(filter by that author, direction BOTH)`: the SDK must find
   exactly 0-9 on the relay side and 20-29 on its side, receive the first
   and send the second, with no failure.
3. Both sides then hold all 30 (the relay read back over a plain REQ, each
   event verified); a second sync (DOWN) finds nothing to do.
Exits 1 on any mismatch.
"""

import asyncio
import gc
import json
import sys
import tempfile
from datetime import timedelta

import websockets
from nostr_sdk import (
    ClientBuilder,
    Event,
    EventBuilder,
    Filter,
    Keys,
    Kind,
    NostrLmdb,
    RelayUrl,
    SyncDirection,
    SyncOptions,
    Timestamp,
    uniffi_set_event_loop,
)

TIMEOUT = timedelta(seconds=10)


def fail(what: str) -> None:
    print(f"sync: FAILED: {what}", file=sys.stderr)
    sys.exit(1)


async def recv_skipping_auth(ws) -> str:
    while True:
        frame = await asyncio.wait_for(ws.recv(), 10)
        if not frame.startswith('["AUTH"'):
            return frame


async def publish_raw(url: str, events: list) -> None:
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        for event in events:
            await ws.send(f'["EVENT",{event.as_json()}]')
            reply = json.loads(await recv_skipping_auth(ws))
            if reply[:3] != ["OK", event.id().to_hex(), True]:
                fail(f"publishing {event.id().to_hex()}: {reply}")


async def relay_ids(url: str, author: str) -> set:
    ids = set()
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        await ws.send(json.dumps(["REQ", "r", {"authors": [author]}]))
        while True:
            reply = json.loads(await recv_skipping_auth(ws))
            if reply[0] == "EOSE":
                return ids
            if reply[0] != "EVENT":
                fail(f"reading the relay back: {reply}")
            event = Event.from_json(json.dumps(reply[2]))
            if not event.verify():
                fail(f"the relay sent an event that does not verify: {reply[2]}")
            ids.add(event.id().to_hex())


def hexes(ids) -> set:
    return {i.to_hex() for i in ids}


async def main(url: str) -> None:
    # The SDK calls its database (nostr-lmdb, passed in from Python) back
    # from its own threads: they need to be told which event loop to use.
    uniffi_set_event_loop(asyncio.get_running_loop())
    keys = Keys.generate()
    author = keys.public_key()
    notes = [
        EventBuilder(Kind(1), f"negentropy note {i}")
        .custom_created_at(Timestamp.from_secs(1_700_000_000 + i // 3))
        .finalize(keys)
        for i in range(30)
    ]
    ids = [e.id().to_hex() for e in notes]
    await publish_raw(url, notes[:20])

    with tempfile.TemporaryDirectory() as tmp:
        database = await NostrLmdb.open(tmp)
        for event in notes[10:]:
            await database.save_event(event)
        client = ClientBuilder().database(database).build()
        relay_url = RelayUrl.parse(url)
        await client.add_relay(relay_url)
        await client.connect()

        out = await client.sync(
            Filter().author(author), opts=SyncOptions().direction(SyncDirection.BOTH)
        )
        if out.failed:
            fail(f"Client.sync failed: {out.failed}")
        report = out.report
        remote, local = hexes(report.remote), hexes(report.local)
        if remote != set(ids[:10]):
            fail(f"the SDK found {len(remote)} events only on the relay, expected notes 0-9")
        if local != set(ids[20:]):
            fail(f"the SDK found {len(local)} events only on its side, expected notes 20-29")
        if hexes(report.received) != remote:
            fail(f"the SDK received {len(report.received)} of the relay's 10")
        if hexes(report.sent) != local:
            fail(f"the SDK sent {len(report.sent)} of its 10")
        failures = [f for fs in report.send_failures.values() for f in fs]
        if failures:
            fail(f"the relay refused events the SDK sent: {failures}")

        on_relay = await relay_ids(url, author.to_hex())
        if on_relay != set(ids):
            fail(f"after the sync the relay holds {len(on_relay & set(ids))} of the 30")
        held = await database.query(Filter().author(author))
        if {e.id().to_hex() for e in held} != set(ids):
            fail(f"after the sync the SDK's database holds {len(held)} of the 30")

        again = await client.sync(
            Filter().author(author), opts=SyncOptions().direction(SyncDirection.DOWN)
        )
        if again.failed or again.report.remote or again.report.local:
            fail(
                f"a second sync found differences: {len(again.report.remote)} remote, "
                f"{len(again.report.local)} local, failed {again.failed}"
            )
        await client.shutdown()
        # The client and the database go before their directory does.
        del client, database
        gc.collect()
        await asyncio.sleep(0.2)
    print("sync: nostr-sdk Client.sync with megalith serve: 10 down, 10 up, then nothing to do")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(sys.argv[1]))
