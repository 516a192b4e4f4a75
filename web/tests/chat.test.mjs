// Two people in two browser contexts: register, befriend, chat both ways, unread badges, read
// receipts, typing and recall; a second tab as a second device of one of them, a third context
// as a second device of the other; then a group of three with its who-read list and @mention.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  Server, bubbles, conv, expectBubbles, launch, login, online, person, register, send, shootAll, shot, until,
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

test('web client: friends, 1:1 chat, two devices, a group of three', { timeout: 180000 }, async () => {
  try {
    await scenario();
  } catch (e) {
    await shootAll('failed-chat');
    throw e;
  }
});

async function scenario() {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  // Every frame Alice's tab receives over its WebSocket (text mode: JSON).
  const aliceFrames = [];
  alice.on('websocket', (ws) => ws.on('framereceived', (f) => {
    try { aliceFrames.push(JSON.parse(f.payload)); } catch { /* not JSON: not ours */ }
  }));
  await shot(alice, 'login');
  await register(alice, 'alice', 'Alice');
  await register(bob, 'bob', 'Bob');
  const ab = 'd1-2';

  // Friends: search, a request with a note, accept.
  await alice.getByRole('button', { name: 'Friends' }).click();
  await alice.fill('#find', 'bob');
  await alice.getByRole('button', { name: 'Search' }).click();
  await alice.fill('#note', 'hi bob, it is alice');
  await alice.getByRole('button', { name: 'Send request' }).click();
  await alice.getByText('waiting for an answer').waitFor();

  await bob.getByRole('button', { name: /Friends/ }).click();
  const req = bob.locator('li[data-request="1"]');
  await req.getByText('“hi bob, it is alice”').waitFor();
  await shot(bob, 'friend-request');
  await req.getByRole('button', { name: 'Accept' }).click();
  await bob.locator('li[data-friend="1"]').waitFor();
  await alice.locator('li[data-friend="2"]').waitFor();

  // Alice writes; Bob, not in the chat, sees the conversation with an unread badge.
  await alice.locator('li[data-friend="2"]').getByRole('button', { name: 'Chat' }).click();
  await send(alice, 'hello bob');
  await expectBubbles(alice, ['hello bob']);
  // Her own entry came in the send's answer (PROTOCOL.md, "Sending"), not as a signal.
  const textOf = (entry) => entry?.event?.message?.content?.text;
  const answered = aliceFrames.filter((f) => f.cmd === 100 && textOf(f.body?.entry) === 'hello bob');
  const signalled = aliceFrames.filter((f) => f.cmd === 4 && textOf(f.body?.entry) === 'hello bob');
  assert.equal(answered.length, 1, 'the send answer carries the entry');
  assert.equal(signalled.length, 0, 'no signal for her own entry');
  await bob.getByRole('button', { name: /^Chats/ }).click();
  await conv(bob, ab).locator('.badge', { hasText: '1' }).waitFor();
  await conv(bob, ab).getByText('hello bob').waitFor();
  await send(alice, 'are you there?');
  await conv(bob, ab).locator('.badge', { hasText: '2' }).waitFor();
  await alice.locator('.msgs li.msg.mine .tick[data-read="false"]').first().waitFor();
  await shot(bob, 'conversations-unread');

  // Bob opens it: the badge goes, Alice sees ✓✓ on both.
  await conv(bob, ab).click();
  await expectBubbles(bob, ['hello bob', 'are you there?']);
  await until(bob, () => !document.querySelector('button.conv .badge'));
  await until(alice, () => document.querySelectorAll('.msgs .tick[data-read="true"]').length === 2);

  // Typing, then Bob answers; Alice (in the chat) reads it at once, Bob sees ✓✓.
  await bob.fill('#composer', 'y');
  await alice.locator('[data-test="typing"]', { hasText: 'Bob is typing' }).waitFor();
  await send(bob, 'yes, hi alice!');
  await expectBubbles(alice, ['hello bob', 'are you there?', 'yes, hi alice!']);
  await bob.locator('.msgs .tick[data-read="true"]').waitFor();
  await until(alice, () => !document.querySelector('#toast.show')); // "Friend request sent"
  await shot(alice, 'chat-read-receipts');

  // A second device of Alice (a third context): it gets everything, and read state syncs.
  // A second tab of the same browser (same cookies and localStorage) is a second device:
  // each tab keeps its own device id and login in sessionStorage.
  const alice2 = await alice.context().newPage();
  alice2.setDefaultTimeout(15000);
  await alice2.goto(server.url + '/');
  await login(alice2, 'alice');
  await conv(alice2, ab).getByText('yes, hi alice!').waitFor();
  await alice.getByRole('button', { name: 'Back to conversations' }).click(); // leave the chat
  await send(bob, 'news for both devices');
  await conv(alice, ab).locator('.badge', { hasText: '1' }).waitFor();
  await conv(alice2, ab).locator('.badge', { hasText: '1' }).waitFor();
  await conv(alice2, ab).click(); // reading on one device…
  await expectBubbles(alice2, ['hello bob', 'are you there?', 'yes, hi alice!', 'news for both devices']);
  await until(alice, () => !document.querySelector('button.conv .badge')); // …clears the other
  await send(alice2, 'sent from my second device');
  await conv(alice, ab).getByText('sent from my second device').waitFor();
  await expectBubbles(bob, ['hello bob', 'are you there?', 'yes, hi alice!', 'news for both devices', 'sent from my second device']);

  // Recall: Alice's second device takes its message back; everyone sees the tombstone.
  await alice2.locator('.msgs li.msg.mine').last().getByRole('button', { name: 'Recall' }).click();
  await bob.getByText('Alice recalled a message').waitFor();
  await conv(alice, ab).click();
  await alice.getByText('You recalled a message').waitFor();

  await alice.bringToFront(); // back to the first tab

  // A third browser context: Bob's second device. It catches up on the past, and both of
  // Bob's devices get what comes next.
  const bob2 = await person(browser, server);
  await login(bob2, 'bob');
  await conv(bob2, ab).click();
  const past = ['hello bob', 'are you there?', 'yes, hi alice!', 'news for both devices', 'Alice recalled a message'];
  await expectBubbles(bob2, past);
  await send(alice, 'hello to both your devices, bob');
  await expectBubbles(bob2, [...past, 'hello to both your devices, bob']);
  await expectBubbles(bob, [...past, 'hello to both your devices, bob']);

  // A group of three: Carol, on a phone-sized screen, befriends Alice; Alice makes the group.
  const carol = await person(browser, server, { width: 390, height: 780 });
  await register(carol, 'carol', 'Carol');
  await carol.getByRole('button', { name: 'Friends' }).click();
  await carol.fill('#find', 'alice');
  await carol.getByRole('button', { name: 'Search' }).click();
  await carol.getByRole('button', { name: 'Send request' }).click();
  await alice.getByRole('button', { name: /Friends/ }).click();
  await alice.locator('li[data-request="3"]').getByRole('button', { name: 'Accept' }).click();
  await alice.locator('li[data-friend="3"]').waitFor();

  await alice.getByRole('button', { name: '+ Group' }).click();
  await alice.fill('#group-name', 'Trio');
  await alice.getByLabel('Bob').check();
  await alice.getByLabel('Carol').check();
  await alice.getByRole('button', { name: 'Create' }).click();
  await alice.locator('[data-test="chat-title"]', { hasText: 'Trio' }).waitFor();
  await send(alice, 'welcome to the trio');
  await expectBubbles(alice, ['welcome to the trio']);
  await alice.getByRole('button', { name: /read by 0/i }).waitFor();

  await carol.getByRole('button', { name: /^Chats/ }).click();
  const trio = carol.locator('button.conv', { hasText: 'Trio' });
  await trio.locator('.badge', { hasText: '2' }).waitFor(); // "Alice created the group", then the welcome
  await shot(carol, 'phone-conversations');
  await trio.click();
  await expectBubbles(carol, ['welcome to the trio']);
  await alice.getByRole('button', { name: /read by 1/i }).waitFor();

  // Who has read it, who has not.
  await alice.getByRole('button', { name: /read by 1/i }).click();
  const dialog = alice.locator('dialog[open]');
  await dialog.locator('[data-test="read-by"]').getByText('Carol').waitFor();
  await dialog.locator('[data-test="unread-by"]').getByText('Bob').waitFor();
  await dialog.getByRole('button', { name: 'Close' }).click();

  // Bob mentions Carol while she is back at her list: the conversation shows the @ marker.
  await carol.getByRole('button', { name: 'Back to conversations' }).click();
  await bob.getByRole('button', { name: 'Back to conversations' }).click();
  await bob.locator('button.conv', { hasText: 'Trio' }).click();
  await expectBubbles(bob, ['welcome to the trio']);
  await send(bob, 'hi both, @carol look');
  await trio.locator('.mention').waitFor();
  await trio.locator('.badge', { hasText: '1' }).waitFor();
  await trio.click();
  await expectBubbles(carol, ['welcome to the trio', 'hi both, @carol look']);
  await until(carol, () => !document.querySelector('button.conv .mention'));
  await shot(carol, 'phone-chat');
  await alice.getByRole('button', { name: /read by 2/i }).click();
  await alice.locator('dialog[open] [data-test="read-by"]').getByText('Bob').waitFor();
  await alice.locator('dialog[open] [data-test="unread-by"]').getByText('Nobody').waitFor();
  await shot(alice, 'group-who-read');
  await alice.keyboard.press('Escape');

  // Nothing was shown twice anywhere.
  for (const p of [alice, bob, carol]) {
    const texts = await bubbles(p);
    assert.equal(new Set(texts).size, texts.length, `duplicates: ${texts}`);
  }
  await online(alice2);
}
