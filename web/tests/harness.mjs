// Test harness: the real `xinge serve` binary on loopback with a temporary data dir, Debian's
// Chromium driven by playwright-core, and helpers that wait on DOM state (never sleep).

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../..');
const BIN = process.env.XINGE_BIN || path.join(ROOT, 'target/debug/xinge');
export const SHOTS = path.join(ROOT, 'test-output/web');
export const WAIT_MS = 15000;

/** One server: start() on port 0 the first time, then on the same port and data dir. */
export class Server {
  /** `extra`: more TOML for the server's config file. */
  constructor(extra = '') {
    this.dir = mkdtempSync(path.join(tmpdir(), 'xinge-web-'));
    this.data = path.join(this.dir, 'data');
    this.config = path.join(this.dir, 'xinge.toml');
    // Cheap password hashing: the tests register several users on a 2-core machine.
    writeFileSync(this.config, `[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n${extra}`);
    this.http = '127.0.0.1:0';
    this.proc = null;
  }

  get url() {
    return `http://${this.http}`;
  }

  async start() {
    const proc = spawn(BIN, ['serve', '--config', this.config, '--data-dir', this.data,
      '--http-addr', this.http, '--tcp-addr', '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, XINGE_LOG: process.env.XINGE_LOG || 'warn' },
    });
    this.proc = proc;
    proc.stderr.on('data', (d) => { if (process.env.XINGE_TEST_VERBOSE) process.stderr.write(d); });
    const addr = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`xinge did not start: ${out}`)), 30000);
      proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`xinge exited (${code}): ${out}`)); });
      proc.stdout.on('data', (d) => {
        out += d;
        const m = /xinge ready http=(\S+).*\n/.exec(out);
        if (m) {
          clearTimeout(timer);
          // The admin API's own listener, when the config turned it on.
          this.admin = /admin=(\S+)/.exec(m[0])?.[1] ?? null;
          resolve(m[1]);
        }
      });
    });
    this.http = addr;
    return addr;
  }

  /** Kill it the hard way (a crash), and wait until it is gone. */
  async kill(signal = 'SIGKILL') {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((resolve) => p.once('exit', resolve));
    p.kill(signal);
    await gone;
    this.proc = null;
  }

  async stop() {
    await this.kill('SIGINT');
    rmSync(this.dir, { recursive: true, force: true });
  }

  async api(method, p, body, token) {
    const headers = {};
    if (body) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(this.url + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
      const data = await r.json().catch(() => null);
      // Per-user rate limits: wait as told and send the same request again (sends carry
      // their client_msg_id, so a retry never duplicates).
      if (r.status === 429 && attempt < 20) {
        const secs = Math.min(5, Number(r.headers.get('retry-after')) || 1);
        await new Promise((res) => setTimeout(res, secs * 1000));
        continue;
      }
      if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(data)}`);
      return data;
    }
  }
}

/** `extra`: more Chromium switches (a fake microphone, say). */
export async function launch(extra = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', ...extra],
    timeout: 30000,
  });
}

const opened = [];

/** Screenshots of every page opened so far, to see what a failed test saw. */
export async function shootAll(prefix) {
  for (const [i, p] of opened.entries()) {
    if (!p.isClosed()) await shot(p, `${prefix}-${i}`).catch(() => {});
  }
}

const WEB_TYPES = { js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', svg: 'image/svg+xml' };

/** With XINGE_WEB_FROM_DISK=1, a context gets the client's scripts and stylesheet from web/
 *  on disk instead of from the binary, which embedded them when it was built: client
 *  changes can be tried without a rebuild. */
async function webFromDisk(context) {
  if (!process.env.XINGE_WEB_FROM_DISK) return;
  await context.route('**/web/*', (route) => {
    const name = new URL(route.request().url()).pathname.slice('/web/'.length);
    const file = path.join(ROOT, 'web', name);
    const type = WEB_TYPES[name.split('.').pop()];
    if (!type || name.includes('/') || !existsSync(file)) return route.continue();
    return route.fulfill({ body: readFileSync(file), contentType: type, headers: { 'cache-control': 'no-cache' } });
  });
}

/** A browser context (its own storage: one person on one device) with one page. */
export async function person(browser, server, viewport = { width: 1100, height: 720 }) {
  const context = await browser.newContext({ viewport });
  await webFromDisk(context);
  const page = await context.newPage();
  opened.push(page);
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => console.error('page error:', e.message));
  page.on('response', (r) => {
    if (r.status() >= 400) console.error(`page http ${r.status()}: ${r.request().method()} ${r.url()}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.error(`page ${m.type()}:`, m.text());
  });
  await page.goto(server.url + '/');
  return page;
}

export async function register(page, username, display) {
  await page.getByRole('button', { name: 'No account yet? Create one' }).click();
  await page.fill('#username', username);
  await page.fill('#password', 'correct horse battery');
  if (display) await page.fill('#display', display);
  await page.getByRole('button', { name: 'Create account' }).click();
  await online(page);
}

export async function login(page, username) {
  await page.fill('#username', username);
  await page.fill('#password', 'correct horse battery');
  await page.getByRole('button', { name: 'Log in' }).click();
  await online(page);
}

export async function online(page) {
  await page.locator('.conn[data-conn="online"]').waitFor();
}

/** Waits until `fn(arg)` is truthy in the page. */
export async function until(page, fn, arg) {
  await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
}

export const conv = (page, id) => page.locator(`button.conv[data-conv="${id}"]`);

/** The bubbles of the open chat, in order. */
export async function bubbles(page) {
  return page.locator('.msgs li.msg .bubble').allTextContents();
}

export async function send(page, text) {
  await page.fill('#composer', text);
  await page.press('#composer', 'Enter');
}

/** Waits until the open chat shows exactly `texts` (each once, in this order). */
export async function expectBubbles(page, texts) {
  try {
    await until(page, (want) => {
      const got = [...document.querySelectorAll('.msgs li.msg[data-state="sent"] .bubble')].map((b) => b.textContent);
      return JSON.stringify(got) === JSON.stringify(want)
        && !document.querySelector('.msgs li.msg.pending');
    }, texts);
  } catch (e) {
    throw new Error(`chat shows ${JSON.stringify(await bubbles(page))}, want ${JSON.stringify(texts)}`, { cause: e });
  }
}

export async function shot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
}
