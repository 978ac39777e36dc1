#!/usr/bin/env python3
"""Round trip through a NIP-01 relay with rust-nostr's Python bindings (PyPI `nostr-sdk`).

Usage: roundtrip.py ws://127.0.0.1:PORT/

Publishes three signed kind-1 notes from a fresh key (two carry a `t` tag),
checks the relay accepted each one (OK true), fetches them back by author+kind
and by the `t` tag and checks the exact ids and contents, then counts them
with NIP-45 COUNT, both through the SDK and over a raw WebSocket (to check
the exact ["COUNT", sub, {"count": n}] reply).

Then publishes one note per control character U+0001..U+001F and U+007F (and
one with all of them), each in the content and in tag values: rust-nostr
hashes them as serde_json writes them (\\u00xx). Each must get OK true and come
back with the exact strings, through the SDK and as raw frames on a plain
WebSocket, and verify with `Event.from_json(frame).verify()`.
Exits 1 on any mismatch.
"""

import asyncio
import json
import secrets
import sys
from datetime import timedelta

import websockets
from nostr_sdk import (
    Client,
    Event,
    EventBuilder,
    Filter,
    Keys,
    Kind,
    RelayUrl,
    ReqTarget,
    Tag,
)

TIMEOUT = timedelta(seconds=10)


class Mismatch(Exception):
    """A check against the relay's answers failed."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Mismatch(what)


async def recv_skipping_auth(ws) -> str:
    """The next frame that is not the relay's NIP-42 ["AUTH", challenge]."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), 10)
        if frame.startswith('["AUTH",'):
            continue
        return frame


async def raw_count(url: str, filt: dict) -> int:
    """Send ["COUNT","c",filt] on a plain WebSocket; return n from ["COUNT","c",{"count":n}]."""
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        await ws.send(json.dumps(["COUNT", "c", filt]))
        reply = json.loads(await recv_skipping_auth(ws))
    check(
        isinstance(reply, list)
        and len(reply) == 3
        and reply[:2] == ["COUNT", "c"]
        and isinstance(reply[2], dict)
        and isinstance(reply[2].get("count"), int),
        f"raw COUNT {json.dumps(filt)}: expected [\"COUNT\",\"c\",{{\"count\":n}}], got {reply!r}",
    )
    return reply[2]["count"]


async def raw_events(url: str, filt: dict) -> list:
    """Send ["REQ","r",filt]; return the exact text of each event the relay sends before EOSE."""
    prefix = '["EVENT","r",'
    events = []
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        await ws.send(json.dumps(["REQ", "r", filt]))
        while True:
            frame = await recv_skipping_auth(ws)
            if frame.startswith(prefix):
                check(frame.endswith("]"), f"EVENT frame does not end with ]: {frame[-40:]!r}")
                events.append(frame[len(prefix):-1])
                continue
            check(json.loads(frame) == ["EOSE", "r"], f"expected EVENT or EOSE, got {frame[:200]!r}")
            return events


async def control_characters(client: Client, relay_url: RelayUrl, url: str, keys: Keys) -> int:
    """Publish, read back and verify events with control characters; return how many."""
    author = keys.public_key()
    topic = f"ctl-{secrets.token_hex(4)}"
    codes = list(range(0x01, 0x20)) + [0x7F]
    templates = []
    for c in codes:
        ch = chr(c)
        templates.append((
            f"control U+{c:04X} [{ch}] {ch}{ch}",
            [["t", topic], ["x", ch, f"a{ch}b"], ["client", f"roundtrip.py {ch}"]],
        ))
    every = "".join(chr(c) for c in codes)
    templates.append((f"all of them [{every}]", [["t", topic], ["x", every]]))

    sent = {}  # id hex -> (content, tags)
    for content, tags in templates:
        event = EventBuilder(Kind(1), content).tags([Tag.parse(t) for t in tags]).finalize(keys)
        out = await client.send_event(event, ok_timeout=TIMEOUT)
        check(
            not out.failed and [str(u) for u in out.success] == [str(relay_url)],
            f"publish of {content!r} ({event.id().to_hex()}) not accepted: "
            f"failed={ {str(k): v for k, v in out.failed.items()} }",
        )
        sent[event.id().to_hex()] = (content, tags)

    def same(e: Event, label: str) -> None:
        content, tags = sent[e.id().to_hex()]
        check(e.content() == content, f"{label}: content {e.content()!r}, sent {content!r}")
        got_tags = [t.to_vec() for t in e.tags()]
        check(got_tags == tags, f"{label}: tags {got_tags!r}, sent {tags!r}")
        check(e.author().to_hex() == author.to_hex(), f"{label}: author {e.author().to_hex()}")
        check(e.verify(), f"{label}: {content!r} does not verify")

    # Through the SDK (which verifies what it receives, and drops what fails).
    filt = Filter().author(author).kind(Kind(1)).hashtag(topic)
    got = await client.fetch_events(ReqTarget.single(relay_url, [filt]), TIMEOUT)
    ids = [e.id().to_hex() for e in got]
    check(sorted(ids) == sorted(sent), f"SDK fetch of control-character events: {len(ids)} of {len(sent)}")
    for e in got:
        same(e, "SDK fetch")

    # The relay's exact JSON, parsed and verified anew.
    raw = await raw_events(url, {"authors": [author.to_hex()], "kinds": [1], "#t": [topic]})
    check(len(raw) == len(sent), f"raw REQ: {len(raw)} events, expected {len(sent)}")
    for text in raw:
        e = Event.from_json(text)
        check(e.id().to_hex() in sent, f"raw REQ: unexpected event {text[:120]}")
        same(e, "raw frame")
    return len(sent)


async def run(url: str) -> str:
    keys = Keys.generate()
    author = keys.public_key()
    # A hashtag unique to this run, so the tag query sees only our events.
    # (Tag.hashtag lowercases; token_hex is lowercase already.)
    topic = f"megalith-{secrets.token_hex(4)}"

    client = Client()
    relay_url = RelayUrl.parse(url)
    await client.add_relay(relay_url)
    try:
        conn = await client.try_connect(TIMEOUT)
        check(
            not conn.failed and [str(u) for u in conn.success] == [str(relay_url)],
            f"could not connect to {url}: { {str(k): v for k, v in conn.failed.items()} }",
        )

        # Publish: three notes, distinct content; the first two are tagged.
        notes = [
            (f"megalith round trip note 1 {topic}", [Tag.hashtag(topic)]),
            (f"megalith round trip note 2 {topic}", [Tag.hashtag(topic), Tag.parse(["client", "roundtrip.py"])]),
            (f"megalith round trip note 3 {topic}", []),
        ]
        sent = {}  # id hex -> event
        for content, tags in notes:
            event = EventBuilder(Kind(1), content).tags(tags).finalize(keys)
            out = await client.send_event(event, ok_timeout=TIMEOUT)
            check(out.id.to_hex() == event.id().to_hex(), f"send_event reported id {out.id.to_hex()}, sent {event.id().to_hex()}")
            check(
                not out.failed and [str(u) for u in out.success] == [str(relay_url)],
                f"publish of {event.id().to_hex()} not accepted: success={[str(u) for u in out.success]} "
                f"failed={ {str(k): v for k, v in out.failed.items()} }",
            )
            sent[event.id().to_hex()] = event
        tagged = {i for i, e in sent.items() if any(t.to_vec()[:2] == ["t", topic] for t in e.tags())}
        check(len(tagged) == 2, f"expected 2 tagged events among those sent, found {len(tagged)}")

        async def fetch(filt: Filter, expect: set, label: str) -> None:
            got = await client.fetch_events(ReqTarget.single(relay_url, [filt]), TIMEOUT)
            ids = [e.id().to_hex() for e in got]
            check(len(ids) == len(set(ids)), f"{label}: duplicate events in reply: {ids}")
            check(set(ids) == expect, f"{label}: expected ids {sorted(expect)}, got {sorted(ids)}")
            for e in got:
                want = sent[e.id().to_hex()]
                check(e.content() == want.content(), f"{label}: content of {e.id().to_hex()} is {e.content()!r}, sent {want.content()!r}")
                check(e.author().to_hex() == author.to_hex(), f"{label}: author of {e.id().to_hex()} is {e.author().to_hex()}")
                check(e.verify(), f"{label}: event {e.id().to_hex()} does not verify")

        by_author = Filter().author(author).kind(Kind(1))
        by_tag = Filter().hashtag(topic)
        await fetch(by_author, set(sent), "fetch by author+kind")
        await fetch(by_tag, tagged, f"fetch by #t={topic}")

        # NIP-45 COUNT through the SDK (Relay.count_events)...
        relay = await client.relay(relay_url)
        n = await relay.count_events(by_author, TIMEOUT)
        check(n == len(sent), f"SDK COUNT by author+kind: expected {len(sent)}, got {n}")
        # ...and on a raw socket, checking the wire format.
        n = await raw_count(url, {"authors": [author.to_hex()], "kinds": [1]})
        check(n == len(sent), f"raw COUNT by author+kind: expected {len(sent)}, got {n}")
        n = await raw_count(url, {"#t": [topic]})
        check(n == len(tagged), f"raw COUNT by #t: expected {len(tagged)}, got {n}")

        controls = await control_characters(client, relay_url, url, keys)
    finally:
        await client.shutdown()

    return (
        f"python nostr-sdk round trip OK: published {len(sent)} events, fetched {len(sent)} by author+kind "
        f"and {len(tagged)} by #t, COUNT {len(sent)}/{len(tagged)}; {controls} control-character events "
        f"published, read back exactly and verified ({url})"
    )


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} ws://HOST:PORT/", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(run(sys.argv[1])))
        return 0
    except Mismatch as e:
        print(f"python roundtrip FAILED: {e}", file=sys.stderr)
    except Exception as e:  # SDK/transport errors: report them the same way
        print(f"python roundtrip FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
