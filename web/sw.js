// The xinge service worker: offline push for the web client (docs/ARCHITECTURE.md, "Offline
// push"). The server sends each notification through the browser's push service, encrypted
// for this subscription (RFC 8291); the browser decrypts it and hands it to the `push` event
// as JSON: {title, body, badge, count, data: {conv, conv_seq, kind, ...}}. No fetch handler:
// the page and its files always come from the server (no-cache + ETag), never from here.

const APP = '/'; // the page of the chat app (the admin page may share the origin)

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));

/** The windows of the app on this origin. */
async function appWindows() {
  const all = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  return all.filter((c) => {
    try {
      const u = new URL(c.url);
      return u.origin === self.location.origin && u.pathname === APP;
    } catch {
      return false;
    }
  });
}

function parse(data) {
  if (!data) return null;
  try {
    const p = data.json();
    return p && typeof p === 'object' ? p : null;
  } catch {
    const text = data.text();
    return text ? { body: text } : null;
  }
}

self.addEventListener('push', (e) => {
  e.waitUntil((async () => {
    const p = parse(e.data) || {};
    const data = p.data && typeof p.data === 'object' ? p.data : {};
    // The page shows the message itself when someone is looking at it. (The server pushes
    // only to a device whose app said it is in the background, but that may have changed
    // since.)
    const windows = await appWindows();
    if (windows.some((w) => w.visibilityState === 'visible' && w.focused)) return;
    const options = {
      body: typeof p.body === 'string' ? p.body : 'New message',
      // One notification per conversation (all friend requests together): a newer one
      // replaces it, and renotify alerts again.
      tag: typeof data.conv === 'string' && data.conv ? data.conv : 'friends',
      data,
      renotify: true,
      icon: '/web/icon.svg',
    };
    // The app icon's badge (where the browser has one: an installed app), the user's
    // unread messages as the server counted them.
    if (typeof p.badge === 'number' && 'setAppBadge' in self.navigator) {
      self.navigator.setAppBadge(p.badge).catch(() => {});
    }
    await self.registration.showNotification(typeof p.title === 'string' && p.title ? p.title : 'xinge', options);
  })());
});

self.addEventListener('notificationclick', (e) => {
  e.notification.close();
  const conv = typeof e.notification.data?.conv === 'string' ? e.notification.data.conv : null;
  e.waitUntil((async () => {
    const windows = await appWindows();
    const w = windows.find((x) => x.focused) || windows[0];
    if (w) {
      try { await w.focus(); } catch { /* not allowed: the message still opens the chat */ }
      // The page opens the conversation (it knows whether it has it).
      if (conv) w.postMessage({ type: 'open', conv });
      return;
    }
    await self.clients.openWindow(conv ? `${APP}#conv=${encodeURIComponent(conv)}` : APP);
  })());
});
