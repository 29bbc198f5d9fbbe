// The official npm @e2b/code-interpreter SDK against a running silo: state across calls,
// a rich result, an error, JS code, contexts. Expects E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
import assert from 'node:assert/strict'
import { Sandbox } from '@e2b/code-interpreter'

const sbx = await Sandbox.create({ timeoutMs: 120_000 })
try {
  await sbx.runCode('x = 41')
  assert.equal((await sbx.runCode('x + 1')).text, '42')

  const seen = []
  const printed = await sbx.runCode('print("streamed")', { onStdout: (m) => seen.push(m.line) })
  assert.deepEqual(seen, ['streamed\n'])
  assert.deepEqual(printed.logs.stdout, ['streamed\n'])

  const df = await sbx.runCode('import pandas as pd; pd.DataFrame({"a": [1, 2]})')
  assert.ok(df.results[0].html.includes('<table'))

  const failed = await sbx.runCode('1 / 0')
  assert.equal(failed.error.name, 'ZeroDivisionError')

  assert.equal((await sbx.runCode('[1, 2].map((n) => n * 2).length', { language: 'js' })).text, '2')

  const ctx = await sbx.createCodeContext()
  assert.equal((await sbx.runCode('"x" in globals()', { context: ctx })).text, 'False')
  await sbx.removeCodeContext(ctx)
} finally {
  await sbx.kill()
}
console.log('js code interpreter smoke: 1 passed, 0 failed')
