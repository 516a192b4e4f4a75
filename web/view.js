// Small DOM helpers: element building, region re-rendering that keeps keyboard focus, and
// text formatting. Text always goes in as text nodes, never as HTML.

/** h('button.primary', {onclick, 'aria-label': 'x'}, 'child', otherNode, [more]) */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const el = document.createElement(tag || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (k === 'checked') el.checked = !!v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/**
 * Replace a region's content. Focus survives when the focused element carries a `data-fk`
 * key that the new content has too, so re-rendering never throws a keyboard user out.
 */
export function render(region, ...children) {
  const active = document.activeElement;
  const key = active && region.contains(active) ? active.dataset.fk : null;
  const selStart = key && 'selectionStart' in active ? active.selectionStart : null;
  // What someone is typing survives too: text fields carry their value across.
  const typed = new Map();
  for (const el of region.querySelectorAll('input[data-fk], textarea[data-fk]')) {
    if (el.type !== 'checkbox' && el.value) typed.set(el.dataset.fk, el.value);
  }
  region.replaceChildren();
  append(region, children);
  for (const [fk, value] of typed) {
    const el = region.querySelector(`[data-fk="${CSS.escape(fk)}"]`);
    if (el && !el.value) el.value = value;
  }
  if (key) {
    const again = region.querySelector(`[data-fk="${CSS.escape(key)}"]`);
    if (again) {
      again.focus({ preventScroll: true });
      if (selStart !== null && 'setSelectionRange' in again) {
        try { again.setSelectionRange(selStart, selStart); } catch { /* not a text field */ }
      }
    }
  }
}

/**
 * Like `render`, but leaves the region alone when the new content is the same markup: a
 * click whose mousedown and mouseup straddle a re-render would otherwise be lost, and
 * regions are re-rendered on every state change.
 */
export function renderIfChanged(region, ...children) {
  const next = document.createElement('div');
  append(next, children);
  if (next.innerHTML === region.innerHTML) return;
  render(region, ...next.childNodes);
}

export function time(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

export function initials(name) {
  return (name || '?').trim().slice(0, 1).toUpperCase() || '?';
}

/** One debounced call of `fn` after `ms` of quiet. */
export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/** 1536 → "1.5 KB": bytes the way file managers show them (powers of 1024). */
export function humanSize(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let n = bytes / 1024;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n < 10 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/** 65900 → "1:05": a recording's length, in whole seconds as media players count them. */
export function clock(ms) {
  const s = Math.max(0, Math.floor((ms || 0) / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
