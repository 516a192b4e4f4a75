// History: a long conversation opens at its newest page and pages older messages in as the
// reader scrolls up, each once and in order.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Server, bubbles, conv, launch, login, person, shootAll, until } from './harness.mjs';

let server;
let browser;

before(async () => {
  // The script seeds 130 messages at once: over the default per-user send burst (100),
  // which is not what this test is about.
  server = new Server('[limits]\nsends_burst = 1000.0\n');
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const TOTAL = 130;

test('web client: scrolling up loads older messages', { timeout: 120000 }, async () => {
  const tokens = [];
  for (const username of ['fay', 'gus']) {
    await server.api('POST', '/v1/accounts', { username, password: 'correct horse battery' });
    tokens.push((await server.api('POST', '/v1/sessions',
      { username, password: 'correct horse battery', device: 'script' })).token);
  }
  await server.api('POST', '/v1/friends/requests', { to: 2, note: '' }, tokens[0]);
  await server.api('POST', '/v1/friends/requests/1/accept', null, tokens[1]);
  for (let i = 1; i <= TOTAL; i++) {
    await server.api('POST', '/v1/messages',
      { to: 2, client_msg_id: `h${i}`, content: { text: `message ${i}` } }, tokens[0]);
  }

  const gus = await person(browser, server, { width: 420, height: 700 });
  try {
    await login(gus, 'gus');
    await conv(gus, 'd1-2').locator('.badge', { hasText: String(TOTAL) }).waitFor();
    await conv(gus, 'd1-2').click();
    await gus.locator('.msgs').getByText(`message ${TOTAL}`).waitFor();
    const first = await bubbles(gus);
    assert.ok(first.length < TOTAL, `the first page is a page (${first.length})`);
    // Scroll to the top until the start of the conversation shows.
    for (let i = 0; i < 20; i++) {
      if (await gus.getByText('Start of the conversation').isVisible()) break;
      const shown = (await bubbles(gus)).length;
      await gus.locator('.msgs').evaluate((el) => { el.scrollTop = 0; });
      await until(gus, (n) => document.querySelectorAll('.msgs li.msg').length > n
        || !!document.querySelector('.msgs li.more.muted'), shown);
    }
    const all = await bubbles(gus);
    assert.deepEqual(all, Array.from({ length: TOTAL }, (_, i) => `message ${i + 1}`));
  } catch (e) {
    await shootAll('failed-history');
    throw e;
  }
});
