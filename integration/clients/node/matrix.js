// node-postgres cells of pgverifyproxy's client compatibility matrix.
//
// Usage (after `npm ci` in this directory):
//
//   node matrix.js QUERY NAME CONFIG [NAME CONFIG ...]
//
// For each NAME CONFIG pair it connects with new pg.Client(CONFIG), CONFIG
// being the client's configuration object as JSON (host, port, user,
// password, database, ssl, ...), runs QUERY, which must return one text
// value, and prints one line, fields separated by tabs:
//
//   NAME  ok     VALUE  tls=true|false
//   NAME  error  MESSAGE
//
// where tls tells whether the client's own leg used TLS and MESSAGE is the
// error's message followed by the server's DETAIL and HINT fields when it
// has them (node-postgres keeps them as separate properties), newlines
// replaced by " / ". The exit status is 0 when every line was printed
// (whatever the outcomes), 2 on a usage error. pgverifyproxy's integration
// tests (integration/matrix_test.go) run it through the proxy.
'use strict'

const { Client } = require('pg')

// oneLine joins the non-empty lines of s with " / ".
function oneLine(s) {
  return String(s)
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .join(' / ')
}

// describe returns what a user sees of an error: message, DETAIL, HINT.
function describe(err) {
  let s = err && err.message ? err.message : String(err)
  if (err && err.detail) s += '\nDETAIL: ' + err.detail
  if (err && err.hint) s += '\nHINT: ' + err.hint
  return oneLine(s)
}

// runCell connects, runs the query and returns the fields after NAME.
async function runCell(query, config) {
  const client = new Client(config)
  // An error after connect (e.g. the server going away) must not crash the
  // script: it shows up in the awaited calls below.
  client.on('error', () => {})
  try {
    await client.connect()
  } catch (err) {
    return ['error', describe(err)]
  }
  try {
    const res = await client.query({ text: query, rowMode: 'array' })
    const stream = client.connection.stream
    const tls = stream && stream.encrypted === true ? 'true' : 'false'
    return ['ok', String(res.rows[0][0]), 'tls=' + tls]
  } catch (err) {
    return ['error', describe(err)]
  } finally {
    await client.end().catch(() => {})
  }
}

async function main(argv) {
  if (argv.length < 3 || argv.length % 2 !== 1) {
    console.error('usage: node matrix.js QUERY NAME CONFIG [NAME CONFIG ...]')
    return 2
  }
  const query = argv[0]
  for (let i = 1; i < argv.length; i += 2) {
    const name = argv[i]
    let fields
    try {
      fields = await runCell(query, JSON.parse(argv[i + 1]))
    } catch (err) {
      fields = ['error', describe(err)]
    }
    process.stdout.write([name, ...fields].join('\t') + '\n')
  }
  return 0
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (err) => {
    console.error(err)
    process.exitCode = 1
  }
)
