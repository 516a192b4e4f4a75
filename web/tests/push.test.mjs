// Offline push for the web client: the Notifications toggle, the service worker (web/sw.js)
// and APP_STATE, against the real server with Web Push configured and a local push service.
//
// What headless Chromium can and cannot do here, and so how each part is exercised:
// - Real: the toggle appears only because /v1/push/config has a VAPID key; the permission
//   (granted to Bob's context), the service worker's registration and activation at /sw.js,
//   the real pushManager.subscribe() call, and its failure shown as status text. Playwright's
//   contexts are incognito profiles, where Chromium has no Push API ("Registration failed -
//   permission denied"); in a persistent profile subscribe() tries Google's push service,
//   which this machine cannot reach, and does not answer at all (nothing in 40 s: the app
//   gives up after 20 s). If subscribe does succeed, the test checks that the app registered
//   exactly that subscription with the server.
// - Over HTTP: the test registers, for Bob's browser device (its own token), a subscription
//   whose endpoint is scripts/webpush-fake.py, a push service stand-in that decrypts with an
//   independent RFC 8291 implementation. So the server's real encrypted pushes of Alice's
//   messages (while Bob's page is hidden, and after it is closed) are checked as decrypted.
// - Through CDP: a push reaches the service worker with ServiceWorker.deliverPushMessage
//   (the payload the stand-in decrypted from the server, byte for byte), since no real push
//   service can deliver to it; the notifications it shows are read back with
//   registration.getNotifications(). Headless Chromium reports every page visible and
//   focused, even behind another tab or in a minimized window; focus is real once Playwright's
//   focus emulation is switched off and another tab is in front, so the worker's "the app
//   is in front: show nothing" is checked both ways.
// - Emulated: document.hidden never becomes true in headless Chromium, so "the page went to
//   the background" is document.hidden/visibilityState overridden on Bob's page plus a
//   visibilitychange event; what the app then sends (APP_STATE, cmd 109) and what the server
//   does with it are real.
// - Not exercised: a click on a notification (notificationclick: headless Chromium shows no
//   notification UI and CDP cannot click one), and a subscription from a real push service.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  ROOT, Server, conv, launch, login, online, person, send, shootAll, shot, until,
} from './harness.mjs';

const COLLAPSE_MS = 200;
/** How long "no notification" is waited for: well past the collapse window (3× at least). */
const QUIET_MS = 10 * COLLAPSE_MS;
const PASSWORD = 'correct horse battery';
const SUBJECT = 'mailto:ops@example.com';

/** A Python with the stand-in's packages (`bash scripts/python-deps.sh` makes the venv). */
function python() {
  const candidates = [process.env.XINGE_PYTHON, path.join(ROOT, 'target/contract-venv/bin/python'), 'python3'];
  for (const py of candidates.filter(Boolean)) {
    const r = spawnSync(py, ['-c', 'import http_ece, py_vapid, cryptography'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  throw new Error('Python with http_ece and py_vapid not found: run `bash scripts/python-deps.sh`');
}

/** A CA and a certificate for 127.0.0.1 signed by it, for the stand-in's HTTPS (push
 *  services are https only); the server trusts the CA through `ca_file`. */
const PKI = `
import datetime, ipaddress, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
d = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("xinge web push test CA")).issuer_name(name("xinge web push test CA"))
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(start).not_valid_after(end)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
pem = serialization.Encoding.PEM
open(os.path.join(d, "ca.pem"), "wb").write(ca.public_bytes(pem))
open(os.path.join(d, "server.pem"), "wb").write(cert.public_bytes(pem))
open(os.path.join(d, "server.key"), "wb").write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
`;

/** Polls `fn` until it returns something truthy, at most `ms`. */
async function waitFor(fn, what, ms = 15000, state = null) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) {
      const seen = state ? `; ${JSON.stringify(await state().catch((e) => String(e)))}` : '';
      throw new Error(`timed out waiting for ${what}${seen}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** scripts/webpush-fake.py: HTTPS on a free port; writes subscription.json, then one line
 *  per push request to received.jsonl (decrypted payload, or why it refused it). */
class PushService {
  constructor() {
    this.dir = mkdtempSync(path.join(tmpdir(), 'xinge-webpush-'));
    this.proc = null;
  }

  async start() {
    const py = python();
    execFileSync(py, ['-c', PKI, this.dir], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 30000 });
    this.caFile = path.join(this.dir, 'ca.pem');
    this.proc = spawn(py, [path.join(ROOT, 'scripts/webpush-fake.py'), '--cert', path.join(this.dir, 'server.pem'),
      '--key', path.join(this.dir, 'server.key'), '--dir', this.dir], { stdio: ['pipe', 'inherit', 'inherit'] });
    const file = path.join(this.dir, 'subscription.json');
    this.subscription = await waitFor(() => existsSync(file) && JSON.parse(readFileSync(file, 'utf8')),
      'the push service stand-in to start', 30000);
  }

  /** Every request it received, in order. */
  received() {
    const file = path.join(this.dir, 'received.jsonl');
    if (!existsSync(file)) return [];
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  }

  stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.stdin.end();
      this.proc.kill('SIGTERM');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let push;
let server;
let browser;

before(async () => {
  push = new PushService();
  await push.start();
  const vapid = path.join(push.dir, 'vapid.pem');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  writeFileSync(vapid, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  server = new Server(`[notify]\ncollapse_ms = ${COLLAPSE_MS}\n`
    + `[notify.webpush]\nvapid_key_file = ${JSON.stringify(vapid)}\nsubject = "${SUBJECT}"\nallow_private_endpoints = true\n`
    + `ca_file = ${JSON.stringify(push.caFile)}\ntimeout_ms = 5000\nmax_attempts = 2\n`);
  await server.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  push?.stop();
});

test('web client: notifications toggle, service worker, Web Push while in the background', { timeout: 240000 }, async (t) => {
  try {
    await scenario(t);
  } catch (e) {
    await shootAll('failed-push');
    throw e;
  }
});

/** Two friends, set up through the HTTP API; the setup devices logged out again. */
async function friends() {
  for (const [username, display_name] of [['alice', 'Alice'], ['bob', 'Bob']]) {
    await server.api('POST', '/v1/accounts', { username, password: PASSWORD, display_name });
  }
  const token = async (username) => (await server.api('POST', '/v1/sessions',
    { username, password: PASSWORD, device: 'setup' })).token;
  const [alice, bob] = [await token('alice'), await token('bob')];
  await server.api('POST', '/v1/friends/requests', { to: 2, note: 'hi' }, alice);
  await server.api('POST', '/v1/friends/requests/1/accept', null, bob);
  await server.api('DELETE', '/v1/sessions', null, alice);
  await server.api('DELETE', '/v1/sessions', null, bob);
}

/** The APP_STATE requests a page sent and which of them the server answered. */
function watchAppState(page) {
  const sent = []; // {ws, id, background, acked}
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      try {
        const m = JSON.parse(f.payload);
        if (m.cmd === 109) sent.push({ ws, id: m.id, background: m.body?.background, acked: false });
      } catch { /* not ours */ }
    });
    ws.on('framereceived', (f) => {
      try {
        const m = JSON.parse(f.payload);
        if (m.cmd !== 109 || !(m.flags & 1)) return;
        const req = sent.find((s) => s.ws === ws && s.id === m.id);
        if (req) req.acked = !(m.flags & 2);
      } catch { /* not ours */ }
    });
  });
  return sent;
}

/** Makes the page look hidden or visible to its scripts, as a tab switch would. */
async function emulateHidden(page, hidden) {
  await page.evaluate((h) => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

async function scenario(t) {
  const origin = server.url;
  await friends();

  // /sw.js is served from the root (its scope is the whole origin) as JavaScript.
  const swResp = await fetch(`${origin}/sw.js`);
  assert.equal(swResp.status, 200);
  assert.match(swResp.headers.get('content-type'), /^text\/javascript/);
  assert.match(await swResp.text(), /showNotification/);

  const alice = await person(browser, server);
  const bob = await person(browser, server);
  const bobContext = bob.context();
  await bobContext.grantPermissions(['notifications'], { origin });
  const appStates = watchAppState(bob);
  const cdp = await bobContext.newCDPSession(bob);
  const registrations = new Map(); // scopeURL -> registrationId
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => {
    for (const r of e.registrations) {
      if (r.isDeleted) registrations.delete(r.scopeURL);
      else registrations.set(r.scopeURL, r.registrationId);
    }
  });
  const workerLog = []; // the worker's running states and errors, for a failed wait
  cdp.on('ServiceWorker.workerVersionUpdated', (e) => {
    for (const v of e.versions) workerLog.push(`${Date.now() % 100000} v${v.versionId} ${v.status}/${v.runningStatus}`);
  });
  cdp.on('ServiceWorker.workerErrorReported', (e) => workerLog.push(`error ${JSON.stringify(e.errorMessage)}`));
  await cdp.send('ServiceWorker.enable');

  await login(alice, 'alice');
  await login(bob, 'bob');
  const bobToken = JSON.parse(await bob.evaluate(() => sessionStorage.getItem('xinge.session'))).token;
  const toggle = bob.locator('[data-test="push-toggle"]');
  const status = bob.locator('[data-test="push-status"]');

  // The toggle is offered (the server has a VAPID key), off until asked for.
  await toggle.waitFor();
  await until(bob, () => document.querySelector('[data-test="push-status"]')?.textContent === 'Off');
  assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
  assert.equal(await bob.evaluate(() => Notification.permission), 'granted');

  // On: the service worker registers and activates at /sw.js, then the real subscribe.
  await toggle.click();
  await until(bob, () => /^(On|Not available here: .+)$/.test(document.querySelector('[data-test="push-status"]')?.textContent));
  assert.equal(await toggle.getAttribute('aria-pressed'), 'true');
  await waitFor(() => bob.evaluate(async () => (await navigator.serviceWorker.getRegistration('/'))?.active?.state === 'activated'),
    'the service worker to activate');
  const sw = await bob.evaluate(async () => {
    const r = await navigator.serviceWorker.getRegistration('/');
    return { scope: r.scope, script: r.active.scriptURL };
  });
  assert.deepEqual(sw, { scope: `${origin}/`, script: `${origin}/sw.js` });
  const registrationId = await waitFor(() => registrations.get(`${origin}/`), 'the worker registration over CDP');
  const statusText = await status.textContent();
  await shot(bob, 'push-toggle');
  if (statusText === 'On') {
    // A real push service answered: the app registered exactly that subscription.
    const endpoint = await bob.evaluate(async () => (await (await navigator.serviceWorker.getRegistration('/')).pushManager.getSubscription()).endpoint);
    const reg = (await server.api('GET', '/v1/me/push', null, bobToken)).registration;
    assert.equal(reg?.provider, 'webpush');
    assert.equal(reg.endpoint, endpoint);
    t.diagnostic(`real pushManager.subscribe() succeeded (${new URL(endpoint).origin}) and was registered`);
  } else {
    t.diagnostic(`real pushManager.subscribe() failed as expected in headless Chromium: ${statusText}`);
    assert.equal((await server.api('GET', '/v1/me/push', null, bobToken)).registration, null);
  }

  // The choice is remembered for this user and device: a reload turns it on again.
  await bob.reload();
  await online(bob);
  await until(bob, () => /^(On|Not available here: .+)$/.test(document.querySelector('[data-test="push-status"]')?.textContent));
  assert.equal(await toggle.getAttribute('aria-pressed'), 'true');

  // Bob's browser device gets the stand-in's subscription (what a browser would PUT).
  const fake = push.subscription;
  const standIn = { provider: 'webpush', endpoint: fake.endpoint, p256dh: fake.p256dh, auth: fake.auth };
  await server.api('PUT', '/v1/me/push', standIn, bobToken);
  assert.deepEqual((await server.api('GET', '/v1/me/push', null, bobToken)).registration, standIn);

  // Alice opens the chat.
  await alice.getByRole('button', { name: 'Friends' }).click();
  await alice.locator('li[data-friend="2"]').getByRole('button', { name: 'Chat' }).click();
  const ab = 'd1-2';
  const pushes = () => push.received();
  const bodies = () => pushes().map((r) => JSON.parse(r.payload ?? 'null')?.body);

  // 1. Bob's page is visible: the page shows the message, nothing is pushed.
  await send(alice, 'seen in the open window');
  await conv(bob, ab).getByText('seen in the open window').waitFor();
  await sleep(QUIET_MS);
  assert.deepEqual(pushes(), [], 'nothing pushed while the page is visible');

  // 2. Hidden: the app says so (APP_STATE background), and Alice's message is pushed,
  // encrypted, to the push service, where it decrypts to what the service worker gets.
  await emulateHidden(bob, true);
  await waitFor(() => appStates.some((s) => s.background === true && s.acked), 'APP_STATE {background: true}');
  await send(alice, 'while bob looks away');
  await waitFor(() => pushes().length >= 1, 'a push to the stand-in');
  const [first] = pushes();
  assert.equal(first.status, 201, JSON.stringify(first));
  const payload = JSON.parse(first.payload);
  assert.deepEqual(payload, {
    title: 'Alice', body: 'while bob looks away', count: 1,
    // Bob's unread messages: this one and the one he saw in the list but did not open.
    badge: 2,
    data: { conv: ab, conv_seq: '2', kind: 'message' },
  });
  assert.equal(first.vapid.claims.sub, SUBJECT);
  assert.equal(first.headers['Content-Encoding'], 'aes128gcm');
  // The page is connected all along: it has the message too.
  await conv(bob, ab).getByText('while bob looks away').waitFor();

  // 3. Visible again: APP_STATE foreground, and nothing more is pushed.
  const acked = appStates.length;
  await emulateHidden(bob, false);
  await waitFor(() => appStates.slice(acked).some((s) => s.background === false && s.acked), 'APP_STATE {background: false}');
  await send(alice, 'back in front');
  await conv(bob, ab).getByText('back in front').waitFor();
  await sleep(QUIET_MS);
  assert.deepEqual(bodies(), ['while bob looks away']);

  // 4. Hidden, then the connection drops and comes back: the new connection is told again.
  await emulateHidden(bob, true);
  await waitFor(() => appStates.at(-1)?.background === true && appStates.at(-1).acked, 'APP_STATE {background: true}');
  const sockets = new Set(appStates.map((s) => s.ws));
  await bobContext.setOffline(true);
  await bob.locator('.conn:not([data-conn="online"])').waitFor();
  await bobContext.setOffline(false);
  await online(bob);
  await waitFor(() => appStates.some((s) => !sockets.has(s.ws) && s.background === true && s.acked),
    'APP_STATE {background: true} on the new connection');
  await send(alice, 'after the reconnection');
  await waitFor(() => pushes().length >= 2, 'a second push');
  assert.deepEqual(bodies(), ['while bob looks away', 'after the reconnection']);
  await emulateHidden(bob, false);

  // 5. The service worker: a push payload delivered through CDP (the server's own, as the
  // stand-in decrypted it). With the app's window visible and focused it shows nothing.
  const notifications = () => bob.evaluate(async () => {
    const r = await navigator.serviceWorker.getRegistration('/');
    return (await r.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
  });
  // What the page and the worker saw, for a failed wait.
  const state = async () => ({
    notifications: await notifications(),
    focus: await bob.evaluate(() => document.hasFocus()),
    worker: workerLog.slice(-12),
    counts: await counts().catch((e) => String(e)),
    now: Date.now() % 100000,
  });
  const deliver = (data) => {
    workerLog.push(`${Date.now() % 100000} deliver ${data.slice(0, 40)}`);
    return cdp.send('ServiceWorker.deliverPushMessage', { origin, registrationId, data });
  };
  // The notifications are read only once the worker has finished showing what it was given.
  // Polled meanwhile, a notification being shown now and then never appeared in the list
  // (3 runs in 32; none in 30 since the reads wait), as if the read had dropped it from
  // Chromium's store before it counted as displayed. The worker counts its finished shows
  // and its push events for the test (Playwright evaluates in it).
  const worker = bobContext.serviceWorkers().find((w) => w.url() === `${origin}/sw.js`);
  assert.ok(worker, 'the service worker, through Playwright');
  await worker.evaluate(() => {
    const show = self.registration.showNotification.bind(self.registration);
    self.registration.showNotification = async (...args) => {
      await show(...args);
      self.testShows = (self.testShows ?? 0) + 1;
    };
    self.testPushes = 0;
    self.addEventListener('push', () => { self.testPushes += 1; });
  });
  const counts = () => worker.evaluate(() => ({ pushes: self.testPushes, shows: self.testShows ?? 0 }));
  const shownAfter = async (shows, what) => {
    await waitFor(async () => (await counts()).shows >= shows, what, 15000, state);
    return notifications();
  };
  // (Another conversation than the one shown later: were it shown late, it would still show
  // up in the list checked below.)
  assert.deepEqual(await bob.evaluate(() => document.hasFocus()), true);
  await deliver(JSON.stringify({ ...payload, body: 'not shown: the app is in front', data: { ...payload.data, conv: 'd2-3' } }));
  await waitFor(async () => (await counts()).pushes === 1, 'the push event', 15000, state);
  await sleep(1000);
  assert.deepEqual(await counts(), { pushes: 1, shows: 0 }, 'the app is in front: no notification');
  assert.deepEqual(await notifications(), []);

  // Another tab in front (and Playwright's focus emulation off, so focus is real): shown.
  await cdp.send('Emulation.setFocusEmulationEnabled', { enabled: false });
  const other = await bobContext.newPage();
  await other.goto('about:blank');
  await other.bringToFront();
  await until(bob, () => !document.hasFocus());
  await deliver(first.payload);
  assert.deepEqual(await shownAfter(1, 'a notification'), [
    { title: 'Alice', body: 'while bob looks away', tag: ab, data: { conv: ab, conv_seq: '2', kind: 'message' } },
  ]);
  // The same conversation replaces it; a friend request (no preview: no title) is its own.
  await deliver(JSON.stringify({ title: 'Alice', body: 'two (+1 more)', count: 2, data: { conv: ab, conv_seq: '7', kind: 'message' } }));
  assert.deepEqual((await shownAfter(2, 'the replaced notification')).map((n) => n.body), ['two (+1 more)']);
  await deliver(JSON.stringify({ body: 'New friend request', count: 1, data: { from: '1', kind: 'friend_request' } }));
  const shown = (await shownAfter(3, 'a second notification')).sort((a, b) => a.tag.localeCompare(b.tag));
  assert.deepEqual(shown.map((n) => [n.tag, n.title, n.body]), [
    [ab, 'Alice', 'two (+1 more)'],
    ['friends', 'xinge', 'New friend request'],
  ]);
  await other.close();
  await cdp.send('Emulation.setFocusEmulationEnabled', { enabled: true });
  await bob.bringToFront();

  // What a click on the notification opens when no window is left (the worker's
  // openWindow('/#conv=…'); the click itself cannot be made headless): that chat; and
  // opening it closes its notification.
  await bob.evaluate((c) => { location.hash = `#conv=${c}`; }, ab);
  await until(bob, () => document.querySelector('[data-test="chat-title"]')?.textContent === 'Alice' && !location.hash);
  await waitFor(async () => JSON.stringify((await notifications()).map((n) => n.tag)) === '["friends"]',
    'the chat\'s notification to close');
  await shot(bob, 'push-after');

  // 6. Off: the browser unsubscribes and the server forgets the device's registration.
  await toggle.click();
  await until(bob, () => document.querySelector('[data-test="push-status"]')?.textContent === 'Off');
  assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
  assert.equal((await server.api('GET', '/v1/me/push', null, bobToken)).registration, null);
  assert.equal(await bob.evaluate(() => localStorage.getItem(`xinge.push.2.${JSON.parse(sessionStorage.getItem('xinge.session')).device}`)), null);

  // 7. Closed: with the registration back, a message to a device with no page open is pushed.
  await server.api('PUT', '/v1/me/push', standIn, bobToken);
  await bob.close();
  await alice.locator(`button.conv[data-conv="${ab}"] .presence[data-online="false"]`).waitFor();
  await send(alice, 'while the tab is closed');
  await waitFor(() => pushes().length >= 3, 'a third push');
  assert.deepEqual(bodies(), ['while bob looks away', 'after the reconnection', 'while the tab is closed']);
  assert.ok(pushes().every((r) => r.status === 201), JSON.stringify(pushes()));
}
