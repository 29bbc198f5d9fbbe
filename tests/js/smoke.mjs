// The official npm e2b SDK against a running silo: create, run, write, read, kill.
// Expects E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (the pytest wrapper sets them).
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'

const sbx = await Sandbox.create('base', { timeoutMs: 60_000 })
try {
  const run = await sbx.commands.run('echo hello from $(whoami)')
  assert.equal(run.exitCode, 0)
  assert.equal(run.stdout, 'hello from user\n')

  await sbx.files.write('/home/user/js.txt', 'written by node')
  assert.equal(await sbx.files.read('/home/user/js.txt'), 'written by node')

  const info = await Sandbox.getInfo(sbx.sandboxId)
  assert.equal(info.sandboxId, sbx.sandboxId)
} finally {
  await sbx.kill()
}
assert.equal(await Sandbox.kill(sbx.sandboxId), false, 'a killed sandbox is gone')
console.log('js smoke: 1 passed, 0 failed')
