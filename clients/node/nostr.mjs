#!/usr/bin/env node
// A small command-line Nostr client on nostr-tools, for trying a relay by hand.
//
//   node clients/node/nostr.mjs publish "some text" [RELAY]   sign and publish a kind 1 note
//   node clients/node/nostr.mjs req '<filter JSON>' [RELAY]   print stored matches (JSONL) until EOSE
//
// RELAY defaults to ws://127.0.0.1:7777. The key is read from NOSTR_SECRET
// (64 hex characters); without it, one is made and kept in
// clients/node/.secret-key so every publish comes from the same author.
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { generateSecretKey, getPublicKey, finalizeEvent } from 'nostr-tools/pure'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import { bytesToHex, hexToBytes } from 'nostr-tools/utils'
import WebSocket from 'ws'

useWebSocketImplementation(WebSocket)

function fail(message) {
  console.error(`nostr: ${message}`)
  process.exit(1)
}

function secretKey() {
  if (process.env.NOSTR_SECRET) {
    if (!/^[0-9a-fA-F]{64}$/.test(process.env.NOSTR_SECRET)) fail('NOSTR_SECRET must be 64 hex characters')
    return hexToBytes(process.env.NOSTR_SECRET)
  }
  const file = join(dirname(fileURLToPath(import.meta.url)), '.secret-key')
  try {
    return hexToBytes(readFileSync(file, 'utf8').trim())
  } catch {
    const key = generateSecretKey()
    writeFileSync(file, bytesToHex(key) + '\n', { mode: 0o600 })
    return key
  }
}

const [command, argument, url = 'ws://127.0.0.1:7777'] = process.argv.slice(2)
if (!['publish', 'req'].includes(command) || argument === undefined) {
  fail("usage: nostr.mjs publish TEXT [RELAY] | nostr.mjs req 'FILTER' [RELAY]")
}

let relay
try {
  relay = await Relay.connect(url)
} catch (e) {
  fail(`cannot connect to ${url}: ${e.message ?? e} (is 'megalith serve' running?)`)
}

if (command === 'publish') {
  const key = secretKey()
  const event = finalizeEvent(
    { kind: 1, created_at: Math.floor(Date.now() / 1000), tags: [], content: argument },
    key,
  )
  try {
    const reason = await relay.publish(event)
    console.log(`published ${event.id} by ${getPublicKey(key)}${reason ? ` (${reason})` : ''}`)
  } catch (e) {
    relay.close()
    fail(`refused: ${e.message ?? e}`)
  }
  relay.close()
} else {
  let filter
  try {
    filter = JSON.parse(argument)
  } catch (e) {
    fail(`the filter is not JSON: ${e.message}`)
  }
  let refused = null
  await new Promise((resolve) => {
    const sub = relay.subscribe([filter], {
      onevent: (event) => console.log(JSON.stringify(event)),
      oneose: () => {
        sub.close()
        resolve()
      },
      onclose: (reason) => {
        if (reason && reason !== 'closed by caller') refused = reason
        resolve()
      },
      eoseTimeout: 60_000,
    })
  })
  relay.close()
  if (refused) fail(`the relay closed the subscription: ${refused}`)
}
