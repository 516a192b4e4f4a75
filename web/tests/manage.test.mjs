// Managing friends and groups from the browser: decline, remove, block (and the clear error a
// blocked send gets), and the group actions the API allows — rename, remove a member, leave.

import { after, before, test } from 'node:test';
import {
  Server, conv, expectBubbles, launch, login, person, send, shootAll, until,
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

const PASSWORD = 'correct horse battery';

async function account(username) {
  await server.api('POST', '/v1/accounts', { username, password: PASSWORD });
  return (await server.api('POST', '/v1/sessions', { username, password: PASSWORD, device: 'script' })).token;
}

test('web client: decline, remove, block; rename, remove, leave', { timeout: 120000 }, async () => {
  // ids 1..4
  const [hana, ivan, jade, kurt] = [await account('hana'), await account('ivan'), await account('jade'), await account('kurt')];
  for (const [from, to, token] of [[1, 2, hana], [1, 3, hana]]) {
    await server.api('POST', '/v1/friends/requests', { to, note: '' }, token);
    await server.api('POST', `/v1/friends/requests/${from}/accept`, null, to === 2 ? ivan : jade);
  }
  await server.api('POST', '/v1/friends/requests', { to: 1, note: 'remember me?' }, kurt);

  const page = await person(browser, server);
  page.on('dialog', (d) => d.accept()); // "Remove …?", "Block …?", "Leave …?"
  try {
    await login(page, 'hana');
    // Decline Kurt's request.
    await page.getByRole('button', { name: /Friends/ }).click();
    const req = page.locator('li[data-request="4"]');
    await req.getByText('“remember me?”').waitFor();
    await req.getByRole('button', { name: 'Decline' }).click();
    await until(page, () => !document.querySelector('li[data-request]'));

    // A group with both friends; rename it; remove Jade.
    await page.getByRole('button', { name: '+ Group' }).click();
    await page.fill('#group-name', 'Book club');
    await page.getByLabel('ivan').check();
    await page.getByLabel('jade').check();
    await page.getByRole('button', { name: 'Create' }).click();
    await page.locator('[data-test="chat-title"]', { hasText: 'Book club' }).waitFor();
    await page.getByRole('button', { name: 'Group', exact: true }).click();
    let dialog = page.locator('dialog[open]');
    await dialog.locator('#rename').fill('Reading circle');
    await dialog.getByRole('button', { name: 'Rename' }).click();
    await page.locator('.msgs li.sys', { hasText: 'renamed the group to “Reading circle”' }).waitFor();
    dialog = page.locator('dialog[open]');
    await dialog.locator('li[data-member="3"]').getByRole('button', { name: 'Remove' }).click();
    await page.locator('.msgs li.sys', { hasText: 'You removed jade' }).waitFor();
    await page.locator('dialog[open]').getByRole('button', { name: 'Close' }).click();

    // Ivan leaves (through the API): the group's timeline says so.
    await server.api('POST', `/v1/groups/${(await server.api('GET', '/v1/conversations', null, ivan))
      .conversations.find((c) => c.name === 'Reading circle').conv.slice(1)}/leave`, null, ivan);
    await page.locator('.msgs li.sys', { hasText: 'ivan left' }).waitFor();

    // Remove Jade as a friend; block Ivan, whose messages then fail with a clear reason.
    await page.getByRole('button', { name: 'Back to conversations' }).click();
    await page.getByRole('button', { name: /Friends/ }).click();
    await page.locator('li[data-friend="3"]').getByRole('button', { name: 'Remove' }).click();
    await until(page, () => !document.querySelector('li[data-friend="3"]'));
    await page.locator('li[data-friend="2"]').getByRole('button', { name: 'Chat' }).click();
    await send(page, 'before the block');
    await expectBubbles(page, ['before the block']);
    await page.getByRole('button', { name: /Friends/ }).click();
    await page.locator('li[data-friend="2"]').getByRole('button', { name: 'Block' }).click();
    await page.getByRole('button', { name: /^Chats/ }).click();
    await conv(page, 'd1-2').click();
    await send(page, 'after the block');
    await page.locator('li.msg.pending[data-state="failed"]', { hasText: 'after the block' })
      .getByText(/Not sent/).waitFor();
    await page.locator('li.msg.pending').getByRole('button', { name: 'Discard' }).click();
    await expectBubbles(page, ['before the block']);
  } catch (e) {
    await shootAll('failed-manage');
    throw e;
  }
});
