// The admin page, on the admin API's own listener: a wrong key is refused, the right one
// shows who is online; a user found by username is banned (their login refused) and
// unbanned, their device logged out; an after-event the app's server did not take waits as
// a dead letter and is replayed.

import { createHash } from 'node:crypto';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, launch } from './harness.mjs';

const KEY = 'the admin key of the web tests, long enough';
const sha = createHash('sha256').update(KEY).digest('hex');

let server;
let browser;

before(async () => {
  // After-events go to a port nobody listens on, tried once: they become dead letters.
  server = new Server(`[admin]\nkeys = ["web:${sha}"]\nhttp_addr = "127.0.0.1:0"\n`
    + '[webhooks]\nsecrets = ["a secret for the web tests"]\n'
    + '[webhooks.after]\nurl = "http://127.0.0.1:9/events"\nmax_attempts = 1\ntimeout_ms = 500\n');
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const PASSWORD = 'correct horse battery';

test('admin page: key, online, ban and unban, log out a device, replay a dead letter', { timeout: 120000 }, async () => {
  assert.ok(server.admin, 'the admin API has a listener of its own');
  await server.api('POST', '/v1/accounts', { username: 'oscar', password: PASSWORD });
  const token = (await server.api('POST', '/v1/sessions', { username: 'oscar', password: PASSWORD, device: 'phone' })).token;

  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('pageerror', (e) => console.error('page error:', e.message));
  {
    await page.goto(`http://${server.admin}/admin/`);
    await page.fill('#admin-key', 'not the key');
    await page.getByRole('button', { name: 'Use this key' }).click();
    await page.getByRole('alert').filter({ hasText: 'unauthenticated' }).waitFor();

    await page.fill('#admin-key', KEY);
    await page.getByRole('button', { name: 'Use this key' }).click();
    await page.locator('[data-test="online"]').filter({ hasText: '0 connections' }).waitFor();

    await page.fill('#find-user', 'oscar');
    await page.getByRole('button', { name: 'Find' }).click();
    await page.locator('[data-device="phone"]').waitFor();
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByText('No device logged in').waitFor();
    const me = await fetch(`${server.url}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal((await me.json()).code, 'token_revoked');

    await page.getByRole('button', { name: 'Ban' }).click();
    await page.locator('[data-test="banned"]').filter({ hasText: 'banned' }).waitFor();
    const refused = await fetch(`${server.url}/v1/sessions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'oscar', password: PASSWORD, device: 'laptop' }),
    });
    assert.equal((await refused.json()).code, 'banned');
    await page.getByRole('button', { name: 'Unban' }).click();
    await page.locator('[data-test="banned"]').filter({ hasText: 'active' }).waitFor();

    // oscar's account.created, banned and unbanned events found nobody listening.
    for (let i = 0; i < 50; i++) {
      await page.getByRole('button', { name: 'Refresh' }).click();
      if (await page.locator('[data-dead]').count() > 0) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    const dead = page.locator('[data-dead]').first();
    await dead.waitFor();
    const id = await dead.getAttribute('data-dead');
    await dead.getByRole('button', { name: 'Replay' }).click();
    await page.locator(`[data-dead="${id}"]`).waitFor({ state: 'detached' });
  }
  await context.close();
});
