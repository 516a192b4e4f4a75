// The xinge client core: the HTTP API, the WebSocket long connection (docs/PROTOCOL.md, text
// mode) and the push-then-pull inbox sync. No DOM in here; app.js renders.

export const CMD = {
  AUTH: 1, PING: 2, CLOSE: 3, SIGNAL: 4,
  SEND: 100, SYNC: 101, READ: 102, RECALL: 103, TYPING: 104,
  CONVERSATIONS: 105, HISTORY: 106, READ_STATE: 107, PRESENCE: 108, APP_STATE: 109,
};
const FLAG_RESPONSE = 0x01;
const FLAG_ERROR = 0x02;

/** An answer of the server in its error shape ({code, message}), or a transport failure
 *  (code "transport"), which is always worth a retry. */
export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
  get retryable() {
    return ['transport', 'unavailable', 'slow_consumer', 'rate_limited', 'timeout'].includes(this.code);
  }
}

/** Token revoked, expired or forged: the session is over, log in again. */
export const FATAL_CODES = ['unauthenticated', 'token_expired', 'token_revoked', 'banned'];

// === HTTP ===

const HTTP_TIMEOUT_MS = 15000;

export async function http(method, path, body, token) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), HTTP_TIMEOUT_MS);
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, signal: ctl.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError('transport', `cannot reach the server (${e.name === 'AbortError' ? 'timed out' : e.message})`);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try { data = await resp.json(); } catch { /* empty or not JSON */ }
  if (!resp.ok) {
    throw new ApiError(data?.code || 'http_' + resp.status, data?.message || resp.statusText, resp.status);
  }
  return data;
}

// === the long connection ===

const AUTH_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;
const MIN_BACKOFF_MS = 300;
const MAX_BACKOFF_MS = 10000;

/**
 * One WebSocket to /ws in text mode, reconnected with exponential back-off and jitter.
 * Events: `state` ({state, retryInMs}), `online` (AuthOk), `signal` (a Signal),
 * `fatal` ({code, message}) when the server refuses the token for good.
 */
export class Gateway extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // req_id -> {resolve, reject, timer}
    this.state = 'offline';
    this.backoff = MIN_BACKOFF_MS;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
    this.onBrowserOnline = () => this.reconnectNow();
    // The browser knows the network is gone long before a dead TCP connection times out.
    this.onBrowserOffline = () => this.ws?.close();
  }

  start() {
    this.stopped = false;
    window.addEventListener('online', this.onBrowserOnline);
    window.addEventListener('offline', this.onBrowserOffline);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onBrowserOnline);
    window.removeEventListener('offline', this.onBrowserOffline);
    clearTimeout(this.retryTimer);
    this.teardown(new ApiError('transport', 'stopped'));
    this.setState('offline');
  }

  /** Skip the back-off wait (the browser says the network is back, or the user asked). */
  reconnectNow() {
    if (this.stopped || this.state === 'online' || this.state === 'connecting') return;
    clearTimeout(this.retryTimer);
    this.backoff = MIN_BACKOFF_MS;
    this.connect();
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }

  connect() {
    if (this.stopped) return;
    this.setState('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/ws?mode=text`);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let closeReason = null;
    const authTimer = setTimeout(() => ws.close(), AUTH_TIMEOUT_MS);
    ws.onopen = () => {
      // The token goes in the AUTH frame, not the URL, so it stays out of access logs.
      this.rawRequest(ws, CMD.AUTH, { token: this.token, protocol: 1 })
        .then((ok) => {
          clearTimeout(authTimer);
          if (ws !== this.ws) return;
          this.backoff = MIN_BACKOFF_MS;
          const every = Math.max(1000, (ok.heartbeat_timeout_secs * 1000) / 3);
          this.pingTimer = setInterval(() => {
            this.rawRequest(ws, CMD.PING, null).catch(() => {});
          }, every);
          this.setState('online');
          this.dispatchEvent(new CustomEvent('online', { detail: ok }));
        })
        .catch((e) => {
          clearTimeout(authTimer);
          if (FATAL_CODES.includes(e.code)) closeReason = { code: e.code, message: e.message };
          ws.close();
        });
    };
    ws.onmessage = (ev) => {
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      if (f.cmd === CMD.SIGNAL) {
        this.dispatchEvent(new CustomEvent('signal', { detail: f.body }));
      } else if (f.cmd === CMD.CLOSE) {
        closeReason = f.body || null;
      } else if (f.flags & FLAG_RESPONSE) {
        // A send's answer carries the sender's own inbox entry in place of a signal for
        // it (PROTOCOL.md, "Sending"): applied as that signal, before the answer.
        const own = (f.cmd === CMD.SEND || f.cmd === CMD.RECALL) && !(f.flags & FLAG_ERROR)
          ? f.body?.entry : null;
        if (own) {
          this.dispatchEvent(new CustomEvent('signal', {
            detail: { type: 'inbox', seq: own.seq, entry: own },
          }));
        }
        const p = this.pending.get(f.id);
        if (!p) return;
        this.pending.delete(f.id);
        clearTimeout(p.timer);
        if (f.flags & FLAG_ERROR) p.reject(new ApiError(f.body?.code || 'error', f.body?.message));
        else p.resolve(f.body);
      }
    };
    ws.onclose = () => {
      clearTimeout(authTimer);
      if (ws !== this.ws) return;
      this.teardown(new ApiError('transport', 'connection lost'));
      if (closeReason && FATAL_CODES.includes(closeReason.code)) {
        this.stopped = true;
        this.setState('offline');
        this.dispatchEvent(new CustomEvent('fatal', { detail: closeReason }));
        return;
      }
      this.scheduleRetry();
    };
  }

  teardown(err) {
    clearInterval(this.pingTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = ws.onopen = null;
      try { ws.close(); } catch { /* already closed */ }
    }
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  scheduleRetry() {
    if (this.stopped) return;
    // Full jitter, so that a restarted server is not hit by every client at once.
    const wait = Math.round(this.backoff / 2 + Math.random() * (this.backoff / 2));
    this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
    this.setState('offline', { retryInMs: wait });
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  rawRequest(ws, cmd, body) {
    return new Promise((resolve, reject) => {
      if (ws.readyState !== WebSocket.OPEN) {
        reject(new ApiError('transport', 'not connected'));
        return;
      }
      const id = this.nextId++;
      if (this.nextId > 0xffffffff) this.nextId = 1;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError('timeout', 'the server did not answer in time'));
        // A connection that stops answering is as good as dead: start over.
        if (ws === this.ws) ws.close();
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify(body === null ? { cmd, id } : { cmd, id, body }));
    });
  }

  /** A business request over the live connection; rejects with `transport` when offline. */
  request(cmd, body) {
    if (this.state !== 'online' || !this.ws) {
      return Promise.reject(new ApiError('transport', 'not connected'));
    }
    return this.rawRequest(this.ws, cmd, body);
  }

  /** Resolves when online (or after `ms`, rejecting). */
  waitOnline(ms) {
    if (this.state === 'online') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.removeEventListener('online', done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.removeEventListener('online', done);
        reject(new ApiError('timeout', 'still offline'));
      }, ms);
      this.addEventListener('online', done);
    });
  }
}

// === the inbox: push, then pull ===

const SYNC_PAGE = 200;
/** A device further behind than this skips ahead and reloads its snapshot instead of
 *  replaying the whole backlog (the conversation list and histories carry the state). */
const MAX_REPLAY = 2000;
const REPAIR_EVERY_MS = 20000;

/** How long a signalled entry ahead of a gap waits for the gap to fill, and how many wait. */
const REORDER_WAIT_MS = 50;
const REORDER_MAX = 256;

/**
 * The device's inbox cursor and the rule of PROTOCOL.md: apply a signalled entry if it is
 * exactly cursor + 1; hold one that is ahead for a moment (signals for one inbox may arrive
 * out of order) and apply it once the entries before it came; pull after the cursor until
 * `has_more` is false when a gap outlasts that moment or a signal carries no entry. Every
 * step runs on one queue, so entries reach `onEntries` once each, in seq order. The cursor
 * lives in localStorage per user and device.
 */
export class Inbox {
  constructor(gw, key, onEntries) {
    this.gw = gw;
    this.key = key;
    this.onEntries = onEntries;
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(key)); } catch { /* none or damaged */ }
    this.cursor = Number.isSafeInteger(saved?.seq) && saved.seq > 0 ? saved.seq : null;
    forgetOldCursors();
    this.queue = Promise.resolve();
    this.repair = null;
    this.ahead = new Map();
    this.gapTimer = null;
  }

  enqueue(task) {
    this.queue = this.queue.then(task).catch((e) => {
      if (!(e instanceof ApiError) || !e.retryable) console.warn('inbox:', e);
    });
    return this.queue;
  }

  setCursor(seq) {
    this.cursor = seq;
    localStorage.setItem(this.key, JSON.stringify({ seq, at: Date.now() }));
  }

  /** On every (re)connection: catch up on the inbox. Resolves to the heads of the caller's
   *  large (read fan-out) groups, whose messages are not in the inbox (PROTOCOL.md: ask on
   *  every connect). */
  connected() {
    clearInterval(this.repair);
    this.repair = setInterval(() => this.enqueue(() => this.pull()), REPAIR_EVERY_MS);
    let groups = [];
    return this.enqueue(async () => {
      const r = await this.gw.request(CMD.SYNC, { after: 0, limit: 1, groups: true });
      groups = r.groups || [];
      // A new device replays the recent past too (pending group invites live only in the
      // inbox); replaying is harmless, every entry is applied idempotently.
      if (this.cursor === null || this.cursor > r.head || r.head - this.cursor > MAX_REPLAY) {
        this.setCursor(Math.max(0, r.head - MAX_REPLAY));
      }
      await this.pull();
    }).then(() => groups);
  }

  stop() {
    clearInterval(this.repair);
    this.forgetAhead();
  }

  signal(sig) {
    this.enqueue(async () => {
      if (this.cursor === null || sig.seq <= this.cursor) return;
      if (sig.entry && sig.seq === this.cursor + 1) {
        this.setCursor(sig.seq);
        this.onEntries([sig.entry]);
        this.applyAhead();
      } else if (sig.entry && this.ahead.size < REORDER_MAX) {
        this.ahead.set(sig.seq, sig.entry);
        this.gapTimer ??= setTimeout(() => this.enqueue(() => this.pull()), REORDER_WAIT_MS);
      } else {
        await this.pull();
      }
    });
  }

  /** The held entries that now follow the cursor. */
  applyAhead() {
    for (const seq of this.ahead.keys()) if (seq <= this.cursor) this.ahead.delete(seq);
    const next = [];
    while (this.ahead.has(this.cursor + 1)) {
      const e = this.ahead.get(this.cursor + 1);
      this.ahead.delete(e.seq);
      this.setCursor(e.seq);
      next.push(e);
    }
    if (next.length) this.onEntries(next);
    if (!this.ahead.size) this.forgetAhead();
  }

  forgetAhead() {
    clearTimeout(this.gapTimer);
    this.gapTimer = null;
    this.ahead.clear();
  }

  async pull() {
    if (this.cursor === null) return;
    // What the pull brings supersedes what was held.
    this.forgetAhead();
    for (let round = 0; round < 1000; round++) {
      const r = await this.gw.request(CMD.SYNC, { after: this.cursor, limit: SYNC_PAGE });
      const fresh = [];
      for (const e of r.entries) {
        if (e.seq === this.cursor + 1) {
          this.setCursor(e.seq);
          fresh.push(e);
        }
      }
      if (fresh.length) this.onEntries(fresh);
      if (!r.has_more || !fresh.length) return;
    }
  }
}

/** Every tab is a device with its own cursor key; keep the 50 most recently used. */
const MAX_CURSORS = 50;
function forgetOldCursors() {
  const keys = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (k && k.startsWith('xinge.cursor.')) {
      let at = 0;
      try { at = JSON.parse(localStorage.getItem(k))?.at || 0; } catch { /* damaged: oldest */ }
      keys.push([at, k]);
    }
  }
  keys.sort((a, b) => b[0] - a[0]);
  for (const [, k] of keys.slice(MAX_CURSORS)) localStorage.removeItem(k);
}

// === media: resumable uploads (tus 1.0.0) ===

const TUS_VERSION = '1.0.0';
/** Bytes per PATCH: small enough that a dropped connection loses little, large enough that
 *  a big file is not thousands of requests. */
export const UPLOAD_CHUNK = 1 << 20;
/** Failures in a row (without progress in between) before an upload gives up. */
const UPLOAD_RETRIES = 6;
/** A chunk on a slow link, and the last one, inside which the server hashes the file and
 *  makes its thumbnail. */
const PATCH_TIMEOUT_MS = 120000;

/** tus metadata: `key base64(UTF-8 value)` pairs, comma-separated; empty values left out. */
function tusMetadata(meta) {
  const b64 = (s) => {
    let bin = '';
    for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
    return btoa(bin);
  };
  return Object.entries(meta)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${k} ${b64(String(v))}`)
    .join(',');
}

/** An error answer of the upload endpoints as an ApiError: the JSON error shape when there
 *  is one (a HEAD has no body), else the status. Server trouble is worth a retry. */
function statusError(status, text, fallback) {
  let data = null;
  try { data = JSON.parse(text); } catch { /* empty or not JSON */ }
  const code = data?.code || (status === 404 ? 'not_found' : status >= 500 ? 'unavailable' : 'http_' + status);
  return new ApiError(code, data?.message || fallback || `the server answered ${status}`, status);
}

const pause = (ms) => new Promise((res) => setTimeout(res, ms));

/**
 * One file sent with the tus 1.0.0 resumable-upload protocol: created with a POST, sent in
 * 1 MiB PATCHes through XMLHttpRequest (whose upload progress drives the progress bar), and
 * after a network drop resumed from the offset the server says it has (HEAD), with back-off.
 * `run()` resolves to the server's MediaInfo once the last byte is in; it can be called
 * again after a failure, and carries on from where the server is. `abort()` stops it.
 */
export class Upload {
  constructor(blob, meta, token, onProgress) {
    this.blob = blob;
    this.meta = meta; // filename, filetype, kind, duration_ms
    this.token = token;
    this.onProgress = onProgress || (() => {});
    this.location = null; // the upload's URL once created
    this.xhr = null;
    this.ctl = null;
    this.aborted = false;
  }

  abort() {
    this.aborted = true;
    this.xhr?.abort();
    this.ctl?.abort();
  }

  async run() {
    this.aborted = false;
    let offset = null; // null: ask the server (after a failure, or when resuming)
    let failures = 0;
    for (;;) {
      try {
        if (!this.location) offset = await this.create();
        else if (offset === null) offset = await this.head();
        this.onProgress(offset);
        if (offset >= this.blob.size) return await this.finished();
        const next = await this.patch(offset);
        if (next > offset) failures = 0;
        offset = next;
      } catch (e) {
        if (this.aborted) throw new ApiError('aborted', 'cancelled');
        if (++failures > UPLOAD_RETRIES) throw e;
        offset = null;
        if (e.status === 409) continue; // our offset was not the server's: ask it
        if (e.status === 404 && this.location) {
          // The server forgot the upload (it expired): start over.
          this.location = null;
          continue;
        }
        if (!e.retryable && !(e.status >= 500)) throw e;
        // Full jitter, as for the long connection.
        const wait = Math.min(10000, 500 * 2 ** (failures - 1));
        await pause(wait / 2 + Math.random() * (wait / 2));
        if (this.aborted) throw new ApiError('aborted', 'cancelled');
      }
    }
  }

  /** fetch() with the upload's headers and a timeout; error answers become ApiErrors. */
  async request(method, url, headers = {}) {
    this.ctl = new AbortController();
    const timer = setTimeout(() => this.ctl.abort(), HTTP_TIMEOUT_MS);
    let resp;
    try {
      resp = await fetch(url, {
        method, signal: this.ctl.signal,
        headers: { authorization: `Bearer ${this.token}`, 'tus-resumable': TUS_VERSION, ...headers },
      });
    } catch (e) {
      throw new ApiError('transport', `cannot reach the server (${e.name === 'AbortError' ? 'timed out' : e.message})`);
    } finally {
      clearTimeout(timer);
    }
    if (!resp.ok) throw statusError(resp.status, await resp.text().catch(() => ''));
    return resp;
  }

  /** POST /v1/uploads: the upload's URL (the Location answered, a path), and offset 0. */
  async create() {
    const resp = await this.request('POST', '/v1/uploads', {
      'upload-length': String(this.blob.size),
      'upload-metadata': tusMetadata(this.meta),
    });
    const loc = resp.headers.get('location');
    if (!loc) throw new ApiError('bad_response', 'the server did not say where the upload goes');
    this.location = new URL(loc, location.href).href;
    return offsetOf(resp.headers.get('upload-offset') ?? '0');
  }

  /** HEAD: how many bytes the server has. */
  async head() {
    const resp = await this.request('HEAD', this.location);
    return offsetOf(resp.headers.get('upload-offset'));
  }

  /** One chunk from `offset`; resolves to the server's new offset. */
  patch(offset) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open('PATCH', this.location);
      xhr.timeout = PATCH_TIMEOUT_MS;
      xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
      xhr.setRequestHeader('Tus-Resumable', TUS_VERSION);
      xhr.setRequestHeader('Upload-Offset', String(offset));
      xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream');
      xhr.upload.onprogress = (e) => this.onProgress(offset + e.loaded);
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          try { resolve(offsetOf(xhr.getResponseHeader('Upload-Offset'))); } catch (e) { reject(e); }
        } else {
          reject(statusError(xhr.status, xhr.responseText));
        }
      };
      xhr.onerror = () => reject(new ApiError('transport', 'the connection dropped during the upload'));
      xhr.ontimeout = () => reject(new ApiError('timeout', 'the upload stalled'));
      xhr.onabort = () => reject(new ApiError('aborted', 'cancelled'));
      xhr.send(this.blob.slice(offset, Math.min(this.blob.size, offset + UPLOAD_CHUNK)));
    });
  }

  /** GET the finished upload: its MediaInfo (the server finishes inside the last PATCH; if
   *  that answer was lost, it is there all the same). */
  async finished() {
    for (let i = 0; ; i++) {
      const r = await (await this.request('GET', this.location)).json();
      if (r?.media) return r.media;
      if (i >= 4) throw new ApiError('unavailable', 'the server did not finish the upload');
      await pause(300 * 2 ** i);
    }
  }
}

/** An Upload-Offset header as a number; a missing or bad one is the server's fault. */
function offsetOf(v) {
  const n = Number(v);
  if (v === null || v === '' || !Number.isSafeInteger(n) || n < 0) {
    throw new ApiError('unavailable', 'the server did not say how much of the upload it has');
  }
  return n;
}

// === small helpers shared by the app ===

/** A client_msg_id: unique per sender, 1-64 bytes. */
export function newClientMsgId() {
  if (crypto.randomUUID) return 'w' + crypto.randomUUID().replaceAll('-', '');
  const b = crypto.getRandomValues(new Uint8Array(16));
  return 'w' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function peerOf(conv, me) {
  const m = /^d(\d+)-(\d+)$/.exec(conv);
  if (!m) return null;
  // Ids are compared as the strings of digits the server sends (JSON ids are strings).
  const [a, b] = [m[1], m[2]];
  return a === String(me) ? b : a;
}

/** The group id of a group conversation, as a string (every 64-bit id is a string in
 *  JSON: group ids are snowflakes above 2^53, which a JavaScript number cannot hold). */
export function groupIdOf(conv) {
  const m = /^g(\d+)$/.exec(conv);
  return m ? m[1] : null;
}
