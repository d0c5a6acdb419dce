// An MQTT client on MQTT.js (MQTT 3.1.1 and 5) with the command line and the JSON lines of
// interop/README.md.
'use strict'

const fs = require('node:fs')
const { parseArgs } = require('node:util')
const mqtt = require('mqtt')

// One JSON object per line, written synchronously: nothing is lost on process.exit.
const emit = (obj) => fs.writeSync(1, JSON.stringify(obj) + '\n')

function usage (message) {
  process.stderr.write(`mqttjs: ${message} (see interop/README.md)\n`)
  process.exit(2)
}

let o
try {
  o = parseArgs({
    strict: true,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      'client-id': { type: 'string' },
      mqtt: { type: 'string', default: '3' },
      'keep-alive': { type: 'string', default: '30' },
      clean: { type: 'string', default: 'true' },
      store: { type: 'string' },
      timeout: { type: 'string', default: '30' },
      reconnect: { type: 'string', default: 'true' },
      publish: { type: 'string' },
      topic: { type: 'string' },
      qos: { type: 'string', default: '1' },
      resume: { type: 'boolean', default: false },
      subscribe: { type: 'string' },
      idle: { type: 'string' }
    }
  }).values
} catch (e) {
  usage(e.message)
}
for (const k of ['host', 'port', 'ca', 'client-id']) if (o[k] === undefined) usage(`--${k} is required`)
if ((o.cert === undefined) !== (o.key === undefined)) usage('--cert and --key go together')
const actions = ['publish', 'resume', 'subscribe', 'idle'].filter((k) => o[k] !== undefined && o[k] !== false)
if (actions.length !== 1) usage('one action: --publish, --resume, --subscribe or --idle')
if (o.publish !== undefined && o.topic === undefined) usage('--publish needs --topic')
const int = (k, min, max) => {
  const n = Number(o[k])
  if (!/^[0-9]+$/.test(o[k]) || n < min || n > max) usage(`--${k} must be a number from ${min} to ${max}`)
  return n
}
const bool = (k) => {
  if (o[k] !== 'true' && o[k] !== 'false') usage(`--${k} is true or false`)
  return o[k] === 'true'
}
if (o.mqtt !== '3' && o.mqtt !== '5') usage('--mqtt is 3 or 5')
const port = int('port', 1, 65535)
const keepAlive = int('keep-alive', 0, 65535)
const timeout = int('timeout', 1, 1e6)
const qos = int('qos', 0, 1)
const idle = o.idle === undefined ? 0 : int('idle', 0, 1e6)
const reconnect = bool('reconnect')
const clean = o.resume ? false : bool('clean')
if (o.store !== undefined) {
  process.stderr.write('mqttjs: --store ignored: MQTT.js keeps its session state in memory only\n')
}
let payloads = []
if (o.publish !== undefined) {
  let data
  try {
    data = fs.readFileSync(o.publish)
  } catch (e) {
    usage(`--publish: ${e.message}`)
  }
  // Every line without its newline ('\n' only: a payload may hold any byte).
  let start = 0
  for (let i = data.indexOf(10); i !== -1; i = data.indexOf(10, start)) {
    payloads.push(data.subarray(start, i))
    start = i + 1
  }
  if (start < data.length) payloads.push(data.subarray(start))
}

let client
try {
  client = mqtt.connect({
    protocol: 'mqtts',
    host: o.host,
    port,
    ca: fs.readFileSync(o.ca),
    cert: o.cert === undefined ? undefined : fs.readFileSync(o.cert),
    key: o.key === undefined ? undefined : fs.readFileSync(o.key),
    rejectUnauthorized: true, // Node checks the name against the certificate, IP SANs too
    clientId: o['client-id'],
    protocolVersion: o.mqtt === '5' ? 5 : 4,
    keepalive: keepAlive,
    clean,
    // MQTT 5 keeps a session only with an expiry above 0 (the server caps it).
    properties: o.mqtt === '5' && !clean ? { sessionExpiryInterval: 86400 } : undefined,
    reconnectPeriod: reconnect ? 1000 : 0, // 0: MQTT.js does not reconnect
    connectTimeout: timeout * 1000
  })
} catch (e) {
  emit({ event: 'error', message: String(e.message || e) })
  process.exit(1)
}

let up = false
let everUp = false
let closing = false
let losses = 0
let acked = 0
let written = 0
let published = 0
let lastReason = 'connection closed'

function finish (ok) {
  if (closing) return
  closing = true
  emit({ event: 'done', published, acked })
  // A polite DISCONNECT when connected; in any case the process ends.
  if (up) client.end(false, {}, () => process.exit(ok ? 0 : 1))
  setTimeout(() => process.exit(ok ? 0 : 1), up ? 1000 : 0).unref()
  if (!up) process.exit(ok ? 0 : 1)
}

const timer = setTimeout(() => {
  if (!everUp) {
    emit({ event: 'connect_failed', reason: 'no CONNACK before the timeout' })
    process.exit(1)
  }
  finish(false)
}, timeout * 1000)

// MQTT.js emits 'error' for a refused CONNACK, TLS and socket errors (those with a code),
// 'disconnect' for an MQTT 5 DISCONNECT from the server, then 'close' for the connection's end
// whatever the cause: 'close' decides between connect_failed and lost.
client.on('error', (e) => { lastReason = String(e.message || e).trim() })
client.on('disconnect', (p) => { lastReason = `DISCONNECT reason ${p.reasonCode}` })
client.on('close', () => {
  if (closing) return
  if (up) {
    up = false
    losses++
    emit({ event: 'lost', reason: lastReason })
    // Without automatic reconnect nothing more can come: the action has failed.
    if (!reconnect) finish(false)
  } else {
    emit({ event: 'connect_failed', reason: lastReason })
    // A first connection that fails is not retried (as with the Paho clients).
    if (!everUp) {
      client.end(true)
      process.exit(1)
    }
  }
  lastReason = 'connection closed'
})
client.on('message', (topic) => process.stderr.write(`mqttjs: message on ${topic}\n`))
// A connection is up at its CONNACK. MQTT.js's 'connect' event comes later after a
// reconnection: it first resends its unacknowledged publishes one at a time, each after the
// previous one's PUBACK, and emits 'connect' once they are all acknowledged.
client.on('packetreceive', (p) => {
  if (p.cmd !== 'connack' || (p.reasonCode ?? p.returnCode ?? 0) !== 0) return
  up = true
  emit({ event: 'connected', session_present: Boolean(p.sessionPresent) })
})
client.on('connect', () => {
  if (everUp) return // a reconnection: MQTT.js has resent what was unacknowledged
  everUp = true
  run()
})

function run () {
  if (o.publish !== undefined) {
    // All at once: MQTT.js writes every publish as it comes. It has no window of its own
    // and does not hold back for an MQTT 5 server's receive maximum either.
    let refused = 0
    const check = () => {
      const done = qos === 1 ? acked : written
      if (done + refused === payloads.length) {
        clearTimeout(timer)
        finish(done === payloads.length)
      }
    }
    // A frame whose publish MQTT.js fails by itself (the connection closed under it, an
    // error without a reason code) is published again once connected: a vehicle keeps every
    // frame until its PUBACK. A reason code of 0x80 or more is the server's refusal: final.
    const settled = payloads.map(() => false)
    const send = (i) => {
      client.publish(o.topic, payloads[i], { qos }, (err, packet) => {
        if (settled[i] || closing) return
        // QoS 1: on the PUBACK, an error for an MQTT 5 reason code of 0x80 or more; QoS 0:
        // once written.
        if (err && qos === 1 && typeof err.code !== 'number') {
          process.stderr.write(`mqttjs: frame ${i + 1}: ${err.message || err}; publishing it again\n`)
          return again(i)
        }
        settled[i] = true
        if (err) {
          emit({ event: 'error', message: String(err.message || err) })
          refused++
          return check()
        }
        if (qos === 0) {
          written++
        } else {
          acked++
          emit({ event: 'acked', count: acked })
        }
        check()
      })
    }
    const again = (i) => {
      if (closing || settled[i]) return
      if (!up) return setTimeout(() => again(i), 100)
      send(i)
    }
    payloads.forEach((_, i) => {
      published++
      send(i)
    })
    check()
  } else if (o.resume) {
    // No disk store: nothing was persisted, so nothing is sent again.
    clearTimeout(timer)
    finish(true)
  } else if (o.subscribe !== undefined) {
    client.subscribe(o.subscribe, { qos }, (err, granted, packet) => {
      // A refused filter comes as err, with the SUBACK still in hand.
      const codes = packet && packet.granted ? packet.granted : (granted || []).map((g) => g.qos)
      if (codes.length) emit({ event: 'suback', codes })
      if (err && !codes.length) emit({ event: 'error', message: String(err.message || err) })
      clearTimeout(timer)
      finish(codes.length > 0 && codes.every((c) => c < 0x80))
    })
  } else {
    if (idle > timeout) return // the run's timer ends it, as a failure
    clearTimeout(timer)
    setTimeout(() => finish(losses === 0 && up), idle * 1000)
  }
}
