// The admin page: for the operator of the app's server, on the admin API's own listener.
// It holds the admin key in this tab's sessionStorage only and sends it as a bearer token;
// everything it shows comes from /admin/v1 (users, their devices, online counts, dead
// letters of the after-events webhook).

import { h, render, time } from './view.js';

const KEY = 'xinge.adminKey';
const S = { user: null, devices: [], online: null, dead: [], error: '', notice: '' };

async function call(method, path) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${sessionStorage.getItem(KEY) || ''}` },
  });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error(body?.code ? `${body.code}: ${body.message}` : `HTTP ${r.status}`);
  return body;
}

async function act(what, then) {
  S.error = '';
  try {
    await what();
    if (then) await then();
  } catch (e) {
    S.error = e.message;
  }
  draw();
}

async function refresh() {
  S.online = await call('GET', '/admin/v1/online');
  S.dead = (await call('GET', '/admin/v1/webhooks/dead-letters?limit=50')).dead_letters;
  if (S.user) await loadUser(S.user.user_id);
}

async function loadUser(id) {
  S.user = await call('GET', `/admin/v1/users/${id}`);
  S.devices = (await call('GET', `/admin/v1/users/${id}/devices`)).devices;
}

async function find(q) {
  const user = await call('GET', `/admin/v1/users?username=${encodeURIComponent(q)}`);
  await loadUser(user.user_id);
}

function keyForm() {
  const input = h('input', { type: 'password', id: 'admin-key', 'aria-label': 'Admin key', placeholder: 'Admin key', autocomplete: 'off' });
  return h('form.card', {
    onsubmit: (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      act(refresh);
    },
  }, h('h2', null, 'Admin key'), input, ' ', h('button.primary', { type: 'submit' }, 'Use this key'));
}

function onlineCard() {
  const o = S.online;
  return h('section.card', { 'aria-label': 'Online' }, h('h2', null, 'Online'),
    o ? h('p', { 'data-test': 'online' },
      `${o.connections} connections on ${o.gateways} gateways`,
      o.users === undefined ? '' : `, ${o.users} users`) : h('p.muted', null, 'Not loaded'),
    h('button', { onclick: () => act(refresh) }, 'Refresh'));
}

function userCard() {
  const q = h('input', { id: 'find-user', 'aria-label': 'Username', placeholder: 'Username', 'data-fk': 'find' });
  const u = S.user;
  return h('section.card', { 'aria-label': 'Users' }, h('h2', null, 'Users'),
    h('form', { onsubmit: (e) => { e.preventDefault(); act(() => find(q.value.trim())); } },
      q, ' ', h('button', { type: 'submit' }, 'Find')),
    u ? h('div', { 'data-user': u.user_id },
      h('p', null, h('strong', null, u.display_name), ` @${u.username} · id ${u.user_id} · `,
        h('span', { 'data-test': 'banned' }, u.banned ? 'banned' : 'active')),
      u.banned
        ? h('button', { onclick: () => act(() => call('DELETE', `/admin/v1/users/${u.user_id}/ban`), refresh) }, 'Unban')
        : h('button.danger', { onclick: () => act(() => call('PUT', `/admin/v1/users/${u.user_id}/ban`), refresh) }, 'Ban'),
      h('h3', null, 'Devices'),
      S.devices.length ? h('ul.people', null, S.devices.map((d) => h('li.person', { 'data-device': d.device },
        h('span', null, d.device, ' · ', d.online ? 'online' : 'offline', ' · logged in ', time(d.logged_in_at_ms)),
        h('button', { onclick: () => act(() => call('DELETE', `/admin/v1/users/${u.user_id}/devices/${encodeURIComponent(d.device)}`), refresh) }, 'Log out'))))
        : h('p.muted', null, 'No device logged in')) : null);
}

function deadCard() {
  return h('section.card', { 'aria-label': 'Dead letters' }, h('h2', null, 'Dead letters'),
    S.dead.length ? h('ul.people', null, S.dead.map((d) => h('li.person', { 'data-dead': d.id },
      h('span', null, `${d.event?.type ?? 'event'} · ${d.error} · `, time(d.at_ms)),
      h('button', { onclick: () => act(() => call('POST', `/admin/v1/webhooks/dead-letters/${d.id}/replay`), refresh) }, 'Replay'))))
      : h('p.muted', { 'data-test': 'no-dead' }, 'None'));
}

function draw() {
  render(document.getElementById('admin'),
    h('h1', null, 'xinge admin'),
    S.error ? h('p.error', { role: 'alert' }, S.error) : null,
    keyForm(), onlineCard(), userCard(), deadCard());
}

draw();
if (sessionStorage.getItem(KEY)) act(refresh);
