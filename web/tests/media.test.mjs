// Media in the web client: a photo attached through the file input reaches the friend as a
// thumbnail that opens the full-size photo; a file whose upload first fails (retried from
// the chat) and then loses its connection mid-upload (resumed) is downloaded by the friend
// through the chat's link, byte for byte; a pasted image and a dropped file arrive too; a
// voice note recorded from Chromium's fake microphone plays on the friend's side.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';
import { Server, conv, launch, person, register, shootAll, shot, until } from './harness.mjs';

let server;
let browser;

before(async () => {
  server = new Server();
  await server.start();
  // The fake microphone plays a beep, and nobody is asked for permission to use it.
  browser = await launch(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('web client: photos, files and voice notes, uploaded and downloaded', { timeout: 180000 }, async () => {
  try {
    await scenario();
  } catch (e) {
    await shootAll('failed-media');
    throw e;
  }
});

/** A valid RGB PNG of `width` x `height` (a gradient: large enough for the server to make a
 *  thumbnail of, small to send). */
function png(width, height) {
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bits per channel
  ihdr[9] = 2; // RGB
  const rows = Buffer.alloc((1 + width * 3) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * 3); // each row starts with its filter byte, 0
    for (let x = 0; x < width; x++) {
      rows[row + 1 + x * 3] = (x * 255) / width;
      rows[row + 2 + x * 3] = (y * 255) / height;
      rows[row + 3 + x * 3] = 160;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(rows)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

const sha256 = (b) => createHash('sha256').update(b).digest('hex');

async function scenario() {
  const alice = await person(browser, server);
  const bob = await person(browser, server);
  await register(alice, 'alice', 'Alice');
  await register(bob, 'bob', 'Bob');
  const ab = 'd1-2';

  // Friends, and both in their chat.
  await alice.getByRole('button', { name: 'Friends' }).click();
  await alice.fill('#find', 'bob');
  await alice.getByRole('button', { name: 'Search' }).click();
  await alice.getByRole('button', { name: 'Send request' }).click();
  await bob.getByRole('button', { name: /Friends/ }).click();
  await bob.locator('li[data-request="1"]').getByRole('button', { name: 'Accept' }).click();
  await alice.locator('li[data-friend="2"]').getByRole('button', { name: 'Chat' }).click();
  await bob.locator('li[data-friend="1"]').getByRole('button', { name: 'Chat' }).click();

  // A photo through the paper clip's file input.
  const W = 640;
  const H = 480;
  await alice.locator('[data-test="attach-input"]').setInputFiles({
    name: 'sunset.png', mimeType: 'image/png', buffer: png(W, H),
  });
  await alice.locator('.msgs li.msg[data-state="sent"] img[data-test="thumb"]').waitFor();

  // Bob sees its thumbnail (the server's, at most 320 px wide), then the photo itself.
  await bob.locator('.msgs li.msg[data-state="sent"] img[data-test="thumb"]').waitFor();
  await until(bob, () => document.querySelector('.msgs img[data-test="thumb"]')?.naturalWidth > 0);
  const thumbWidth = await bob.locator('.msgs img[data-test="thumb"]').evaluate((img) => img.naturalWidth);
  assert.ok(thumbWidth <= 320, `the thumbnail is ${thumbWidth} px wide`);
  await conv(bob, ab).getByText('Photo', { exact: true }).waitFor();
  await shot(bob, 'media-photo');
  await bob.locator('.msgs img[data-test="thumb"]').click();
  await until(bob, (w) => document.querySelector('dialog.viewer[open] img[data-test="full-image"]')?.naturalWidth === w, W);
  assert.equal(await bob.locator('dialog.viewer img').evaluate((img) => img.naturalHeight), H);
  await shot(bob, 'media-photo-full');
  await bob.keyboard.press('Escape');
  await until(bob, () => !document.querySelector('dialog.viewer'));

  // A file. Its first upload is refused: the chat says so and offers a retry.
  const bytes = randomBytes(300 * 1024);
  let refused = 0;
  await alice.route('**/v1/uploads', (route) => {
    if (route.request().method() !== 'POST' || refused++) return route.continue();
    return route.fulfill({
      status: 413, contentType: 'application/json',
      body: JSON.stringify({ code: 'too_large', message: 'refused by the test' }),
    });
  });
  // The retry's first chunk is held until the test has seen the progress bar, then its
  // connection drops: the upload asks the server where it stands and carries on.
  let dropped = 0;
  let release;
  const held = new Promise((res) => { release = res; });
  await alice.route('**/v1/uploads/*', async (route) => {
    if (route.request().method() !== 'PATCH' || dropped++) return route.continue();
    await held;
    return route.abort('connectionreset');
  });
  await alice.locator('[data-test="attach-input"]').setInputFiles({
    name: 'report.bin', mimeType: 'application/octet-stream', buffer: bytes,
  });
  const upload = alice.locator('.msgs li.upload');
  await upload.locator('[data-test="upload-error"]', { hasText: 'refused by the test' }).waitFor();
  await shot(alice, 'media-upload-failed');
  await upload.getByRole('button', { name: 'Retry' }).click();
  await upload.locator('progress').waitFor();
  await upload.locator('[data-test="upload-status"]').waitFor();
  await shot(alice, 'media-uploading');
  release();
  const mine = alice.locator('.msgs li.msg[data-state="sent"]', { hasText: 'report.bin' });
  await mine.locator('[data-test="download"]').waitFor();
  await until(alice, () => !document.querySelector('.msgs li.pending'));
  assert.equal(refused, 2, 'one refused upload, then the retry');
  assert.ok(dropped >= 2, 'the dropped chunk was sent again');
  await alice.unrouteAll();

  // Bob downloads it through the chat's link: the same bytes, under its name.
  const file = bob.locator('.msgs li.msg[data-state="sent"]', { hasText: 'report.bin' });
  await file.getByText('300 KB').waitFor();
  await conv(bob, ab).getByText('File: report.bin').waitFor();
  const link = file.locator('a[data-test="download"][href]');
  await link.waitFor();
  await shot(bob, 'media-file');
  const [download] = await Promise.all([bob.waitForEvent('download'), link.click()]);
  assert.equal(download.suggestedFilename(), 'report.bin');
  const got = readFileSync(await download.path());
  assert.equal(got.length, bytes.length);
  assert.equal(sha256(got), sha256(bytes));

  // A screenshot pasted into the message field, and a file dropped on the chat.
  await alice.locator('#composer').evaluate((el, bytes) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], 'image.png', { type: 'image/png' }));
    el.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
  }, [...png(120, 90)]);
  const drop = await alice.evaluateHandle(() => {
    const data = new DataTransfer();
    data.items.add(new File(['meeting at noon\n'], 'notes.txt', { type: 'text/plain' }));
    return data;
  });
  await alice.locator('main.chat').dispatchEvent('dragover', { dataTransfer: drop });
  await alice.locator('main.chat').dispatchEvent('drop', { dataTransfer: drop });
  await bob.locator('.msgs li.msg[data-state="sent"]', { hasText: 'notes.txt' }).waitFor();
  await until(bob, () => [...document.querySelectorAll('.msgs img[data-test="thumb"]')]
    .filter((img) => img.naturalWidth > 0).length === 2);
  await until(alice, () => !document.querySelector('.msgs li.pending'));

  // A voice note: recording shows its length; a second click stops it and sends it.
  const voice = alice.locator('[data-test="voice"]');
  await voice.click();
  await voice.filter({ hasText: /0:0[2-9]/ }).waitFor(); // two seconds of beep, near enough
  await shot(alice, 'media-recording');
  await voice.click();
  await voice.filter({ hasText: 'Voice' }).waitFor();
  // Bob's player gets the recording's URL and can read it as audio.
  await bob.locator('.msgs li.msg[data-state="sent"] audio[data-test="voice-note"][src]').waitFor();
  await until(bob, () => document.querySelector('.msgs audio[data-test="voice-note"]')?.readyState >= 1);
  await conv(bob, ab).getByText(/^Voice message \(0:0[2-9]\)$/).waitFor();
  await until(alice, () => !document.querySelector('.msgs li.pending'));
  await shot(bob, 'media-voice');
}
