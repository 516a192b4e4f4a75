// A read fan-out group (the server's fan-out threshold set to 2, so a group of three is
// "large"): its messages are not in the inbox but come as group signals and are pulled from
// the group's timeline; the client still shows each once, in order, with unread badges.

import { after, before, test } from 'node:test';
import { Server, expectBubbles, launch, login, person, send, shootAll } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = new Server('[chat]\nfanout_threshold = 2\n');
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const PASSWORD = 'correct horse battery';

test('web client: a read fan-out group', { timeout: 120000 }, async () => {
  const tokens = [];
  for (const username of ['lena', 'mia', 'noor']) {
    await server.api('POST', '/v1/accounts', { username, password: PASSWORD });
    tokens.push((await server.api('POST', '/v1/sessions', { username, password: PASSWORD, device: 'script' })).token);
  }
  for (const to of [2, 3]) {
    await server.api('POST', '/v1/friends/requests', { to, note: '' }, tokens[0]);
    await server.api('POST', '/v1/friends/requests/1/accept', null, tokens[to - 1]);
  }
  const g = await server.api('POST', '/v1/groups', { name: 'Big room', members: [2, 3] }, tokens[0]);
  if (g.fanout !== 'read') throw new Error(`expected a read fan-out group, got ${g.fanout}`);

  const lena = await person(browser, server);
  const mia = await person(browser, server);
  try {
    await login(lena, 'lena');
    await login(mia, 'mia');
    await lena.locator('button.conv', { hasText: 'Big room' }).click();
    await send(lena, 'first in the big room');
    await expectBubbles(lena, ['first in the big room']);
    // Mia is at her list: the badge counts the creation and the message.
    const room = mia.locator('button.conv', { hasText: 'Big room' });
    await room.getByText('first in the big room').waitFor();
    await room.locator('.badge', { hasText: '2' }).waitFor();
    await room.click();
    await expectBubbles(mia, ['first in the big room']);
    await send(mia, 'hello from mia');
    await expectBubbles(mia, ['first in the big room', 'hello from mia']);
    // Noor writes through the API meanwhile: both browsers get it from the group timeline.
    await server.api('POST', '/v1/messages', { conv: g.conv, client_msg_id: 'n1', content: { text: 'noor here' } }, tokens[2]);
    await send(lena, 'welcome both');
    const all = ['first in the big room', 'hello from mia', 'noor here', 'welcome both'];
    await expectBubbles(lena, all);
    await expectBubbles(mia, all);
    // Mia opened the room and Noor wrote after it: Lena's first message is read by both.
    await lena.locator('.msgs li.msg.mine').first().getByRole('button', { name: /read by 2/i }).waitFor();
  } catch (e) {
    await shootAll('failed-large-group');
    throw e;
  }
});
