// A server crash and restart mid-conversation, then a network drop on one side: the browsers
// show the connection state, a message written meanwhile stays pending and goes out after
// the reconnection, and afterwards each screen shows every message exactly once, in order.
// Also: the session survives a reload, and sending works from the keyboard alone.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Server, bubbles, conv, expectBubbles, launch, login, online, person, send, shootAll, shot,
} from './harness.mjs';

let server;
let browser;

before(async () => {
  server = new Server();
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Two friends, set up through the HTTP API (the chat test does it through the UI). */
async function friends() {
  for (const username of ['dora', 'emil']) {
    await server.api('POST', '/v1/accounts', { username, password: 'correct horse battery' });
  }
  const t = async (username) => (await server.api('POST', '/v1/sessions',
    { username, password: 'correct horse battery', device: 'setup' })).token;
  const [dora, emil] = [await t('dora'), await t('emil')];
  await server.api('POST', '/v1/friends/requests', { to: 2, note: 'hi' }, dora);
  await server.api('POST', '/v1/friends/requests/1/accept', null, emil);
  // Log the setup devices out, so the browsers are the only devices.
  await server.api('DELETE', '/v1/sessions', null, dora);
  await server.api('DELETE', '/v1/sessions', null, emil);
}

test('web client: a server restart loses and duplicates nothing', { timeout: 180000 }, async () => {
  try {
    await scenario();
  } catch (e) {
    await shootAll('failed-restart');
    throw e;
  }
});

async function scenario() {
  await friends();
  const dora = await person(browser, server);
  const emil = await person(browser, server);
  await login(dora, 'dora');
  await login(emil, 'emil');

  // Dora works from the keyboard alone: Friends tab, the Chat button, type, Enter.
  await dora.getByRole('button', { name: 'Friends' }).focus();
  await dora.keyboard.press('Enter');
  await dora.locator('li[data-friend="2"] button', { hasText: 'Chat' }).focus();
  await dora.keyboard.press('Enter');
  await dora.locator('#composer:focus').waitFor();
  await dora.keyboard.type('one');
  await dora.keyboard.press('Enter');
  await expectBubbles(dora, ['one']);

  await conv(emil, 'd1-2').click();
  await send(emil, 'two');
  await send(dora, 'three');
  const before = ['one', 'two', 'three'];
  await expectBubbles(dora, before);
  await expectBubbles(emil, before);

  // The session survives a reload (and the reload is a reconnection that catches up).
  await emil.reload();
  await online(emil);
  await conv(emil, 'd1-2').click();
  await expectBubbles(emil, before);

  // Crash. Both show it; a message written now waits, visibly, and is not lost.
  await server.kill();
  await dora.locator('.conn:not([data-conn="online"])').waitFor();
  await emil.locator('.conn:not([data-conn="online"])').waitFor();
  await send(dora, 'written while the server was down');
  await dora.locator('li.msg.pending[data-state="retrying"]', { hasText: 'written while the server was down' }).waitFor();
  await shot(dora, 'offline-pending');

  await server.start(); // same port, same data dir
  await online(dora);
  await online(emil);
  const all = [...before, 'written while the server was down'];
  await expectBubbles(dora, all);
  await expectBubbles(emil, all);

  // And the conversation goes on both ways.
  await send(emil, 'back again');
  await send(dora, 'welcome back');
  all.push('back again', 'welcome back');
  await expectBubbles(dora, all);
  await expectBubbles(emil, all);

  // The network drops on Emil's side: he writes anyway, Dora goes on; when the network is
  // back his message goes out once and he catches up with hers.
  await emil.context().setOffline(true);
  await emil.locator('.conn:not([data-conn="online"])').waitFor();
  await send(emil, 'typed in a tunnel');
  await emil.locator('li.msg.pending', { hasText: 'typed in a tunnel' }).waitFor();
  await send(dora, 'are you in a tunnel?');
  await expectBubbles(dora, [...all, 'are you in a tunnel?']);
  await emil.context().setOffline(false);
  await online(emil);
  all.push('are you in a tunnel?', 'typed in a tunnel');
  await expectBubbles(emil, all);
  await expectBubbles(dora, all);
  for (const p of [dora, emil]) {
    const texts = await bubbles(p);
    assert.deepEqual(texts, all);
  }
}
