#!/usr/bin/env node
// Round trip through a NIP-01 relay with nostr-tools (Relay over the `ws` package).
//
// Usage: node roundtrip.mjs ws://127.0.0.1:PORT/
//
// 0. fetches the NIP-11 document (nostr-tools/nip11) and checks it names NIPs 1 and 45;
// 1. subscribes to a fresh key's kind-1 notes and waits for EOSE (nothing stored yet);
// 2. publishes 3 signed notes, awaiting each publish (nostr-tools rejects on OK false);
// 3. checks the open subscription got each one live, after EOSE, with the exact ids;
// 4. opens a second subscription and checks the 3 stored events come back before EOSE;
// 5. closes the first subscription (CLOSE), publishes a 4th note and checks it
//    reaches only the second one, then closes that;
// 6. publishes one note per control character U+0001..U+001F and U+007F (and one
//    with all of them), each in the content and in tag values: nostr-tools hashes
//    them as JSON.stringify writes them (\u00xx); each must get OK true, come back
//    on a new subscription with the exact strings, and pass verifyEvent, both as
//    nostr-tools delivered it and as a fresh copy of the raw frame; then closes
//    the connection;
// 7. NIP-42: publishes a DM (kind 4) to a fresh recipient; a REQ for it before
//    AUTH is CLOSED with auth-required:; a second connection authenticates as
//    the recipient with relay.auth (nostr-tools signs the challenge) and gets
//    the DM back, verified.
// Exits 1 with a message on any mismatch.
import { generateSecretKey, getPublicKey, finalizeEvent, verifyEvent } from 'nostr-tools/pure'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { fetchRelayInformation } from 'nostr-tools/nip11'
import WebSocket from 'ws'

// Every frame the relay sends, raw: nostr-tools silently drops events for
// subscriptions it has closed, so checking CLOSE needs the wire.
const frames = []
let socket = null // the connection, to wait for its closing handshake at the end
class RecordingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args)
    socket = this
    this.on('message', (data) => {
      try {
        frames.push(JSON.parse(data.toString()))
      } catch {
        frames.push(data.toString()) // not JSON: kept raw; nostr-tools reports it itself
      }
    })
  }
}
useWebSocketImplementation(RecordingWebSocket)

const STEP_MS = 10_000 // time allowed for each wait (EOSE, OK, live delivery)
// nostr-tools calls oneose by itself when EOSE has not come within eoseTimeout;
// set it far past STEP_MS so only a real EOSE from the relay can fire it.
const EOSE_FALLBACK_MS = 10 * STEP_MS

class Mismatch extends Error {}

function check(cond, what) {
  if (!cond) throw new Mismatch(what)
}

// Resolve when pred() holds, polling; reject with `what` after STEP_MS.
function waitFor(pred, what) {
  return new Promise((resolve, reject) => {
    const start = Date.now()
    const tick = () => {
      if (pred()) return resolve()
      if (Date.now() - start > STEP_MS) return reject(new Mismatch(`timed out after ${STEP_MS} ms waiting for ${what}`))
      setTimeout(tick, 20)
    }
    tick()
  })
}

// Open a subscription that records what arrives before and after EOSE.
function subscribe(relay, filter, label) {
  const s = { label, before: [], after: [], eose: false, closedReason: null, invalid: [] }
  s.sub = relay.subscribe([filter], {
    eoseTimeout: EOSE_FALLBACK_MS,
    onevent: (e) => (s.eose ? s.after : s.before).push(e),
    oninvalidevent: (e) => s.invalid.push(e),
    oneose: () => (s.eose = true),
    onclose: (reason) => (s.closedReason = reason),
  })
  return s
}

const sorted = (xs) => [...xs].sort()
const sameIds = (events, ids) => JSON.stringify(sorted(events.map((e) => e.id))) === JSON.stringify(sorted(ids))

const hex4 = (c) => c.toString(16).toUpperCase().padStart(4, '0')

// Step 6: returns the number of events published and checked.
async function controlCharacters(relay, sk, pk, now) {
  const codes = []
  for (let c = 0x01; c <= 0x1f; c++) codes.push(c)
  codes.push(0x7f)
  const topic = `ctl-${pk.slice(0, 8)}`
  const templates = codes.map((c) => {
    const ch = String.fromCharCode(c)
    return {
      content: `control U+${hex4(c)} [${ch}] ${ch}${ch}`,
      tags: [['t', topic], ['x', `${ch}`, `a${ch}b`], ['client', `roundtrip.mjs ${ch}`]],
    }
  })
  const all = String.fromCharCode(...codes)
  templates.push({ content: `all of them [${all}]`, tags: [['t', topic], ['x', all]] })

  const sent = new Map() // id -> event
  for (const t of templates) {
    const event = finalizeEvent({ kind: 1, created_at: now, tags: t.tags, content: t.content }, sk)
    try {
      await relay.publish(event)
    } catch (err) {
      throw new Mismatch(`publish of ${JSON.stringify(t.content)} (${event.id}) not accepted: ${err.message}`)
    }
    sent.set(event.id, event)
  }

  const sub = subscribe(relay, { kinds: [1], authors: [pk], '#t': [topic] }, 'controls')
  await waitFor(() => sub.eose || sub.closedReason !== null, 'EOSE on the control-character subscription')
  check(sub.closedReason === null, `control-character subscription CLOSED: ${sub.closedReason}`)
  check(sub.invalid.length === 0, `nostr-tools found ${sub.invalid.length} events invalid: ${JSON.stringify(sub.invalid.map((e) => e.content))}`)
  check(sameIds(sub.before, [...sent.keys()]), `control-character events back: ${sub.before.length}, expected ${sent.size}`)
  const same = (got, want) =>
    got.content === want.content && JSON.stringify(got.tags) === JSON.stringify(want.tags) && got.pubkey === want.pubkey
  for (const e of sub.before) {
    const want = sent.get(e.id)
    check(same(e, want), `event ${e.id} came back as ${JSON.stringify(e)}, sent ${JSON.stringify(want)}`)
    // A fresh object: verifyEvent caches its verdict on the event it was given.
    check(verifyEvent(JSON.parse(JSON.stringify(e))), `event ${JSON.stringify(e.content)} does not verify`)
  }
  // The frames as the relay wrote them, parsed anew.
  const raw = frames.filter((f) => f[0] === 'EVENT' && f[1] === sub.sub.id).map((f) => f[2])
  check(raw.length === sent.size, `${raw.length} raw EVENT frames for the control-character subscription, expected ${sent.size}`)
  for (const e of raw) {
    check(sent.has(e.id) && same(e, sent.get(e.id)), `raw frame event ${e.id} differs from what was sent`)
    check(verifyEvent(e), `raw frame event ${JSON.stringify(e.content)} does not verify`)
  }
  sub.sub.close()
  return sent.size
}

// Step 7: a DM is refused before AUTH and served after it, to its recipient.
async function directMessage(relay, url, sk, now) {
  const rk = generateSecretKey()
  const rpk = getPublicKey(rk)
  const dm = finalizeEvent({ kind: 4, created_at: now, tags: [['p', rpk]], content: 'bm90IHJlYWxseQ==?iv=AAAAAAAAAAAAAAAAAAAAAA==' }, sk)
  try {
    await relay.publish(dm)
  } catch (err) {
    throw new Mismatch(`publish of the DM ${dm.id} not accepted: ${err.message}`)
  }
  const before = subscribe(relay, { kinds: [4], '#p': [rpk] }, 'dm before auth')
  await waitFor(() => before.eose || before.closedReason !== null, 'CLOSED for a DM read before AUTH')
  check(
    typeof before.closedReason === 'string' && before.closedReason.includes('auth-required:'),
    `a DM read before AUTH: ${before.eose ? `EOSE with ${before.before.length} events` : `closed: ${before.closedReason}`}`,
  )

  const second = await Relay.connect(url)
  try {
    await waitFor(() => second.challenge !== undefined, 'the AUTH challenge on a new connection')
    try {
      await second.auth(async (template) => finalizeEvent(template, rk))
    } catch (err) {
      throw new Mismatch(`AUTH as the recipient refused: ${err.message}`)
    }
    const after = subscribe(second, { kinds: [4], '#p': [rpk] }, 'dm after auth')
    await waitFor(() => after.eose || after.closedReason !== null, 'EOSE for a DM read after AUTH')
    check(after.closedReason === null, `a DM read after AUTH was CLOSED: ${after.closedReason}`)
    check(after.before.length === 1 && after.before[0].id === dm.id, `after AUTH the recipient got ${after.before.length} DMs`)
    check(verifyEvent(JSON.parse(JSON.stringify(after.before[0]))), 'the DM does not verify')
    after.sub.close()
  } finally {
    second.close()
  }
  return 'a DM refused before AUTH (auth-required:), served after relay.auth as its recipient'
}

async function run(url) {
  const sk = generateSecretKey()
  const pk = getPublicKey(sk)
  const filter = { kinds: [1], authors: [pk] }

  // 0. NIP-11 (GET on the relay URL over http with Accept: application/nostr+json).
  const info = await fetchRelayInformation(url)
  const nips = info.supported_nips
  check(
    Array.isArray(nips) && nips.includes(1) && nips.includes(42) && nips.includes(45),
    `NIP-11 supported_nips ${JSON.stringify(nips)} lacks 1, 42 or 45`,
  )

  const relay = await Relay.connect(url)
  const notices = []
  relay.onnotice = (msg) => notices.push(msg)
  try {
    // 1. Live subscription: the key is new, so EOSE comes with nothing before it.
    const live = subscribe(relay, filter, 'live')
    await waitFor(() => live.eose || live.closedReason !== null, 'EOSE on the first subscription')
    check(live.closedReason === null, `first subscription CLOSED: ${live.closedReason}`)
    check(live.before.length === 0, `first subscription: ${live.before.length} stored events before EOSE, expected 0`)

    // 2. Publish three notes; publish() resolves on OK true and rejects on OK false or timeout.
    const now = Math.floor(Date.now() / 1000)
    const sent = []
    for (let i = 1; i <= 3; i++) {
      const event = finalizeEvent(
        { kind: 1, created_at: now, tags: i === 1 ? [['t', 'megalith']] : [], content: `megalith node round trip ${i} ${pk.slice(0, 8)}` },
        sk,
      )
      try {
        await relay.publish(event)
      } catch (err) {
        throw new Mismatch(`publish of ${event.id} not accepted: ${err.message}`)
      }
      sent.push(event)
    }
    const ids = sent.map((e) => e.id)

    // 3. Each one arrives live, after EOSE, exactly once.
    await waitFor(() => live.after.length >= sent.length, `${sent.length} live events (have ${live.after.length})`)
    check(sameIds(live.after, ids), `live events ${JSON.stringify(live.after.map((e) => e.id))}, expected ${JSON.stringify(ids)}`)
    for (const e of live.after) {
      const want = sent.find((s) => s.id === e.id)
      check(e.content === want.content && e.pubkey === pk && verifyEvent(e), `live event ${e.id} differs from what was sent`)
    }
    check(live.invalid.length === 0, `first subscription got ${live.invalid.length} invalid events`)

    // 4. A second subscription gets the stored events before its EOSE.
    const stored = subscribe(relay, filter, 'stored')
    await waitFor(() => stored.eose || stored.closedReason !== null, 'EOSE on the second subscription')
    check(stored.closedReason === null, `second subscription CLOSED: ${stored.closedReason}`)
    check(sameIds(stored.before, ids), `stored events before EOSE ${JSON.stringify(stored.before.map((e) => e.id))}, expected ${JSON.stringify(ids)}`)
    check(stored.after.length === 0, `second subscription: ${stored.after.length} unexpected events after EOSE`)
    // NIP-01 order: newest first, ties broken by lowest id (all three share created_at).
    check(
      JSON.stringify(stored.before.map((e) => e.id)) === JSON.stringify(sorted(ids)),
      `stored events not in NIP-01 order: ${JSON.stringify(stored.before.map((e) => e.id))}`,
    )

    // Nothing extra came on the first subscription meanwhile.
    check(live.after.length === sent.length, `first subscription got ${live.after.length} live events, expected ${sent.length}`)

    // 5. CLOSE the first subscription; a 4th note must then reach only the second.
    live.sub.close()
    const fourth = finalizeEvent({ kind: 1, created_at: now, tags: [], content: `megalith node round trip 4 ${pk.slice(0, 8)}` }, sk)
    try {
      await relay.publish(fourth)
    } catch (err) {
      throw new Mismatch(`publish of ${fourth.id} not accepted: ${err.message}`)
    }
    await waitFor(() => stored.after.some((e) => e.id === fourth.id), `the 4th event live on the second subscription`)
    await new Promise((r) => setTimeout(r, 200)) // room for a (wrong) delivery to the closed one
    const leaked = frames.filter((f) => f[0] === 'EVENT' && f[1] === live.sub.id && f[2]?.id === fourth.id)
    check(leaked.length === 0, `relay sent ${fourth.id} to subscription ${live.sub.id} after its CLOSE`)
    check(stored.after.length === 1, `second subscription got ${stored.after.length} live events, expected 1`)

    stored.sub.close()

    // 6. Control characters in content and tags.
    const controls = await controlCharacters(relay, sk, pk, now)

    // 7. NIP-42.
    const auth = await directMessage(relay, url, sk, now)

    await new Promise((r) => setImmediate(r)) // let nostr-tools flush the CLOSE before closing the socket
    check(notices.length === 0, `relay sent NOTICE(s): ${JSON.stringify(notices)}`)
    return (
      `node nostr-tools round trip OK: published ${sent.length + 1}, ${live.after.length} live after EOSE, ` +
      `${stored.before.length} stored before EOSE, CLOSE honoured; ${controls} control-character events ` +
      `published, read back exactly and verified; ${auth} (${url})`
    )
  } finally {
    relay.close()
    // Exit only once the socket has closed, so the last CLOSE is not lost in an unflushed write.
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      await new Promise((resolve) => {
        socket.once('close', resolve)
        setTimeout(resolve, 2000)
      })
    }
  }
}

const url = process.argv[2]
if (!url) {
  console.error('usage: node roundtrip.mjs ws://HOST:PORT/')
  process.exit(2)
}
try {
  console.log(await run(url))
  process.exit(0)
} catch (err) {
  console.error(`node roundtrip FAILED: ${err instanceof Mismatch ? err.message : err.stack || err}`)
  process.exit(1)
}
