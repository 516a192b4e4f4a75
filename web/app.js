// The xinge web client: state, the inbox events applied to it, and the screens.
// Each browser tab is its own device (its device id lives in sessionStorage), so two tabs of
// one user behave as two devices: both get everything, and read state syncs through the inbox.

import {
  ApiError, CMD, FATAL_CODES, Gateway, Inbox, Upload, groupIdOf, http, newClientMsgId, peerOf,
} from './client.js';
import { clock, debounce, h, humanSize, initials, render, renderIfChanged, time } from './view.js';

// === limits ===

const PAGE = 40; // history page
const MAX_IN_VIEW = 400; // messages kept for the open conversation; older ones page back in
const MAX_OUTBOX = 200;
const MAX_TEXT = 4000;
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;
const GROUP_READ_POLL_MS = 4000;
const RECALL_WINDOW_MS = 120000; // the server's default chat.recall_window_secs; it decides
const UPLOADS_AT_ONCE = 2; // more files wait their turn: each would share the same uplink
const THUMB_PX = 320; // the long side of the server's thumbnails
const MAX_VOICE_MS = 5 * 60000; // a voice note stops itself here
const MIN_VOICE_MS = 700; // shorter is a slip of the finger, not a message

// === state ===

const S = {
  session: null, // {token, user_id, device, username}
  me: null, // Profile
  gw: null,
  inbox: null,
  conn: { state: 'offline' },
  convs: new Map(), // conv -> Conversation
  profiles: new Map(), // user -> Profile
  presence: new Map(), // user -> bool
  typing: new Map(), // conv -> {user, until}
  peerRead: new Map(), // conv (1:1) -> the peer's read seq
  friends: [],
  requests: { incoming: [], outgoing: [] },
  invites: [], // {conv, by, name}
  blocked: new Set(),
  found: null, // a profile from the search
  tab: 'chats',
  open: null, // the open conversation, see openConv
  outbox: [], // {cmid, conv, to, text, media, mentions, mention_all, state, error}
  uploads: [], // files on their way to the server, see startUpload
};

const R = {}; // rendered regions

function deviceId() {
  let d = sessionStorage.getItem('xinge.device');
  if (!d) {
    const r = crypto.getRandomValues(new Uint8Array(6));
    d = 'web-' + Array.from(r, (x) => x.toString(16).padStart(2, '0')).join('');
    sessionStorage.setItem('xinge.device', d);
  }
  return d;
}

const api = (method, path, body) => http(method, path, body, S.session?.token);
const call = (cmd, body) => S.gw.request(cmd, body);

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 4000);
}

function fail(e) {
  console.warn(e);
  toast(e instanceof ApiError ? `${e.message} (${e.code})` : String(e.message || e));
}

// === profiles ===

const loading = new Set();
function name(id) {
  if (id === S.me?.user_id) return 'You';
  const p = S.profiles.get(id);
  if (p) return p.display_name || p.username;
  if (!loading.has(id) && S.session) {
    loading.add(id);
    api('GET', `/v1/users/${id}`)
      .then((p) => { S.profiles.set(id, p); update(); })
      .catch(() => {})
      .finally(() => loading.delete(id));
  }
  return `user ${id}`;
}

/** Loads the profiles a dialog is about to show (dialogs are not re-rendered). */
async function ensureProfiles(ids) {
  const missing = [...new Set(ids)].filter((id) => !S.profiles.has(id)).slice(0, 200);
  await Promise.all(missing.map((id) => api('GET', `/v1/users/${id}`)
    .then((p) => S.profiles.set(id, p)).catch(() => {})));
}

function convName(c) {
  if (c.name) return c.name;
  const peer = peerOf(c.conv, S.me.user_id);
  return peer ? name(peer) : c.conv;
}

// === rendering schedule ===

let dirty = false;
function update() {
  if (dirty) return;
  dirty = true;
  // A background tab gets no animation frames, but its title and state still move on.
  const later = document.hidden ? (f) => setTimeout(f, 100) : requestAnimationFrame;
  later(() => {
    dirty = false;
    if (S.me) renderMain();
  });
}

// === session ===

function saveSession() {
  if (S.session) sessionStorage.setItem('xinge.session', JSON.stringify(S.session));
  else sessionStorage.removeItem('xinge.session');
}

async function boot(wait = 500) {
  const saved = sessionStorage.getItem('xinge.session');
  if (saved) {
    try {
      S.session = JSON.parse(saved);
      await start();
      return;
    } catch (e) {
      if (e instanceof ApiError && e.retryable) {
        // The server is away (restarting?): keep the session and try again, backing off.
        render(document.getElementById('app'), h('div.center', null, h('div.card', { role: 'status' },
          h('p', null, `Cannot reach the server (${e.message}). Trying again…`))));
        setTimeout(() => boot(Math.min(wait * 2, 10000)), wait);
        return;
      }
      S.session = null;
      saveSession();
      if (!(e instanceof ApiError) || !FATAL_CODES.includes(e.code)) {
        showLogin(`Could not resume the session: ${e.message}`);
        return;
      }
    }
  }
  showLogin();
}

async function start() {
  S.me = await api('GET', '/v1/me');
  S.profiles.set(S.me.user_id, S.me);
  const key = `${S.me.user_id}.${S.session.device}`;
  try {
    const o = JSON.parse(sessionStorage.getItem(`xinge.outbox.${key}`) || '[]');
    S.outbox = Array.isArray(o) ? o.slice(0, MAX_OUTBOX) : [];
  } catch { S.outbox = []; }
  for (const m of S.outbox) if (m.state === 'sending') m.state = 'pending';
  S.gw = new Gateway(S.session.token);
  S.inbox = new Inbox(S.gw, `xinge.cursor.${key}`, applyEntries);
  S.gw.addEventListener('state', (e) => {
    S.conn = e.detail;
    // Offline, we know nobody's presence; the reconnection asks again.
    if (e.detail.state !== 'online') S.presence.clear();
    renderConn();
  });
  S.gw.addEventListener('online', () => onConnected().catch(fail));
  S.gw.addEventListener('signal', (e) => onSignal(e.detail));
  S.gw.addEventListener('fatal', (e) => sessionOver(e.detail));
  buildMain();
  S.gw.start();
  initPush().catch(() => {});
}

async function onConnected() {
  // The server forgot what this device's app said on the old connection.
  if (document.hidden) sendAppState();
  pullGroups(await S.inbox.connected());
  await Promise.all([refreshConvs(), refreshFriends()]);
  openFromHash();
  await Promise.all([refreshPresence(), catchUpOpen()]);
  flushOutbox();
}

/** Large groups that moved (while we were away, or with a lost signal): each one we know
 *  pulls from its cursor; one we do not know yet comes with the conversation list. */
function pullGroups(heads) {
  for (const g of heads) {
    if (S.convs.has(g.conv)) S.inbox.enqueue(() => applyGroupSignal({ type: 'group', conv: g.conv, seq: g.head }));
  }
}

/** The periodic repair of large groups (the inbox repairs itself): their heads, every 20 s. */
setInterval(() => {
  if (S.gw?.state !== 'online') return;
  S.gw.request(CMD.SYNC, { after: 0, limit: 1, groups: true })
    .then((r) => pullGroups(r.groups || []))
    .catch(() => {});
}, 20000);

function stopSession() {
  resetPush();
  S.gw?.stop();
  S.inbox?.stop();
  clearInterval(S.open?.poll);
  S.open?.io?.disconnect();
  cancelVoice();
  for (const u of S.uploads) u.up.abort();
  signedUrls.clear();
  Object.assign(S, {
    me: null, gw: null, inbox: null, open: null, outbox: [], uploads: [], friends: [], invites: [], found: null,
    requests: { incoming: [], outgoing: [] }, tab: 'chats',
  });
  for (const m of [S.convs, S.profiles, S.presence, S.typing, S.peerRead]) m.clear();
  S.blocked.clear();
}

function sessionOver(reason) {
  // The server dropped this device's push registration with its token; the browser's
  // subscription goes too.
  if (P.on) unsubscribeBrowser().catch(() => {});
  stopSession();
  S.session = null;
  saveSession();
  const why = reason.code === 'token_revoked'
    ? 'This device was logged out (or logged in again elsewhere).'
    : 'Your session has ended.';
  showLogin(`${why} Please log in again.`);
}

async function logout() {
  // The server drops the registration with the device; the browser stops being pushed to.
  if (P.on) await withTimeout(unsubscribeBrowser(), 3000, 'the browser').catch(() => {});
  try { await api('DELETE', '/v1/sessions'); } catch (e) { if (e.code !== 'unauthenticated') fail(e); }
  stopSession();
  S.session = null;
  saveSession();
  showLogin('Logged out.');
}

// === the app's state and offline push (Web Push through web/sw.js) ===

/** Tells the server whether anyone is looking at this device's app (APP_STATE): while it is
 *  in the background the device is notified by push as if it were not connected. */
function sendAppState() {
  if (S.gw?.state !== 'online') return;
  call(CMD.APP_STATE, { background: document.hidden }).catch(() => {});
}
document.addEventListener('visibilitychange', sendAppState);

const PUSH_TIMEOUT_MS = 20000;

/** `supported`: the server has a VAPID key and this browser can be pushed to; `on`: the
 *  user's choice for this device (kept in localStorage); `status`: what came of it. */
const P = { supported: false, key: null, on: false, busy: false, status: '' };

function resetPush() {
  Object.assign(P, { supported: false, key: null, on: false, busy: false, status: '' });
  renderPush();
}

const PUSH_CHOICE = 'xinge.push.';
const MAX_PUSH_CHOICES = 20;

/** Whether the user turned notifications on for this device (localStorage, per user and
 *  device; every tab is a device, so only the most recent few are kept). */
function pushWanted() {
  try {
    return JSON.parse(localStorage.getItem(`${PUSH_CHOICE}${S.me.user_id}.${S.session.device}`))?.on === true;
  } catch { return false; }
}

function rememberPush(on) {
  const key = `${PUSH_CHOICE}${S.me.user_id}.${S.session.device}`;
  if (!on) {
    localStorage.removeItem(key);
    return;
  }
  localStorage.setItem(key, JSON.stringify({ on: true, at: Date.now() }));
  const keys = [];
  for (let i = 0; i < localStorage.length; i++) {
    const k = localStorage.key(i);
    if (!k?.startsWith(PUSH_CHOICE)) continue;
    let at = 0;
    try { at = JSON.parse(localStorage.getItem(k))?.at || 0; } catch { /* damaged: oldest */ }
    keys.push([at, k]);
  }
  keys.sort((a, b) => b[0] - a[0]);
  for (const [, k] of keys.slice(MAX_PUSH_CHOICES)) localStorage.removeItem(k);
}

function withTimeout(promise, ms, who) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${who} did not answer in time`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

function base64urlBytes(s) {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

function sameBytes(buf, bytes) {
  if (!buf) return false;
  const a = new Uint8Array(buf);
  return a.length === bytes.length && a.every((x, i) => x === bytes[i]);
}

function setPushStatus(text) {
  P.status = text;
  renderPush();
}

/** After login: the toggle, if the server pushes to browsers and this browser can be
 *  pushed to; a device that had it on subscribes again (its registration went with its last
 *  logout, and a subscription may have changed), without asking — a permission prompt
 *  needs a click. */
async function initPush() {
  const me = S.me;
  if (!('serviceWorker' in navigator) || !('PushManager' in window) || !('Notification' in window)) return;
  const cfg = await api('GET', '/v1/push/config');
  if (S.me !== me || !cfg?.vapid_public_key) return;
  P.key = cfg.vapid_public_key;
  P.supported = true;
  const wanted = pushWanted();
  if (wanted && Notification.permission === 'granted') {
    await enablePush(false);
  } else {
    if (wanted) rememberPush(false);
    setPushStatus('Off');
  }
}

/** Turns notifications on: permission, the service worker, a push subscription, and the
 *  subscription registered with the server for this device. Failures end as status text. */
async function enablePush(ask) {
  const me = S.me;
  P.busy = true;
  P.on = true;
  setPushStatus('Turning on…');
  try {
    let perm = Notification.permission;
    if (perm === 'default' && ask) perm = await Notification.requestPermission();
    if (S.me !== me) return;
    if (perm !== 'granted') {
      P.on = false;
      rememberPush(false);
      setPushStatus(perm === 'denied' ? 'Blocked in this browser’s settings' : 'Not allowed');
      return;
    }
    rememberPush(true);
    await navigator.serviceWorker.register('/sw.js', { scope: '/' });
    const reg = await withTimeout(navigator.serviceWorker.ready, PUSH_TIMEOUT_MS, 'the service worker');
    const key = base64urlBytes(P.key);
    let sub = await reg.pushManager.getSubscription();
    if (sub && !sameBytes(sub.options?.applicationServerKey, key)) {
      // Made for another server key: the server could not push to it.
      await sub.unsubscribe().catch(() => {});
      sub = null;
    }
    sub ||= await withTimeout(reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
      PUSH_TIMEOUT_MS, 'the push service');
    if (S.me !== me || !P.on) return;
    const j = sub.toJSON();
    await api('PUT', '/v1/me/push', { provider: 'webpush', endpoint: j.endpoint, p256dh: j.keys?.p256dh, auth: j.keys?.auth });
    if (S.me === me) setPushStatus('On');
  } catch (e) {
    // The choice stays: the next start tries again (a push service may be out of reach).
    if (S.me === me) setPushStatus(`Not available here: ${e.message || e}`);
  } finally {
    if (S.me === me) {
      P.busy = false;
      renderPush();
    }
  }
}

async function disablePush() {
  const me = S.me;
  P.busy = true;
  P.on = false;
  rememberPush(false);
  setPushStatus('Turning off…');
  try {
    await withTimeout(unsubscribeBrowser(), PUSH_TIMEOUT_MS, 'the browser').catch(() => {});
    await api('DELETE', '/v1/me/push');
    if (S.me === me) setPushStatus('Off');
  } catch (e) {
    if (S.me === me) setPushStatus(`Could not turn off: ${e.message || e}`);
  } finally {
    if (S.me === me) {
      P.busy = false;
      renderPush();
    }
  }
}

async function unsubscribeBrowser() {
  const reg = await navigator.serviceWorker?.getRegistration('/');
  const sub = await reg?.pushManager?.getSubscription();
  if (sub) await sub.unsubscribe();
}

function renderPush() {
  if (!R.push) return;
  R.push.hidden = !P.supported;
  if (!P.supported) {
    R.push.replaceChildren();
    return;
  }
  renderIfChanged(R.push,
    h('button.ghost', {
      'aria-pressed': P.on ? 'true' : 'false', disabled: P.busy, 'data-fk': 'push', 'data-test': 'push-toggle',
      title: 'Notifications while this app is in the background or closed',
      onclick: () => (P.on ? disablePush() : enablePush(true)),
    }, 'Notifications'),
    h('small.muted', { role: 'status', 'data-test': 'push-status', title: P.status }, P.status));
}

/** A conversation to open from a notification: `#conv=<conv>` when the click opened this
 *  window, a message from the service worker when it focused it. */
function openFromPush(conv) {
  if (!S.me || typeof conv !== 'string' || !S.convs.has(conv)) return;
  S.tab = 'chats';
  if (S.open?.conv !== conv) openConv(conv);
  else update();
}

/** A conversation's notifications go once it is opened here (its tag is the conversation). */
function closeNotifications(conv) {
  if (!P.supported) return;
  navigator.serviceWorker.getRegistration('/')
    .then((r) => r?.getNotifications({ tag: conv }))
    .then((ns) => ns?.forEach((n) => n.close()))
    .catch(() => {});
}

function openFromHash() {
  const m = /^#conv=([^&]+)$/.exec(location.hash);
  if (!m || !S.me) return;
  history.replaceState(null, '', location.pathname + location.search);
  try { openFromPush(decodeURIComponent(m[1])); } catch { /* not a conversation */ }
}
window.addEventListener('hashchange', openFromHash);
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.addEventListener('message', (e) => {
    if (e.data?.type === 'open') openFromPush(e.data.conv);
  });
  navigator.serviceWorker.startMessages();
}

// === login screen ===

function showLogin(message = '') {
  const app = document.getElementById('app');
  let mode = 'login';
  const err = h('p.error', { role: 'alert', 'data-test': 'login-error' }, message);
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, minlength: 3, maxlength: 32, pattern: '[a-z0-9_.\\-]+', 'aria-describedby': 'user-hint' });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, minlength: 8, maxlength: 256 });
  const display = h('input', { id: 'display', name: 'display', maxlength: 64 });
  const displayRow = h('p.field', { hidden: true }, h('label', { for: 'display' }, 'Display name (optional)'), display);
  const submit = h('button.primary', { type: 'submit' }, 'Log in');
  const switcher = h('button.link', { type: 'button', onclick: () => {
    mode = mode === 'login' ? 'register' : 'login';
    submit.textContent = mode === 'login' ? 'Log in' : 'Create account';
    switcher.textContent = mode === 'login' ? 'No account yet? Create one' : 'Have an account? Log in';
    displayRow.hidden = mode === 'login';
    pass.autocomplete = mode === 'login' ? 'current-password' : 'new-password';
  } }, 'No account yet? Create one');
  const form = h('form.card.login', { onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = '';
    submit.disabled = true;
    try {
      const username = user.value.trim().toLowerCase();
      if (mode === 'register') {
        await http('POST', '/v1/accounts', {
          username, password: pass.value, display_name: display.value.trim() || undefined,
        });
      }
      const device = deviceId();
      const r = await http('POST', '/v1/sessions', { username, password: pass.value, device });
      S.session = { token: r.token, user_id: r.user_id, device: r.device, username };
      saveSession();
      await start();
    } catch (e2) {
      S.session = null;
      saveSession();
      err.textContent = e2 instanceof ApiError ? e2.message : String(e2);
      submit.disabled = false;
    }
  } },
  h('h1', null, h('img', { src: '/web/icon.svg', alt: '', width: 40, height: 40 }), 'xinge'),
  h('p.muted', null, 'Instant messaging, served by this xinge server.'),
  h('p.field', null, h('label', { for: 'username' }, 'Username'), user,
    h('small.muted', { id: 'user-hint' }, '3–32 characters: a–z, 0–9, _ . -')),
  h('p.field', null, h('label', { for: 'password' }, 'Password'), pass, h('small.muted', null, 'At least 8 characters')),
  displayRow, err, submit, switcher);
  render(app, h('div.center', null, form));
  user.focus();
}

// === the main screen ===

function buildMain() {
  const app = document.getElementById('app');
  R.conn = h('div.conn', { 'data-conn': 'offline' });
  R.sideBody = h('div.side-body');
  R.tabs = h('nav.tabs', { 'aria-label': 'Sections' });
  R.side = h('aside.side', { 'aria-label': 'Conversations and friends' },
    h('header.side-head', null,
      h('div.me', null, h('span.avatar', { 'aria-hidden': 'true' }, initials(S.me.display_name || S.me.username)),
        h('span', null, h('strong', { 'data-test': 'me' }, S.me.display_name || S.me.username), h('br'),
          h('small.muted', null, '@', S.me.username))),
      h('button.ghost', { onclick: logout, 'data-test': 'logout' }, 'Log out')),
    R.conn, R.push = h('div.push', { hidden: true }), R.tabs, R.sideBody);
  R.chat = h('main.chat', { 'aria-label': 'Chat', ondragover: onChatDrag, ondrop: onChatDrop });
  R.chat.addEventListener('dragleave', (e) => {
    if (!R.chat.contains(e.relatedTarget)) R.chat.classList.remove('dropping');
  });
  R.shell = h('div.shell', null, R.side, R.chat);
  render(app, R.shell);
  document.onkeydown = (e) => {
    if (e.key === 'Escape' && S.open && !document.querySelector('dialog[open]')) {
      closeConv();
    }
  };
  renderConn();
  renderPush();
  renderMain();
}

function renderConn() {
  if (!R.conn) return;
  const st = S.conn.state;
  R.conn.dataset.conn = st;
  const label = st === 'online' ? 'Connected'
    : st === 'connecting' ? 'Connecting…'
      : S.conn.retryInMs ? `Offline — retrying in ${Math.ceil(S.conn.retryInMs / 1000)} s` : 'Offline';
  renderIfChanged(R.conn, h('span.dot', { 'aria-hidden': 'true' }), h('span', { role: 'status' }, label),
    st === 'offline' && S.gw ? h('button.link', { onclick: () => S.gw.reconnectNow() }, 'Retry now') : null);
  update();
}

function renderMain() {
  R.shell.classList.toggle('chat-open', !!S.open);
  S.invites = S.invites.filter((i) => !S.convs.has(i.conv)); // joined since
  const incoming = S.requests.incoming.length + S.invites.length;
  const unread = totalUnread();
  document.title = unread ? `(${unread}) xinge` : 'xinge';
  renderIfChanged(R.tabs,
    tabButton('chats', 'Chats', unread),
    tabButton('friends', 'Friends', incoming),
    h('button.ghost', { onclick: newGroupDialog, 'data-fk': 'new-group' }, '+ Group'));
  if (S.tab === 'chats') renderIfChanged(R.sideBody, convList());
  else renderIfChanged(R.sideBody, friendsPanel());
  renderChat();
}

function totalUnread() {
  let n = 0;
  for (const c of S.convs.values()) n += c.unread;
  return n;
}

function tabButton(id, label, count) {
  return h('button.tab', {
    'aria-pressed': S.tab === id ? 'true' : 'false', 'data-fk': 'tab-' + id, 'data-tab': id,
    onclick: () => { S.tab = id; update(); },
  }, label, count ? h('span.badge', null, String(count)) : null);
}

// === conversation list ===

function sortedConvs() {
  return [...S.convs.values()].sort((a, b) => b.last_activity_ms - a.last_activity_ms
    || (b.last_message?.msg_id ?? 0) - (a.last_message?.msg_id ?? 0));
}

function convList() {
  const list = sortedConvs();
  if (!list.length) {
    return h('p.empty', null, 'No conversations yet. Find friends in the Friends tab, or start a group.');
  }
  return h('ul.convs', { role: 'list' }, list.map((c) => {
    const peer = peerOf(c.conv, S.me.user_id);
    const online = peer ? S.presence.get(peer) : undefined;
    const typing = S.typing.get(c.conv);
    return h('li', null, h('button.conv', {
      'data-conv': c.conv, 'data-fk': 'conv-' + c.conv,
      'aria-current': S.open?.conv === c.conv ? 'true' : undefined,
      onclick: () => openConv(c.conv),
    },
    h('span.avatar', { 'aria-hidden': 'true' }, initials(convName(c)),
      peer ? h('span.presence', { 'data-online': online ? 'true' : 'false', title: online ? 'online' : 'offline' }) : null),
    h('span.conv-main', null,
      h('span.conv-top', null, h('strong.conv-name', null, convName(c)), h('small.muted', null, time(c.last_activity_ms))),
      h('span.conv-bottom', null,
        h('span.preview', null, typing && typing.until > Date.now() ? 'typing…' : preview(c)),
        c.unread_mentions ? h('span.mention', { title: 'you were mentioned', 'aria-label': 'mentioned' }, '@') : null,
        c.unread ? h('span.badge', { 'aria-label': `${c.unread} unread` }, String(c.unread)) : null))));
  }));
}

function preview(c) {
  const m = c.last_message;
  if (!m) return '';
  const who = c.name || m.sender === S.me.user_id ? `${name(m.sender)}: ` : '';
  return who + messageText(m, true);
}

function messageText(m, short) {
  if (m.kind === 'content') return contentText(m.content);
  if (m.kind === 'recall' || m.kind === 'recalled') return short ? 'recalled a message' : 'A message was recalled';
  if (m.kind === 'deleted') return 'This message was deleted';
  if (m.kind === 'system') return systemText(m.event);
  return '';
}

function contentText(c) {
  if (c?.media) return c.text ? `${mediaLabel(c.media)} · ${c.text}` : mediaLabel(c.media);
  if (c && typeof c.text === 'string') return c.text;
  return '[unsupported message]';
}

/** A media message in one line (the conversation list, a message still being sent). Words,
 *  not emoji: a system without an emoji font would show empty boxes. */
function mediaLabel(md) {
  switch (md?.kind) {
    case 'image': return 'Photo';
    case 'voice': return md.duration_ms ? `Voice message (${clock(md.duration_ms)})` : 'Voice message';
    case 'video': return 'Video';
    default: return `File: ${md?.name || 'unnamed'}`;
  }
}

function systemText(ev) {
  const n = (id) => name(id);
  switch (ev.action) {
    case 'created': return `${n(ev.by)} created the group “${ev.name}”`;
    case 'joined': return `${ev.users.map(n).join(', ')} joined`;
    case 'invited': return `${n(ev.by)} invited ${n(ev.user)}`;
    case 'removed': return `${n(ev.by)} removed ${n(ev.user)}`;
    case 'left': return `${n(ev.user)} left`;
    case 'updated': return ev.name ? `${n(ev.by)} renamed the group to “${ev.name}”` : `${n(ev.by)} updated the group`;
    case 'owner_changed': return `${n(ev.to)} is now the owner`;
    case 'admin_set': return `${n(ev.user)} is ${ev.admin ? 'now an admin' : 'no longer an admin'}`;
    case 'member_muted': return `${n(ev.user)} was ${ev.muted ? 'muted' : 'unmuted'}`;
    case 'all_muted': return ev.muted ? 'Only admins can talk now' : 'Everyone can talk again';
    case 'dismissed': return 'The group was dismissed';
    default: return ev.action;
  }
}

async function refreshConvs() {
  const r = await call(CMD.CONVERSATIONS, {});
  const next = new Map();
  for (const c of r.conversations) {
    const old = S.convs.get(c.conv);
    // A message applied from the inbox after the server built this list stays.
    next.set(c.conv, old && old.last_seq > c.last_seq ? old : c);
  }
  // A chat just started from the friends list has no messages yet, so the server does not
  // list it; anything else the server no longer lists (a group left) goes.
  for (const [k, c] of S.convs) if (!next.has(k) && c.local && c.last_seq === 0) next.set(k, c);
  S.convs = next;
  update();
}
const refreshConvsSoon = debounce(() => S.gw?.state === 'online' && refreshConvs().catch(() => {}), 300);

// === inbox events ===

function applyEntries(entries) {
  for (const e of entries) {
    const ev = e.event;
    switch (ev.type) {
      case 'message': applyMessage(ev.message); break;
      case 'read': applyRead(ev); break;
      case 'group_invite':
        if (!S.invites.some((i) => i.conv === ev.conv)) S.invites.push({ conv: ev.conv, by: ev.by, name: ev.name });
        break;
      case 'blocked': case 'unblocked':
        if (ev.by === S.me.user_id) ev.type === 'blocked' ? S.blocked.add(ev.peer) : S.blocked.delete(ev.peer);
        refreshFriendsSoon();
        break;
      default: refreshFriendsSoon();
    }
  }
  update();
}

function applyMessage(m) {
  const me = S.me.user_id;
  let c = S.convs.get(m.conv);
  if (!c) {
    c = {
      conv: m.conv, peer: peerOf(m.conv, me), last_seq: 0, read_seq: 0, unread: 0,
      unread_mentions: 0, name: null, last_message: null, last_activity_ms: 0, local: true,
    };
    S.convs.set(m.conv, c);
    if (groupIdOf(m.conv)) refreshConvsSoon(); // learn the group's name
  }
  if (m.conv_seq > c.last_seq) {
    c.last_seq = m.conv_seq;
    c.last_message = m;
    c.last_activity_ms = Math.max(c.last_activity_ms, m.sent_at_ms);
    // The server's count: every message of the others after the read cursor (system
    // messages and recalls too), so a reload shows the same number.
    const reading = S.open?.conv === m.conv && document.visibilityState === 'visible';
    if (m.sender !== me && m.conv_seq > c.read_seq && !reading) {
      c.unread += 1;
      if (m.mention_all || (m.mentions || []).includes(me)) c.unread_mentions += 1;
    }
    if (m.sender === me) { c.read_seq = m.conv_seq; c.unread = 0; c.unread_mentions = 0; }
  }
  if (m.kind === 'recall' && c.last_message && c.last_message.conv_seq === m.target) c.last_message = m;
  if (m.kind === 'system') {
    refreshConvsSoon();
    if (S.open?.conv === m.conv) loadGroup().catch(() => {});
  }
  if (S.typing.get(m.conv)?.user === m.sender) S.typing.delete(m.conv);
  // Sending moves the sender's own read cursor (without a read event), so a 1:1 peer who
  // writes has read everything before.
  if (c.peer === m.sender || peerOf(m.conv, me) === m.sender) {
    S.peerRead.set(m.conv, Math.max(S.peerRead.get(m.conv) || 0, m.conv_seq));
  }
  // Our own message from another device (or this one's answer raced the signal).
  if (m.sender === me) dropFromOutbox(m.client_msg_id);
  if (S.open?.conv === m.conv) {
    addToView([m]);
    if (S.open.group) refreshGroupReadSoon();
    markReadSoon();
  }
}

function applyRead(ev) {
  const c = S.convs.get(ev.conv);
  if (ev.reader === S.me.user_id) {
    if (!c) return;
    if (ev.seq > c.read_seq) c.read_seq = ev.seq;
    if (c.read_seq >= c.last_seq) { c.unread = 0; c.unread_mentions = 0; } else refreshConvsSoon();
  } else {
    S.peerRead.set(ev.conv, Math.max(S.peerRead.get(ev.conv) || 0, ev.seq));
  }
}

function onSignal(sig) {
  switch (sig.type) {
    case 'inbox': S.inbox.signal(sig); break;
    case 'typing': {
      if (sig.user === S.me.user_id) return;
      S.typing.set(sig.conv, { user: sig.user, until: Date.now() + TYPING_SHOWN_MS });
      setTimeout(update, TYPING_SHOWN_MS + 50);
      update();
      break;
    }
    case 'presence': S.presence.set(sig.user, sig.online); update(); break;
    case 'group': S.inbox.enqueue(() => applyGroupSignal(sig)); break;
    default: break;
  }
}

/** A large (read fan-out) group moved: apply the messages that ride along if they join up
 *  with what we have, else pull the group's history after our cursor for it. */
async function applyGroupSignal(sig) {
  const c = S.convs.get(sig.conv);
  // The cursor: for the open chat, the end of what it shows without a gap (our own send's
  // answer can land past a message still on its way); otherwise the list's newest.
  const o = S.open?.conv === sig.conv && S.open.loaded && !S.open.hasNewer ? S.open : null;
  const last = o ? viewEnd(o) : (c ? c.last_seq : 0);
  if (sig.seq <= last) return;
  const ms = sig.messages || [];
  if (ms.length && ms[0].conv_seq <= last + 1) {
    for (const m of ms) if (m.conv_seq > last) applyMessage(m);
  } else {
    let after = last;
    for (let i = 0; i < 20; i++) {
      const r = await call(CMD.HISTORY, { conv: sig.conv, after, limit: 100 });
      for (const m of r.messages) applyMessage(m);
      if (!r.messages.length || !r.has_more) break;
      after = r.messages[r.messages.length - 1].conv_seq;
    }
  }
  update();
}

// === friends ===

async function refreshFriends() {
  const [friends, requests] = await Promise.all([api('GET', '/v1/friends'), api('GET', '/v1/friends/requests')]);
  S.friends = friends;
  S.requests = requests;
  update();
}
const refreshFriendsSoon = debounce(() => {
  refreshFriends().then(refreshPresence).catch(() => {});
}, 200);

async function refreshPresence() {
  const users = S.friends.map((f) => f.user_id);
  // The server answers at most 500 users per query (friend lists stop at 5,000).
  for (let i = 0; i < users.length; i += 500) {
    const r = await call(CMD.PRESENCE, { users: users.slice(i, i + 500) });
    for (const p of r.presence) S.presence.set(p.user, p.online);
  }
  update();
}

function friendsPanel() {
  const search = h('input', { id: 'find', type: 'search', placeholder: 'exact username', 'data-fk': 'find', 'aria-label': 'Find a user by username', maxlength: 32 });
  const form = h('form.row', { onsubmit: async (e) => {
    e.preventDefault();
    const q = search.value.trim().toLowerCase();
    if (!q) return;
    try {
      S.found = await api('GET', `/v1/users?username=${encodeURIComponent(q)}`);
      S.profiles.set(S.found.user_id, S.found);
    } catch (e2) {
      S.found = { missing: q, message: e2.code === 'not_found' ? `No user called “${q}”.` : e2.message };
    }
    update();
  } }, search, h('button', { type: 'submit', 'data-fk': 'find-go' }, 'Search'));

  const sections = [h('section', null, h('h2', null, 'Find people'), form, foundCard())];
  if (S.requests.incoming.length || S.invites.length) {
    sections.push(h('section', null, h('h2', null, 'Requests'), h('ul.people', null,
      S.requests.incoming.map((r) => h('li.person', { 'data-request': r.from },
        personLabel(r.from, r.note ? `“${r.note}”` : 'wants to be friends'),
        h('span.actions', null,
          h('button.primary', { 'data-fk': 'acc-' + r.from, onclick: () => act(api('POST', `/v1/friends/requests/${r.from}/accept`), refreshFriends) }, 'Accept'),
          h('button', { 'data-fk': 'dec-' + r.from, onclick: () => act(api('POST', `/v1/friends/requests/${r.from}/decline`), refreshFriends) }, 'Decline')))),
      S.invites.map((i) => h('li.person', { 'data-invite': i.conv },
        h('span', null, h('strong', null, i.name), h('br'), h('small.muted', null, `${name(i.by)} invites you to this group`)),
        h('span.actions', null,
          h('button.primary', { 'data-fk': 'join-' + i.conv, onclick: () => act(api('POST', `/v1/groups/${groupIdOf(i.conv)}/join`), () => {
            S.invites = S.invites.filter((x) => x !== i);
            return refreshConvs();
          }) }, 'Join'),
          h('button', { onclick: () => { S.invites = S.invites.filter((x) => x !== i); update(); } }, 'Dismiss')))))));
  }
  if (S.requests.outgoing.length) {
    sections.push(h('section', null, h('h2', null, 'Sent requests'), h('ul.people', null,
      S.requests.outgoing.map((r) => h('li.person', null, personLabel(r.to, 'waiting for an answer'))))));
  }
  sections.push(h('section', null, h('h2', null, `Friends (${S.friends.length})`),
    S.friends.length ? h('ul.people', null, S.friends.map((f) => h('li.person', { 'data-friend': f.user_id },
      personLabel(f.user_id, S.presence.get(f.user_id) ? 'online' : 'offline', S.presence.get(f.user_id)),
      h('span.actions', null,
        h('button.primary', { 'data-fk': 'chat-' + f.user_id, onclick: () => chatWith(f.user_id) }, 'Chat'),
        h('button', { 'data-fk': 'rm-' + f.user_id, onclick: () => confirm(`Remove ${name(f.user_id)} from your friends?`) && act(api('DELETE', `/v1/friends/${f.user_id}`), refreshFriends) }, 'Remove'),
        h('button.danger', { 'data-fk': 'blk-' + f.user_id, onclick: () => block(f.user_id, true) }, 'Block')))))
      : h('p.empty', null, 'No friends yet: search for a username above.')));
  return sections;
}

function personLabel(id, sub, online) {
  return h('span.person-label', null,
    h('span.avatar', { 'aria-hidden': 'true' }, initials(name(id)),
      online !== undefined ? h('span.presence', { 'data-online': online ? 'true' : 'false' }) : null),
    h('span', null, h('strong', null, name(id)), h('br'), h('small.muted', null, sub)));
}

function foundCard() {
  const f = S.found;
  if (!f) return null;
  if (f.missing) return h('p.error', { role: 'alert' }, f.message);
  if (f.user_id === S.me.user_id) return h('p.muted', null, 'That is you.');
  const isFriend = S.friends.some((x) => x.user_id === f.user_id);
  const note = h('input', { id: 'note', maxlength: 200, placeholder: 'Say hello (optional)', 'aria-label': 'Note with the request', 'data-fk': 'note' });
  return h('div.card.found', { 'data-found': f.username },
    h('p', null, h('strong', null, f.display_name || f.username), ' ', h('small.muted', null, '@' + f.username)),
    isFriend ? h('p.muted', null, 'Already a friend.', ' ', h('button', { onclick: () => chatWith(f.user_id) }, 'Chat'))
      : h('form.row', { onsubmit: (e) => {
        e.preventDefault();
        act(api('POST', '/v1/friends/requests', { to: f.user_id, note: note.value.trim() }), () => {
          toast(`Friend request sent to ${f.username}.`);
          S.found = null;
          return refreshFriends();
        });
      } }, note, h('button.primary', { type: 'submit', 'data-fk': 'send-req' }, 'Send request')),
    S.blocked.has(f.user_id)
      ? h('button', { onclick: () => block(f.user_id, false) }, 'Unblock')
      : h('button.danger', { onclick: () => block(f.user_id, true) }, 'Block'));
}

function block(id, on) {
  if (on && !confirm(`Block ${name(id)}? They will not be able to message you.`)) return;
  act(api(on ? 'PUT' : 'DELETE', `/v1/blocks/${id}`), () => {
    on ? S.blocked.add(id) : S.blocked.delete(id);
    toast(on ? `${name(id)} is blocked.` : `${name(id)} is unblocked.`);
    return refreshFriends();
  });
}

async function act(promise, then) {
  try {
    await promise;
    if (then) await then();
  } catch (e) { fail(e); }
  update();
}

function chatWith(user) {
  const me = S.me.user_id;
  // User ids are strings of digits (64-bit: not safe as JavaScript numbers); the smaller
  // comes first.
  const [lo, hi] = BigInt(me) < BigInt(user) ? [me, user] : [user, me];
  const conv = `d${lo}-${hi}`;
  if (!S.convs.has(conv)) {
    S.convs.set(conv, {
      conv, peer: user, last_seq: 0, read_seq: 0, unread: 0, unread_mentions: 0, name: null,
      last_message: null, last_activity_ms: Date.now(), local: true,
    });
  }
  S.tab = 'chats';
  openConv(conv);
}

// === the open conversation ===

function openConv(conv) {
  clearInterval(S.open?.poll);
  S.open?.io?.disconnect();
  cancelVoice();
  const group = groupIdOf(conv);
  S.open = {
    conv, group, msgs: [], seqs: new Set(), recalled: new Set(), hasOlder: false,
    loadingOlder: false, hasNewer: false, loadingNewer: false, loaded: false, info: null, members: null,
    stick: true, poll: null,
    media: new Map(), // conv_seq -> the message's media element, kept across re-renders
    io: null, // loads media URLs as their messages scroll into view
  };
  const composer = buildComposer(conv);
  R.chatHead = h('header.chat-head');
  R.list = h('ol.msgs', { 'aria-label': 'Messages', tabindex: '0' });
  R.list.addEventListener('scroll', onScroll);
  render(R.chat, R.chatHead, R.list, composer);
  if (group) {
    // Group reads are not signalled to senders (a 10,000-member group must not fan out
    // every read), so an open group asks for the members' cursors now and then.
    S.open.poll = setInterval(() => {
      if (document.visibilityState === 'visible') refreshGroupRead().catch(() => {});
    }, GROUP_READ_POLL_MS);
  }
  update();
  closeNotifications(conv);
  // Offline, the reconnection loads it (catchUpOpen).
  const quiet = (e) => { if (!(e instanceof ApiError) || !e.retryable) fail(e); };
  loadNewest().catch(quiet);
  if (group) loadGroup().catch(quiet);
  composer.querySelector('textarea').focus();
}

function closeConv() {
  clearInterval(S.open?.poll);
  S.open?.io?.disconnect();
  cancelVoice();
  const conv = S.open?.conv;
  S.open = null;
  render(R.chat);
  update();
  requestAnimationFrame(() => document.querySelector(`[data-conv="${conv}"]`)?.focus());
}

async function loadNewest() {
  const o = S.open;
  const c = S.convs.get(o.conv);
  if (c && c.last_seq === 0 && c.local) {
    o.loaded = true;
    update();
    return;
  }
  const r = await call(CMD.HISTORY, { conv: o.conv, limit: PAGE });
  if (S.open !== o) return;
  o.hasOlder = r.has_more;
  o.loaded = true;
  addToView(r.messages, 'newer');
  markReadSoon();
  if (!o.group) findPeerRead().catch(() => {});
}

/** Drop the stretch in view and show the newest page again. */
function jumpToNewest() {
  const o = S.open;
  o.msgs = [];
  o.seqs.clear();
  o.hasNewer = false;
  o.hasOlder = false;
  o.stick = true;
  loadNewest().catch(fail);
}

/** After a reconnection: whatever the open conversation missed, without duplicates. */
async function catchUpOpen() {
  const o = S.open;
  if (!o) return;
  if (!o.loaded) {
    await loadNewest();
    if (o.group) await loadGroup();
    return;
  }
  if (!o.hasNewer) await loadNewer(10);
  markReadSoon();
  if (o.group) refreshGroupRead().catch(() => {});
  else findPeerRead().catch(() => {});
}

/** The end of the gapless run the view starts with. */
function viewEnd(o) {
  if (!o.msgs.length) return 0;
  let end = o.msgs[0].conv_seq;
  for (const m of o.msgs) {
    if (m.conv_seq > end + 1) break;
    end = m.conv_seq;
  }
  return end;
}

/** Pages forward from the end of the gapless run in view (up to `pages` pages). */
async function loadNewer(pages = 1) {
  const o = S.open;
  if (!o || o.loadingNewer) return;
  o.loadingNewer = true;
  try {
    for (let i = 0; i < pages; i++) {
      const after = viewEnd(o);
      const r = await call(CMD.HISTORY, { conv: o.conv, after, limit: i ? 100 : PAGE });
      if (S.open !== o) return;
      addToView(r.messages, 'newer');
      o.hasNewer = r.has_more;
      if (!r.has_more || !r.messages.length) break;
    }
    update();
  } finally { o.loadingNewer = false; }
}

async function loadOlder() {
  const o = S.open;
  if (!o || !o.hasOlder || o.loadingOlder || !o.msgs.length) return;
  o.loadingOlder = true;
  const fromBottom = R.list.scrollHeight - R.list.scrollTop;
  try {
    const r = await call(CMD.HISTORY, { conv: o.conv, before: o.msgs[0].conv_seq, limit: PAGE });
    if (S.open !== o) return;
    o.hasOlder = r.has_more;
    addToView(r.messages, 'older');
    renderChat();
    R.list.scrollTop = R.list.scrollHeight - fromBottom;
  } catch (e) { fail(e); } finally { o.loadingOlder = false; }
}

function onScroll() {
  const o = S.open;
  if (!o) return;
  const fromBottom = R.list.scrollHeight - R.list.scrollTop - R.list.clientHeight;
  o.stick = fromBottom < 60 && !o.hasNewer;
  if (R.list.scrollTop < 80) loadOlder();
  else if (fromBottom < 80 && o.hasNewer) loadNewer().catch(fail);
}

/**
 * Messages into the open view: each conv_seq once, in order, at most MAX_IN_VIEW. The view
 * is one contiguous stretch of the conversation; `mode` says which end grows: `live` (the
 * inbox), `newer` or `older` (history pages). What falls off the other end pages back in
 * when the reader scrolls there.
 */
function addToView(messages, mode = 'live') {
  const o = S.open;
  for (const m of messages) {
    if (m.conv !== o.conv || o.seqs.has(m.conv_seq)) continue;
    if (m.kind === 'recall') o.recalled.add(m.target);
    const first = o.msgs.length ? o.msgs[0].conv_seq : 0;
    const last = o.msgs.length ? o.msgs[o.msgs.length - 1].conv_seq : 0;
    if (mode === 'live' && o.hasNewer && m.conv_seq > last) continue; // beyond the stretch
    if (mode !== 'older' && o.hasOlder && m.conv_seq < first) continue;
    o.seqs.add(m.conv_seq);
    o.msgs.push(m);
  }
  o.msgs.sort((a, b) => a.conv_seq - b.conv_seq);
  while (o.msgs.length > MAX_IN_VIEW) {
    const gone = mode === 'older' ? o.msgs.pop() : o.msgs.shift();
    o.seqs.delete(gone.conv_seq);
    o.media.delete(gone.conv_seq);
    if (mode === 'older') o.hasNewer = true;
    else o.hasOlder = true;
  }
  update();
}

const markReadSoon = debounce(markRead, 150);
async function markRead() {
  const o = S.open;
  if (!o || document.visibilityState !== 'visible' || S.gw?.state !== 'online') return;
  const c = S.convs.get(o.conv);
  const newest = o.msgs.length ? o.msgs[o.msgs.length - 1].conv_seq : 0;
  const seq = Math.max(newest, c?.last_seq ?? 0);
  if (!c || seq <= c.read_seq) return;
  try {
    const r = await call(CMD.READ, { conv: o.conv, seq });
    c.read_seq = Math.max(c.read_seq, r.read_seq);
    if (c.read_seq >= c.last_seq) { c.unread = 0; c.unread_mentions = 0; }
    update();
  } catch { /* the next message or reconnection tries again */ }
}
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState !== 'visible') return;
  markReadSoon();
  if (S.open?.group) refreshGroupReadSoon();
});

/** The peer's read cursor in a 1:1 chat: read_state of our own messages in view, newest
 *  first, then a binary search over them (a handful of requests, only on open). */
async function findPeerRead() {
  const o = S.open;
  const mine = o.msgs.filter((m) => m.sender === S.me.user_id && m.kind === 'content');
  if (!mine.length) return;
  const read = async (m) => (await call(CMD.READ_STATE, { conv: o.conv, seq: m.conv_seq, limit: 1 })).read_count > 0;
  let best = 0;
  if (await read(mine[mine.length - 1])) best = mine[mine.length - 1].conv_seq;
  else {
    let lo = 0;
    let hi = mine.length - 2;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (await read(mine[mid])) { best = mine[mid].conv_seq; lo = mid + 1; } else hi = mid - 1;
    }
  }
  S.peerRead.set(o.conv, Math.max(S.peerRead.get(o.conv) || 0, best));
  update();
}

async function loadGroup() {
  const o = S.open;
  if (!o?.group) return;
  const info = await api('GET', `/v1/groups/${o.group}`);
  if (S.open !== o) return;
  o.info = info;
  await refreshGroupRead();
}

/** Members with their read cursors (first 1,000): "read by N" for our messages is
 *  computed from them; the click-through asks the server for the exact lists. */
async function refreshGroupRead() {
  const o = S.open;
  if (!o?.group) return;
  const r = await api('GET', `/v1/groups/${o.group}/members?limit=1000`);
  if (S.open !== o) return;
  o.members = new Map(r.members.map((m) => [m.user, m]));
  o.membersComplete = !r.next_after;
  update();
}
const refreshGroupReadSoon = debounce(() => refreshGroupRead().catch(() => {}), 400);

function groupReadCount(m) {
  const o = S.open;
  if (!o.members) return null;
  let n = 0;
  for (const mem of o.members.values()) {
    if (mem.user !== m.sender && mem.joined_seq < m.conv_seq && mem.read_seq >= m.conv_seq) n++;
  }
  return n;
}

function myRole() {
  return S.open?.members?.get(S.me.user_id)?.role || 'member';
}

function renderChat() {
  const o = S.open;
  if (!o) {
    render(R.chat, h('div.placeholder', null, h('img', { src: '/web/icon.svg', alt: '', width: 64, height: 64 }),
      h('p', null, 'Pick a conversation, or find friends to talk to.')));
    return;
  }
  const c = S.convs.get(o.conv) || { conv: o.conv, name: o.info?.name };
  const peer = peerOf(o.conv, S.me.user_id);
  const typing = S.typing.get(o.conv);
  let sub = '';
  if (typing && typing.until > Date.now()) sub = `${name(typing.user)} is typing…`;
  else if (peer) sub = S.presence.get(peer) ? 'online' : 'offline';
  else if (o.info) sub = `${o.info.member_count} members`;
  renderIfChanged(R.chatHead,
    h('button.ghost.back', { onclick: closeConv, 'aria-label': 'Back to conversations', 'data-fk': 'back' }, '←'),
    h('div.chat-title', null, h('strong', { 'data-test': 'chat-title' }, convName(c)),
      h('small.muted', { 'data-test': typing && typing.until > Date.now() ? 'typing' : 'sub' }, sub)),
    o.group ? h('button.ghost', { onclick: groupDialog, 'data-fk': 'group-info' }, 'Group') : null);

  // The list is rebuilt only when something it shows changed, so a typing signal or a
  // presence change does not throw away a text selection.
  let reads = 0;
  for (const m of o.members?.values() || []) reads += m.read_seq;
  const outbox = S.outbox.filter((x) => x.conv === o.conv).map((x) => x.cmid + x.state).join();
  // Upload progress is not in here: it moves the bars directly (showProgress).
  const uploads = S.uploads.filter((x) => x.conv === o.conv).map((x) => x.id + x.state).join();
  const first = o.msgs[0]?.conv_seq;
  const last = o.msgs[o.msgs.length - 1]?.conv_seq;
  const sig = [o.msgs.length, first, last, o.recalled.size, outbox, uploads, S.peerRead.get(o.conv), reads,
    o.hasOlder, o.hasNewer, o.loadingOlder, o.loaded, S.profiles.size, Math.floor(Date.now() / 30000)].join('|');
  if (R.list.dataset.sig === sig) return;
  R.list.dataset.sig = sig;
  const items = [];
  if (o.hasOlder) {
    items.push(h('li.more', null, h('button.link', { onclick: loadOlder, 'data-fk': 'older' }, o.loadingOlder ? 'Loading…' : 'Load older messages')));
  } else if (o.loaded) {
    items.push(h('li.more.muted', null, 'Start of the conversation'));
  }
  const peerRead = S.peerRead.get(o.conv) || 0;
  for (const m of o.msgs) {
    if (m.kind === 'recall') continue;
    if (m.kind === 'system') {
      items.push(h('li.sys', { 'data-seq': m.conv_seq }, systemText(m.event)));
      continue;
    }
    const mine = m.sender === S.me.user_id;
    // A recalled message comes from the server without its content (kind 'recalled');
    // one this page already held is dropped when its recall arrives.
    const recalled = m.kind === 'recalled' || o.recalled.has(m.conv_seq);
    let status = null;
    if (mine && !recalled) {
      if (o.group) {
        const n = groupReadCount(m);
        status = h('button.link.readby', { 'data-fk': 'rb-' + m.conv_seq, onclick: () => whoRead(m), 'aria-label': `Read by ${n ?? 'some'}: show who` },
          n === null ? 'read by …' : `read by ${n}`);
      } else {
        const isRead = peerRead >= m.conv_seq;
        status = h('span.tick', { 'data-read': isRead ? 'true' : 'false', title: isRead ? 'read' : 'sent', 'aria-label': isRead ? 'read' : 'sent' }, isRead ? '✓✓' : '✓');
      }
    }
    const canRecall = mine && !recalled && m.kind === 'content' && Date.now() - m.sent_at_ms < RECALL_WINDOW_MS;
    const media = !recalled && m.kind === 'content' && m.content?.media;
    items.push(h(`li.msg${mine ? '.mine' : ''}${recalled ? '.recalled' : ''}`, {
      'data-seq': m.conv_seq, 'data-cmid': m.client_msg_id, 'data-state': 'sent',
    },
    !mine && o.group ? h('small.sender', null, name(m.sender)) : null,
    h(`div.bubble${media ? '.has-media' : ''}`, null, m.kind === 'deleted' ? 'This message was deleted'
      : recalled ? (mine ? 'You recalled a message' : `${name(m.sender)} recalled a message`)
        : media ? [mediaView(m), m.content.text ? h('div.caption', null, m.content.text) : null]
          : contentText(m.content)),
    h('small.meta', null, time(m.sent_at_ms), status ? ' ' : null, status,
      canRecall ? h('button.link.recall', { 'data-fk': 'rc-' + m.conv_seq, onclick: () => recall(m) }, 'Recall') : null)));
  }
  for (const p of S.outbox.filter((x) => x.conv === o.conv && !o.hasNewer)) {
    items.push(h('li.msg.mine.pending', { 'data-cmid': p.cmid, 'data-state': p.state },
      h('div.bubble', null, p.media ? contentText({ media: p.media, text: p.text }) : p.text),
      h('small.meta', null,
        p.state === 'failed'
          ? [h('span.error', null, `Not sent: ${p.error}`), ' ',
            h('button.link', { 'data-fk': 'retry-' + p.cmid, onclick: () => { p.state = 'pending'; saveOutbox(); flushOutbox(); update(); } }, 'Retry'), ' ',
            h('button.link', { onclick: () => { dropFromOutbox(p.cmid); update(); } }, 'Discard')]
          : h('span.sending', null, p.state === 'retrying' ? 'waiting for the connection…' : 'sending…'))));
  }
  for (const u of S.uploads.filter((x) => x.conv === o.conv && !o.hasNewer)) items.push(uploadItem(u));
  if (o.hasNewer) {
    items.push(h('li.more', null, h('button.link', { onclick: () => loadNewer().catch(fail), 'data-fk': 'newer' }, 'Load newer messages')));
  }
  const wasStuck = o.stick;
  render(R.list, items);
  if (wasStuck) R.list.scrollTop = R.list.scrollHeight;
}

function buildComposer(conv) {
  const text = h('textarea', {
    id: 'composer', rows: 1, maxlength: MAX_TEXT, placeholder: 'Message', 'aria-label': 'Message',
  });
  let lastTyping = 0;
  text.addEventListener('input', () => {
    const now = Date.now();
    if (text.value && now - lastTyping > TYPING_EVERY_MS && S.gw?.state === 'online') {
      lastTyping = now;
      call(CMD.TYPING, { conv }).catch(() => {});
    }
  });
  const form = h('form.composer', { onsubmit: (e) => {
    e.preventDefault();
    const t = text.value.trim();
    if (!t) return;
    if (S.outbox.length >= MAX_OUTBOX) { toast('Too many messages waiting to be sent.'); return; }
    queueSend(conv, t);
    text.value = '';
    text.focus();
  } },
  attachButton(conv), voiceButtons(conv), text, h('button.primary', { type: 'submit' }, 'Send'));
  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  // A pasted image (a screenshot) is sent as a photo. What also comes as plain text (cells
  // of a spreadsheet, say) pastes as text.
  text.addEventListener('paste', (e) => {
    const files = [...(e.clipboardData?.files || [])];
    if (!files.length || e.clipboardData.types.includes('text/plain')) return;
    e.preventDefault();
    attach(conv, files);
  });
  return form;
}

/** A hidden file input behind a button (a file input cannot be styled). */
function attachButton(conv) {
  const input = h('input', {
    type: 'file', multiple: true, hidden: true, id: 'attach-input', 'data-test': 'attach-input',
    onchange: () => {
      attach(conv, [...input.files]);
      input.value = ''; // the same file again is a new attachment
    },
  });
  return [input, h('button.ghost.tool', {
    type: 'button', onclick: () => input.click(), title: 'Attach photos or files', 'data-fk': 'attach',
  }, 'Attach')];
}

// === sending: pending → sent, retried with the same client_msg_id ===

function saveOutbox() {
  if (!S.me) return;
  sessionStorage.setItem(`xinge.outbox.${S.me.user_id}.${S.session.device}`, JSON.stringify(S.outbox));
}

function dropFromOutbox(cmid) {
  const before = S.outbox.length;
  S.outbox = S.outbox.filter((x) => x.cmid !== cmid);
  if (S.outbox.length !== before) saveOutbox();
}

/** `@username` words of a group message (at most 20), and whether it says `@all`. */
function mentionTags(conv, text) {
  if (!groupIdOf(conv)) return { tags: [], mention_all: false };
  const tags = [...new Set([...text.matchAll(/(?:^|\s)@([a-z0-9_.-]{3,32})/g)].map((m) => m[1]))]
    .filter((t) => t !== 'all').slice(0, 20);
  return { tags, mention_all: /(^|\s)@all\b/.test(text) };
}

/** The user ids of the tags, looked up by exact username (unknown names are plain text). */
async function resolveMentions(tags) {
  const ids = [];
  for (const tag of tags) {
    let p = [...S.profiles.values()].find((x) => x.username === tag);
    if (!p) {
      try {
        p = await api('GET', `/v1/users?username=${encodeURIComponent(tag)}`);
        S.profiles.set(p.user_id, p);
      } catch (e) {
        if (e.code !== 'not_found') throw e;
      }
    }
    if (p && p.user_id !== S.me.user_id) ids.push(p.user_id);
  }
  return ids;
}

/** A message into the outbox: text, or an uploaded file (its MediaInfo) with an optional
 *  caption. */
function queueSend(conv, text, media = null) {
  const peer = peerOf(conv, S.me.user_id);
  const { tags, mention_all } = mentionTags(conv, text);
  S.outbox.push({
    cmid: newClientMsgId(), conv, to: peer || undefined, text, media, state: 'pending', error: null,
    tags, mentions: null, mention_all,
  });
  saveOutbox();
  if (S.open) {
    S.open.stick = true;
    if (S.open.hasNewer) jumpToNewest();
  }
  update();
  flushOutbox();
}

let flushing = false;
async function flushOutbox() {
  if (flushing) return;
  flushing = true;
  try {
    // In order, one at a time: a conversation sees our messages in the order we wrote them.
    for (;;) {
      const item = S.outbox.find((x) => x.state === 'pending' || x.state === 'retrying');
      if (!item || !S.gw) return;
      if (S.gw.state !== 'online') {
        item.state = 'retrying';
        update();
        try { await S.gw.waitOnline(60000); } catch { continue; }
      }
      if (!item.mentions) {
        try {
          item.mentions = item.tags?.length ? await resolveMentions(item.tags) : [];
        } catch {
          // The lookup failed (offline again?): wait a little and go round.
          item.state = 'retrying';
          update();
          await new Promise((res) => setTimeout(res, 500));
          continue;
        }
      }
      // A media message names the upload; the server puts its MediaInfo in its place.
      const content = item.media
        ? { media: item.media.id, ...(item.text ? { text: item.text } : {}) }
        : { text: item.text };
      const body = {
        client_msg_id: item.cmid, content,
        ...(item.to ? { to: item.to } : { conv: item.conv }),
        ...(item.mentions?.length ? { mentions: item.mentions } : {}),
        ...(item.mention_all ? { mention_all: true } : {}),
      };
      try {
        const r = await call(CMD.SEND, body);
        dropFromOutbox(item.cmid);
        applyMessage({
          msg_id: r.msg_id, conv: r.conv, conv_seq: r.conv_seq, sender: S.me.user_id,
          sender_device: S.session.device, client_msg_id: item.cmid, sent_at_ms: r.sent_at_ms,
          mentions: item.mentions || [], mention_all: !!item.mention_all, kind: 'content',
          // What the server stores: the MediaInfo it answered the upload with.
          content: item.media ? { ...content, media: item.media } : content,
        });
      } catch (e) {
        if (e instanceof ApiError && e.retryable) {
          // The same client_msg_id goes again: the server answers a retry of a committed
          // send with the original message, so nothing is ever sent twice.
          item.state = 'retrying';
          update();
          await new Promise((res) => setTimeout(res, 500));
        } else {
          item.state = 'failed';
          item.error = e.message || String(e);
          saveOutbox();
        }
      }
      update();
    }
  } finally {
    flushing = false;
  }
}

async function recall(m) {
  try {
    await call(CMD.RECALL, { conv: m.conv, conv_seq: m.conv_seq, client_msg_id: `r${m.client_msg_id}`.slice(0, 64) });
    S.open?.recalled.add(m.conv_seq);
    update();
  } catch (e) { fail(e); }
}

// === media: uploads, voice notes, and media in messages ===

let uploadSeq = 0;

/** Files picked, pasted or dropped: each is uploaded, then sent as a media message. */
function attach(conv, files) {
  for (const f of files) {
    if (!f.size) {
      toast(`“${f.name || 'That file'}” is empty.`);
      continue;
    }
    if (S.outbox.length + S.uploads.length >= MAX_OUTBOX) {
      toast('Too many messages waiting to be sent.');
      return;
    }
    startUpload({ conv, blob: f, name: f.name || 'file', type: f.type || 'application/octet-stream' });
  }
}

/**
 * An upload shows in its chat until the server has the whole file; then its message joins
 * the outbox like any other. {id, conv, blob, name, type, label, up (the Upload), state:
 * queued | uploading | failed, loaded, error}. Uploads do not survive a reload (a File
 * cannot be kept in sessionStorage); they run on when the chat is left.
 */
function startUpload({ conv, blob, name: fileName, type, meta = {} }) {
  const label = meta.kind === 'voice' ? mediaLabel({ kind: 'voice', duration_ms: meta.duration_ms }) : fileName;
  const u = { id: `up${++uploadSeq}`, conv, blob, name: fileName, type, label, state: 'queued', loaded: 0, error: null };
  u.up = new Upload(blob, { filename: fileName, filetype: type, ...meta }, S.session.token, (n) => showProgress(u, n));
  S.uploads.push(u);
  if (S.open?.conv === conv) {
    S.open.stick = true;
    if (S.open.hasNewer) jumpToNewest();
  }
  pumpUploads();
  update();
}

/** A few uploads at a time; the rest wait their turn. */
function pumpUploads() {
  let running = S.uploads.filter((u) => u.state === 'uploading').length;
  for (const u of S.uploads) {
    if (running >= UPLOADS_AT_ONCE) break;
    if (u.state === 'queued') {
      running++;
      runUpload(u);
    }
  }
}

async function runUpload(u) {
  const me = S.me;
  u.state = 'uploading';
  u.error = null;
  update();
  try {
    const media = await u.up.run();
    if (S.me !== me || !S.uploads.includes(u)) return; // logged out, or cancelled
    S.uploads = S.uploads.filter((x) => x !== u);
    queueSend(u.conv, '', media);
  } catch (e) {
    if (S.me !== me || !S.uploads.includes(u)) return;
    u.state = 'failed';
    u.error = e.message || String(e);
  } finally {
    if (S.me === me) {
      pumpUploads();
      update();
    }
  }
}

/** Another go: the Upload carries on from the bytes the server already has. */
function retryUpload(u) {
  u.state = 'queued';
  pumpUploads();
  update();
}

function dropUpload(u) {
  S.uploads = S.uploads.filter((x) => x !== u);
  u.up.abort();
  pumpUploads();
  update();
}

function uploadStatus(u) {
  if (u.state === 'queued') return 'waiting to upload…';
  // The last chunk's answer waits for the server to check the file and make its thumbnail.
  if (u.loaded >= u.blob.size) return 'finishing…';
  return `uploading… ${Math.floor((u.loaded / u.blob.size) * 100)}%`;
}

function uploadItem(u) {
  return h('li.msg.mine.pending.upload', { 'data-upload': u.id, 'data-state': u.state },
    h('div.bubble', null, h('span', null, u.label), ' ', h('small.muted', null, humanSize(u.blob.size)),
      h('progress', { max: u.blob.size, value: u.loaded, 'aria-label': `Uploading ${u.name}` })),
    h('small.meta', null, u.state === 'failed'
      ? [h('span.error', { 'data-test': 'upload-error' }, `Upload failed: ${u.error}`), ' ',
        h('button.link', { 'data-fk': 'up-retry-' + u.id, onclick: () => retryUpload(u) }, 'Retry'), ' ',
        h('button.link', { onclick: () => dropUpload(u) }, 'Discard')]
      : [h('span.sending', { 'data-test': 'upload-status' }, uploadStatus(u)), ' ',
        h('button.link', { 'data-fk': 'up-cancel-' + u.id, onclick: () => dropUpload(u) }, 'Cancel')]));
}

/** Progress moves the bar in place: re-rendering the whole list for every event would be
 *  a lot of work for one number. */
function showProgress(u, n) {
  u.loaded = n;
  const li = R.list?.querySelector(`[data-upload="${u.id}"]`);
  if (!li) return;
  const bar = li.querySelector('progress');
  if (bar) bar.value = n;
  const status = li.querySelector('[data-test="upload-status"]');
  if (status) status.textContent = uploadStatus(u);
}

// Files dropped on the open chat are attached to it (buildMain); dropped anywhere else they
// do nothing, where the browser would open the file in place of the app.
window.addEventListener('dragover', (e) => {
  if (e.defaultPrevented || !e.dataTransfer?.types.includes('Files')) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'none';
});
window.addEventListener('drop', (e) => {
  if (e.dataTransfer?.types.includes('Files')) e.preventDefault();
});

function onChatDrag(e) {
  if (!S.open || !e.dataTransfer?.types.includes('Files')) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
  R.chat.classList.add('dropping');
}

function onChatDrop(e) {
  R.chat.classList.remove('dropping');
  if (!S.open || !e.dataTransfer?.files.length) return;
  e.preventDefault();
  attach(S.open.conv, [...e.dataTransfer.files]);
}

// --- voice notes ---

/** The recording in progress (one at a time, for the open chat): {rec (MediaRecorder),
 *  stream, conv, chunks, started, duration, timer, btn, cancel, discard}. */
let recording = null;

/** The microphone button and, while recording, the button that throws the recording away.
 *  Nothing where the browser cannot record. */
function voiceButtons(conv) {
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) return null;
  const cancel = h('button.ghost.tool', {
    type: 'button', hidden: true, onclick: () => stopVoice(true), title: 'Discard the recording',
  }, 'Discard');
  const btn = h('button.ghost.tool.voice', {
    type: 'button', 'data-test': 'voice', title: 'Record a voice message', 'data-fk': 'voice',
    onclick: () => (recording ? stopVoice(false) : startVoice(conv, btn, cancel)),
  }, 'Voice');
  return [btn, cancel];
}

async function startVoice(conv, btn, cancel) {
  if (btn.disabled) return;
  btn.disabled = true; // while the browser asks for the microphone
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    toast(e.name === 'NotAllowedError' ? 'This site may not use the microphone.' : `Cannot record: ${e.message}`);
    return;
  } finally {
    btn.disabled = false;
  }
  const release = () => stream.getTracks().forEach((t) => t.stop());
  if (recording || S.open?.conv !== conv || !btn.isConnected) {
    release();
    return;
  }
  // Opus where the browser records it (Chromium, Firefox); else whatever it gives.
  const mimeType = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4']
    .find((t) => MediaRecorder.isTypeSupported(t));
  let rec;
  try {
    rec = new MediaRecorder(stream, mimeType ? { mimeType } : undefined);
  } catch (e) {
    release();
    toast(`Cannot record: ${e.message}`);
    return;
  }
  const r = { rec, stream, conv, chunks: [], started: Date.now(), duration: 0, timer: null, btn, cancel, discard: false };
  recording = r;
  rec.ondataavailable = (e) => { if (e.data.size) r.chunks.push(e.data); };
  // The recorder also stops by itself (the microphone went away): that ends it as a send.
  rec.onstop = () => (recording === r ? stopVoice(false) : finishVoice(r));
  rec.start();
  r.timer = setInterval(() => {
    if (Date.now() - r.started >= MAX_VOICE_MS) stopVoice(false);
    else showRecording(r);
  }, 250);
  showRecording(r);
}

function showRecording(r) {
  const on = recording === r;
  r.btn.textContent = on ? `■ Send ${clock(Date.now() - r.started)}` : 'Voice';
  r.btn.title = on ? 'Stop and send the voice message' : 'Record a voice message';
  r.btn.classList.toggle('recording', on);
  r.cancel.hidden = !on;
}

/** Ends the recording: to be sent, or (`discard`) thrown away. */
function stopVoice(discard) {
  const r = recording;
  if (!r) return;
  recording = null;
  r.discard = discard;
  r.duration = Date.now() - r.started;
  clearInterval(r.timer);
  showRecording(r);
  if (r.rec.state !== 'inactive') r.rec.stop(); // the last data, then onstop
  else finishVoice(r);
}

/** Leaving the chat throws an unfinished recording away: it would go where nobody looks. */
function cancelVoice() {
  stopVoice(true);
}

function finishVoice(r) {
  r.stream.getTracks().forEach((t) => t.stop());
  if (r.discard || !S.me) return;
  if (r.duration < MIN_VOICE_MS) {
    toast('Too short to send.');
    return;
  }
  const type = (r.rec.mimeType || r.chunks[0]?.type || 'audio/webm').split(';')[0];
  const blob = new Blob(r.chunks, { type });
  if (!blob.size) {
    toast('Nothing was recorded.');
    return;
  }
  const ext = { 'audio/webm': 'webm', 'audio/ogg': 'ogg', 'audio/mp4': 'm4a' }[type] || 'audio';
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
  startUpload({
    conv: r.conv, blob, name: `voice-${stamp}.${ext}`, type,
    meta: { kind: 'voice', duration_ms: r.duration },
  });
}

// --- media in messages ---

/** Signed download URLs, `<media id>/<variant>` -> {url, until} or {pending}: each asked
 *  for once, then used until shortly before it expires. */
const signedUrls = new Map();
const URL_MARGIN_MS = 60000;
const MAX_SIGNED_URLS = 500;

/** The signed URL of a message's file (`fresh`: not the cached one, which stopped working). */
function mediaUrl(m, md, variant, fresh = false) {
  const key = `${md.id}/${variant}`;
  const hit = signedUrls.get(key);
  if (hit?.pending) return hit.pending;
  if (!fresh && hit?.url && hit.until > Date.now()) return Promise.resolve(hit.url);
  const q = new URLSearchParams({ variant });
  // The message carrying the file is what lets the reader see it (its uploader needs none).
  if (m.conv && m.conv_seq) {
    q.set('conv', m.conv);
    q.set('seq', String(m.conv_seq));
  }
  const pending = api('GET', `/v1/media/${encodeURIComponent(md.id)}/url?${q}`).then((r) => {
    signedUrls.delete(key); // to the end: the oldest go first
    signedUrls.set(key, { url: r.url, until: r.expires_ms - URL_MARGIN_MS });
    if (signedUrls.size > MAX_SIGNED_URLS) signedUrls.delete(signedUrls.keys().next().value);
    return r.url;
  }, (e) => {
    signedUrls.delete(key);
    throw e;
  });
  signedUrls.set(key, { pending });
  return pending;
}

function cachedUrl(md, variant) {
  const hit = signedUrls.get(`${md.id}/${variant}`);
  return hit?.url && hit.until > Date.now() ? hit.url : null;
}

/** What loads each watched element, and how often it failed to. */
const mediaLoaders = new WeakMap();

/** Loads an element's URL once it comes near the visible part of the list: a long history
 *  of photos asks for the URLs of the few being looked at, not of all of them. */
function watchMedia(el, load) {
  const o = S.open;
  mediaLoaders.set(el, load);
  if (!o || !('IntersectionObserver' in window)) {
    load();
    return;
  }
  o.io ??= new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      o.io.unobserve(e.target);
      mediaLoaders.get(e.target)?.();
    }
  }, { root: R.list, rootMargin: '600px 0px' });
  o.io.observe(el);
}

/** Gives `el` (an img, audio, video or link) its signed URL in `attr`: at once when one is
 *  cached, else when it scrolls into view. A URL that stops working (it expired while a
 *  voice note sat paused) is asked for again; a failed ask is tried again a few times. */
function lazyMedia(el, m, md, variant, attr = 'src') {
  let tries = 0;
  let renewedAt = 0;
  const load = (fresh = false) => mediaUrl(m, md, variant, fresh)
    .then((url) => {
      el.removeAttribute('data-error');
      if (el.getAttribute(attr) !== url) el.setAttribute(attr, url);
    })
    .catch((e) => {
      el.dataset.error = e.message;
      if (++tries < 3 && S.open?.media.has(m.conv_seq)) setTimeout(() => watchMedia(el, load), 3000 * tries);
    });
  if (attr === 'src') {
    el.addEventListener('error', () => {
      if (Date.now() - renewedAt < 30000) return; // a fresh URL did not help: the file is gone
      renewedAt = Date.now();
      load(true);
    });
  }
  const url = cachedUrl(md, variant);
  if (url) el.setAttribute(attr, url);
  else watchMedia(el, load);
}

/** [width, height] scaled down to `max` on the long side (the thumbnail's own size). */
function fit(w, ht, max) {
  if (!(w > 0 && ht > 0)) return [undefined, undefined];
  const s = Math.min(1, max / Math.max(w, ht));
  return [Math.max(1, Math.round(w * s)), Math.max(1, Math.round(ht * s))];
}

/** A message's media element, made once per message of the open chat and kept: the list is
 *  rebuilt on every change, and a new element would reload the photo and stop the voice
 *  note being listened to. */
function mediaView(m) {
  let el = S.open.media.get(m.conv_seq);
  if (!el) {
    el = buildMedia(m, m.content.media);
    S.open.media.set(m.conv_seq, el);
  }
  return el;
}

function buildMedia(m, md) {
  if (!md || typeof md !== 'object' || !md.id) return h('span.muted', null, '[attachment]');
  switch (md.kind) {
    case 'image': {
      const [w, ht] = fit(md.width, md.height, THUMB_PX);
      const img = h('img.thumb', { alt: md.name || 'Photo', width: w, height: ht, 'data-test': 'thumb' });
      // A photo of unknown size changes the list's height when it arrives.
      img.addEventListener('load', () => { if (S.open?.stick && R.list) R.list.scrollTop = R.list.scrollHeight; });
      lazyMedia(img, m, md, md.thumb ? 'thumb' : 'original');
      return h('button.photo', { type: 'button', onclick: () => openPhoto(m, md), title: 'Open the photo' }, img);
    }
    case 'voice': {
      const audio = h('audio', { controls: true, preload: 'metadata', 'aria-label': 'Voice message', 'data-test': 'voice-note' });
      lazyMedia(audio, m, md, 'original');
      // A recording's own length is often unknown to the player (WebM from MediaRecorder).
      return h('span.voice-note', null, audio, md.duration_ms ? h('small.muted', null, clock(md.duration_ms)) : null);
    }
    case 'video': {
      const [w, ht] = fit(md.width, md.height, 480);
      const video = h('video', { controls: true, preload: 'metadata', playsinline: true, width: w, height: ht, 'aria-label': md.name || 'Video' });
      lazyMedia(video, m, md, 'original');
      return video;
    }
    default: {
      const link = h('a.download', { download: md.name || 'file', 'data-test': 'download' }, 'Download');
      let renewed = false;
      link.addEventListener('click', (e) => {
        if (renewed || (link.getAttribute('href') && cachedUrl(md, 'original') === link.getAttribute('href'))) {
          renewed = false;
          return;
        }
        // No URL yet, or one about to expire: a new one, then the download.
        e.preventDefault();
        mediaUrl(m, md, 'original').then((url) => {
          link.setAttribute('href', url);
          renewed = true;
          link.click();
        }).catch(fail);
      });
      lazyMedia(link, m, md, 'original', 'href');
      // The extension as the file's icon, the way file managers draw one.
      const ext = /\.([a-z0-9]{1,4})$/i.exec(md.name || '')?.[1].toUpperCase() || 'FILE';
      return h('span.file', null, h('span.file-icon', { 'aria-hidden': 'true' }, ext),
        h('span.file-main', null, h('span.file-name', { 'data-test': 'file-name' }, md.name || 'File'),
          h('small.muted', null, humanSize(md.size))),
        link);
    }
  }
}

/** The full-size photo over everything; a click or Escape closes it. */
function openPhoto(m, md) {
  const img = h('img.full', { alt: md.name || 'Photo', 'data-test': 'full-image' });
  const d = h('dialog.viewer', { 'aria-label': md.name || 'Photo' },
    h('button.ghost.close', { 'aria-label': 'Close' }, '✕'),
    img,
    m.content.text ? h('p.caption', null, m.content.text) : null);
  d.addEventListener('click', () => d.close());
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  let renewed = false;
  const load = (fresh) => mediaUrl(m, md, 'original', fresh).then((url) => { img.src = url; }, fail);
  img.addEventListener('error', () => {
    if (renewed) return;
    renewed = true;
    load(true);
  });
  load(false);
}

// === dialogs ===

function dialog(title, ...content) {
  const d = h('dialog.card', { 'aria-label': title },
    h('header.dialog-head', null, h('h2', null, title),
      h('button.ghost', { onclick: () => d.close(), 'aria-label': 'Close' }, '✕')),
    h('div.dialog-body', null, content));
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  return d;
}

async function whoRead(m) {
  try {
    const r = await call(CMD.READ_STATE, { conv: m.conv, seq: m.conv_seq, limit: 200 });
    await ensureProfiles([...r.read_by, ...r.unread_by]);
    const list = (ids) => (ids.length ? h('ul.people', null, ids.map((id) => h('li.person', null, personLabel(id, '')))) : h('p.muted', null, 'Nobody'));
    dialog(`Read by ${r.read_count} of ${r.read_count + r.unread_count}`,
      h('section', { 'data-test': 'read-by' }, h('h3', null, `Read (${r.read_count})`), list(r.read_by)),
      h('section', { 'data-test': 'unread-by' }, h('h3', null, `Not yet (${r.unread_count})`), list(r.unread_by)),
      r.next_after ? h('p.muted', null, 'Showing the first 200 of each.') : null);
  } catch (e) { fail(e); }
}

function friendPicker(exclude) {
  const options = S.friends.filter((f) => !exclude.has(f.user_id));
  if (!options.length) return { el: h('p.muted', null, 'No friends to add.'), picked: () => [] };
  const boxes = options.map((f) => h('input', { type: 'checkbox', value: f.user_id, id: 'pick-' + f.user_id }));
  return {
    el: h('fieldset.picker', null, h('legend', null, 'Friends'),
      options.map((f, i) => h('label', { for: 'pick-' + f.user_id }, boxes[i], ' ', name(f.user_id)))),
    picked: () => boxes.filter((b) => b.checked).map((b) => b.value),
  };
}

async function newGroupDialog() {
  await ensureProfiles(S.friends.map((f) => f.user_id));
  const nameInput = h('input', { id: 'group-name', required: true, maxlength: 64, 'aria-label': 'Group name', placeholder: 'Group name' });
  const picker = friendPicker(new Set());
  const d = dialog('New group', h('form', { onsubmit: async (e) => {
    e.preventDefault();
    try {
      const g = await api('POST', '/v1/groups', { name: nameInput.value.trim(), members: picker.picked() });
      d.close();
      S.tab = 'chats';
      S.convs.set(g.conv, {
        conv: g.conv, peer: null, last_seq: 0, read_seq: 0, unread: 0, unread_mentions: 0,
        name: g.name, last_message: null, last_activity_ms: g.created_at_ms, local: true,
      });
      await refreshConvs();
      openConv(g.conv);
    } catch (e2) { fail(e2); }
  } }, h('p.field', null, nameInput), picker.el, h('button.primary', { type: 'submit' }, 'Create')));
  nameInput.focus();
}

async function groupDialog() {
  const o = S.open;
  if (!o?.group) return;
  try { await loadGroup(); } catch (e) { fail(e); return; }
  await ensureProfiles([...(o.members?.keys() || []), ...S.friends.map((f) => f.user_id)]);
  const info = o.info;
  const role = myRole();
  const admin = role === 'owner' || role === 'admin';
  const gid = o.group;
  const body = h('div');
  const d = dialog(info.name);
  d.querySelector('.dialog-body').append(body);
  const redo = () => act(loadGroup(), () => { d.close(); groupDialog(); });
  const members = [...(o.members?.values() || [])];
  const rename = h('input', { value: info.name, maxlength: 64, 'aria-label': 'Group name', id: 'rename' });
  body.append(
    h('p.muted', null, `${info.member_count} members · you are ${role}`, info.notice ? ` · ${info.notice}` : ''),
    admin ? h('form.row', { onsubmit: (e) => { e.preventDefault(); act(api('PATCH', `/v1/groups/${gid}`, { name: rename.value.trim() }), redo); } },
      rename, h('button', { type: 'submit' }, 'Rename')) : null,
    h('h3', null, 'Members'),
    h('ul.people', null, members.map((m) => h('li.person', { 'data-member': m.user },
      personLabel(m.user, m.role + (m.muted ? ' · muted' : '')),
      h('span.actions', null,
        role === 'owner' && m.user !== S.me.user_id
          ? h('button', { onclick: () => act(api('POST', `/v1/groups/${gid}/admins`, { user: m.user, on: m.role !== 'admin' }), redo) }, m.role === 'admin' ? 'Demote' : 'Make admin') : null,
        role === 'owner' && m.user !== S.me.user_id
          ? h('button', { onclick: () => confirm(`Make ${name(m.user)} the owner?`) && act(api('POST', `/v1/groups/${gid}/transfer`, { to: m.user }), redo) }, 'Make owner') : null,
        admin && m.user !== S.me.user_id && m.role !== 'owner'
          ? h('button', { onclick: () => act(api('POST', `/v1/groups/${gid}/mutes`, { user: m.user, on: !m.muted }), redo) }, m.muted ? 'Unmute' : 'Mute') : null,
        admin && m.user !== S.me.user_id && m.role !== 'owner'
          ? h('button.danger', { onclick: () => act(api('DELETE', `/v1/groups/${gid}/members/${m.user}`), redo) }, 'Remove') : null)))),
    o.membersComplete ? null : h('p.muted', null, 'Showing the first 1,000 members.'));
  const picker = friendPicker(new Set(members.map((m) => m.user)));
  body.append(h('h3', null, admin ? 'Add members' : 'Invite friends'),
    h('form', { onsubmit: (e) => {
      e.preventDefault();
      const users = picker.picked();
      if (users.length) act(api('POST', `/v1/groups/${gid}/members`, { users }), redo);
    } }, picker.el, h('button', { type: 'submit' }, admin ? 'Add' : 'Invite')));
  body.append(h('div.row.end', null,
    admin ? h('button', { onclick: () => act(api('POST', `/v1/groups/${gid}/mute-all`, { on: !info.muted_all }), redo) }, info.muted_all ? 'Let everyone talk' : 'Only admins talk') : null,
    role !== 'owner' ? h('button.danger', { onclick: () => confirm('Leave this group?') && act(api('POST', `/v1/groups/${gid}/leave`), () => { d.close(); S.convs.delete(o.conv); closeConv(); return refreshConvs(); }) }, 'Leave group') : null,
    role === 'owner' ? h('button.danger', { onclick: () => confirm('Dismiss this group for everyone?') && act(api('DELETE', `/v1/groups/${gid}`), () => { d.close(); closeConv(); return refreshConvs(); }) }, 'Dismiss group') : null));
}

boot();
