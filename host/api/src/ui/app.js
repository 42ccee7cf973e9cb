// kedge dashboard. Reads the cluster through the Kubernetes API with the bearer token the
// user logged in with: each kind is listed once, then followed with a watch (chunked JSON
// lines read from a fetch stream); a 410 Gone relists, a 401 returns to the login form.
// Only the kinds the open view shows are watched: the API server speaks HTTP/1.1, where a
// browser holds at most six connections to one server, and each watch keeps one (the nodes
// view's three watches leave room for a pod's log stream and the odd request).
// Cluster data is written with textContent only.
'use strict';

const TOKEN_KEY = 'kedge.dashboard.token';
// What the end-to-end test reads: when the nodes table first had a row (ms since navigation
// start), when each pod's row first appeared (epoch ms), and the lists and watches started
// per kind.
const marks = { nodesRendered: null, podSeen: {}, lists: {}, watches: {} };
window.kedgeMarks = marks;

let session = null; // { view, informers: { name: Informer } }
let logStream = null; // { abort }

class AuthError extends Error {}
class ApiFailure extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

const $ = (sel) => document.querySelector(sel);
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// ---- API ----------------------------------------------------------------------------------

async function failureOf(r) {
  let message = `${r.status} ${r.statusText}`;
  try {
    const s = await r.json();
    if (s && s.message) message = `${r.status}: ${s.message}`;
  } catch (_) { /* not a Status */ }
  return new ApiFailure(r.status, message);
}

async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new AuthError('not logged in');
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json', ...(init.headers || {}) };
  const r = await fetch(path, { ...init, headers, cache: 'no-store', credentials: 'omit' });
  if (r.status === 401) {
    logout('The API refused the token (401 Unauthorized): log in again.');
    throw new AuthError('401');
  }
  if (!r.ok) throw await failureOf(r);
  return r;
}

// Calls onLine for each complete line of a streamed body; stops early when it returns false.
async function readLines(body, onLine) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim() && onLine(line) === false) return;
      }
    }
    buf += decoder.decode();
    if (buf.trim()) onLine(buf);
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- informers: list, then watch ----------------------------------------------------------

const keyOf = (o) => `${o.metadata.namespace || ''}/${o.metadata.name}`;

class Informer {
  constructor(name, path) {
    this.name = name;
    this.path = path;
    this.abort = new AbortController();
    this.signal = this.abort.signal;
    this.items = new Map();
    this.rv = '';
    this.error = '';
    this.synced = false;
  }

  async run() {
    let backoff = 1000;
    while (!this.signal.aborted) {
      try {
        await this.list();
        backoff = 1000;
        // Watch from the list's version; a watch that ends (the server's timeout) is
        // resumed from the last version seen; a 410 Gone relists.
        for (;;) {
          const started = Date.now();
          const { gone, events } = await this.watch();
          if (gone || this.signal.aborted) break;
          if (!events && Date.now() - started < 1000) await sleep(1000, this.signal);
        }
      } catch (e) {
        if (e instanceof AuthError || this.signal.aborted) return;
        this.error = `${e.message || e} — retrying in ${backoff / 1000}s`;
        changed();
        await sleep(backoff, this.signal);
        backoff = Math.min(backoff * 2, 30000);
      }
    }
  }

  async list() {
    marks.lists[this.name] = (marks.lists[this.name] || 0) + 1;
    const r = await api(this.path, { signal: this.signal });
    const l = await r.json();
    this.items = new Map((l.items || []).map((o) => [keyOf(o), o]));
    this.rv = l.metadata.resourceVersion;
    this.error = '';
    this.synced = true;
    changed();
  }

  async watch() {
    marks.watches[this.name] = (marks.watches[this.name] || 0) + 1;
    const q = new URLSearchParams({ watch: '1', resourceVersion: this.rv, allowWatchBookmarks: 'true' });
    const r = await api(`${this.path}?${q}`, { signal: this.signal });
    let gone = false;
    let events = 0;
    let failure = null;
    await readLines(r.body, (line) => {
      const ev = JSON.parse(line);
      const o = ev.object || {};
      events += 1;
      switch (ev.type) {
        case 'ADDED':
        case 'MODIFIED':
          this.items.set(keyOf(o), o);
          break;
        case 'DELETED':
          this.items.delete(keyOf(o));
          break;
        case 'BOOKMARK':
          break;
        case 'ERROR':
          if (o.code === 410) gone = true;
          else failure = new ApiFailure(o.code, `${o.code}: ${o.message}`);
          return false;
        default:
          return true;
      }
      if (o.metadata && o.metadata.resourceVersion) this.rv = o.metadata.resourceVersion;
      if (this.error) this.error = '';
      if (ev.type !== 'BOOKMARK') changed();
      return true;
    });
    if (failure) throw failure;
    return { gone, events };
  }
}

// ---- rendering ----------------------------------------------------------------------------

let renderQueued = false;
// While a button is held down its row is not rebuilt, or the click would miss it.
let pressed = false;
function changed() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    if (!pressed) render();
  }, 0);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, key) {
  const tr = document.createElement('tr');
  if (key) tr.dataset.key = key;
  for (const c of cells) tr.append(c instanceof Node ? wrapTd(c) : el('td', c));
  return tr;
}

function wrapTd(node) {
  if (node.tagName === 'TD') return node;
  const td = document.createElement('td');
  td.append(node);
  return td;
}

function ago(ts) {
  if (!ts) return '';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

function condition(o, type) {
  return ((o.status && o.status.conditions) || []).find((c) => c.type === type);
}

function setError(name, text) {
  const p = document.querySelector(`[data-error="${name}"]`);
  if (p) p.textContent = text || '';
}

function fillBody(section, rows) {
  const tbody = document.querySelector(`#${section} tbody`);
  tbody.replaceChildren(...rows);
}

function render() {
  if (!session) return;
  const inf = session.informers;
  for (const [name, i] of Object.entries(inf)) {
    if (name !== 'leases') setError(name, i.error);
  }
  switch (session.view) {
    case 'nodes':
      if (inf.leases.error) setError('nodes', `${inf.nodes.error} leases: ${inf.leases.error}`.trim());
      renderNodes(inf);
      renderPods(inf);
      break;
    case 'deployments': renderDeployments(inf.deployments); break;
    case 'plugins': renderPlugins(inf.plugins); break;
    case 'events': renderEvents(inf.events); break;
    default: break;
  }
}

function renderNodes(inf) {
  const perNode = new Map();
  for (const p of inf.pods.items.values()) {
    const n = p.spec.nodeName || '';
    perNode.set(n, (perNode.get(n) || 0) + 1);
  }
  const nodes = [...inf.nodes.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  const rows = nodes.map((n) => {
    const name = n.metadata.name;
    const ready = condition(n, 'Ready');
    const readyTd = el('td', ready ? ready.status : 'Unknown', ready && ready.status === 'True' ? 'ok' : 'bad');
    if (ready && ready.status !== 'True') readyTd.title = `${ready.reason || ''}: ${ready.message || ''}`;
    if (n.spec.unschedulable) readyTd.textContent += ', SchedulingDisabled';
    const lease = inf.leases.items.get(`kube-node-lease/${name}`);
    const renew = lease && lease.spec && lease.spec.renewTime;
    let tunnel = el('td', inf.leases.synced ? 'no lease' : '…', 'warn');
    if (renew) {
      const fresh = Date.now() - Date.parse(renew) < (lease.spec.leaseDurationSeconds || 40) * 1000;
      tunnel = el('td', fresh ? 'connected' : 'down', fresh ? 'ok' : 'bad');
      tunnel.title = 'from the node lease: renewed through the tunnel';
    }
    const heartbeat = ready && ready.lastHeartbeatTime;
    const seen = el('td', renew ? ago(renew) : ago(heartbeat));
    seen.title = renew || heartbeat || '';
    // Behind which address: where the server sees the node's tunnel come from (the
    // agent records it on its Node), then the addresses the node reports.
    const seenFrom = n.metadata.annotations && n.metadata.annotations['kedge.io/tunnel-address'];
    const addresses = (seenFrom ? [`tunnel from ${seenFrom}`] : []).concat(
      ((n.status && n.status.addresses) || [])
        .filter((a) => a.type !== 'Hostname')
        .map((a) => `${a.type} ${a.address}`)).join(', ');
    const runtime = (n.status && n.status.nodeInfo && n.status.nodeInfo.containerRuntimeVersion) || '';
    return row([el('td', name, 'mono'), readyTd, tunnel, seen, addresses, String(perNode.get(name) || 0), runtime], name);
  });
  fillBody('nodes', rows);
  if (rows.length && marks.nodesRendered === null) marks.nodesRendered = performance.now();
}

// The STATUS column as kubectl prints it, simplified: a terminating pod, then the first
// container that waits or terminated with a reason, else the phase.
function podStatus(p) {
  if (p.metadata.deletionTimestamp) return 'Terminating';
  const st = p.status || {};
  for (const c of [...(st.initContainerStatuses || []), ...(st.containerStatuses || [])]) {
    if (c.state && c.state.waiting && c.state.waiting.reason) return c.state.waiting.reason;
    if (c.state && c.state.terminated && c.state.terminated.reason && st.phase !== 'Succeeded') return c.state.terminated.reason;
  }
  return st.reason || st.phase || 'Pending';
}

function renderPods(inf) {
  const groups = new Map();
  for (const p of inf.pods.items.values()) {
    const n = p.spec.nodeName || '';
    if (!groups.has(n)) groups.set(n, []);
    groups.get(n).push(p);
  }
  const container = $('#pods .groups');
  const out = [];
  const now = Date.now();
  for (const node of [...groups.keys()].sort()) {
    const pods = groups.get(node).sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
    const div = el('div');
    div.dataset.node = node;
    div.append(el('h3', node ? `${node} (${pods.length})` : `Not scheduled (${pods.length})`));
    const table = el('table');
    const head = document.createElement('tr');
    for (const h of ['Namespace', 'Name', 'Ready', 'Status', 'Restarts', 'Age', 'IP', '']) head.append(el('th', h));
    const thead = el('thead');
    thead.append(head);
    const tbody = el('tbody');
    for (const p of pods) {
      const cs = (p.status && p.status.containerStatuses) || [];
      const ready = cs.filter((c) => c.ready).length;
      const restarts = cs.reduce((n, c) => n + (c.restartCount || 0), 0);
      const status = podStatus(p);
      const cls = status === 'Running' || status === 'Succeeded' || status === 'Completed' ? 'ok' : status === 'Pending' ? 'warn' : 'bad';
      // One log link per container when there are several (the API then needs the name).
      const names = p.spec.containers.map((c) => c.name);
      const logs = el('span');
      for (const c of names) {
        const b = el('button', names.length > 1 ? `log ${c}` : 'log', 'link');
        b.type = 'button';
        b.dataset.log = names.length > 1 ? `${keyOf(p)}/${c}` : keyOf(p);
        b.addEventListener('click', () => openLog(p.metadata.namespace, p.metadata.name, names.length > 1 ? c : null));
        logs.append(b, ' ');
      }
      const key = keyOf(p);
      tbody.append(row([p.metadata.namespace, el('td', p.metadata.name, 'mono'),
        `${ready}/${p.spec.containers.length}`, el('td', status, cls), String(restarts),
        ago(p.metadata.creationTimestamp), (p.status && p.status.podIP) || '', logs], key));
      if (!(key in marks.podSeen)) marks.podSeen[key] = now;
    }
    table.append(thead, tbody);
    div.append(table);
    out.push(div);
  }
  if (!out.length && inf.pods.synced) out.push(el('p', 'No pods.', 'hint'));
  container.replaceChildren(...out);
}

function renderDeployments(inf) {
  const ds = [...inf.items.values()].sort((a, b) => keyOf(a).localeCompare(keyOf(b)));
  fillBody('deployments', ds.map((d) => {
    const s = d.status || {};
    const want = d.spec.replicas === undefined ? 1 : d.spec.replicas;
    const progressing = condition(d, 'Progressing');
    const stale = (s.observedGeneration || 0) < (d.metadata.generation || 0);
    const done = !stale && (s.updatedReplicas || 0) === want && (s.replicas || 0) === want && (s.availableReplicas || 0) === want;
    let rollout = done ? 'complete' : 'in progress';
    if (progressing && progressing.status === 'False') rollout = `failed: ${progressing.reason}`;
    else if (progressing && !done) rollout = `in progress (${progressing.reason})`;
    const td = el('td', rollout, done ? 'ok' : rollout.startsWith('failed') ? 'bad' : 'warn');
    if (progressing) td.title = progressing.message || '';
    return row([d.metadata.namespace, el('td', d.metadata.name, 'mono'), String(want),
      String(s.updatedReplicas || 0), String(s.readyReplicas || 0), String(s.availableReplicas || 0), td], keyOf(d));
  }));
}

function renderPlugins(inf) {
  const ps = [...inf.items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  fillBody('plugins', ps.map((p) => {
    const s = p.status || {};
    const digest = s.activeDigest || '';
    const short = digest.startsWith('sha256:') ? digest.slice(7, 19) : digest;
    const digestTd = el('td', short, 'mono');
    digestTd.title = digest;
    digestTd.dataset.digest = digest;
    const ready = condition(p, 'Ready');
    const readyTd = el('td', ready ? `${ready.status} (${ready.reason})` : '', ready && ready.status === 'True' ? 'ok' : 'bad');
    if (ready) readyTd.title = ready.message || '';
    const swap = s.lastSwapTime ? `${ago(s.lastSwapTime)}${s.lastSwapMilliseconds !== undefined ? `, took ${s.lastSwapMilliseconds} ms` : ''}` : '';
    const phase = el('td', s.phase || '', s.phase === 'Active' ? 'ok' : s.phase === 'Failed' ? 'bad' : 'warn');
    return row([el('td', p.metadata.name, 'mono'), (p.spec && p.spec.role) || 'controller', phase, digestTd,
      s.activeSource || '', swap, readyTd], p.metadata.name);
  }));
}

function eventTime(e) {
  return e.lastTimestamp || e.eventTime || (e.series && e.series.lastObservedTime) || e.firstTimestamp || e.metadata.creationTimestamp || '';
}

const EVENTS_SHOWN = 200;
function renderEvents(inf) {
  const es = [...inf.items.values()]
    .map((e) => [Date.parse(eventTime(e)) || 0, Number(e.metadata.resourceVersion) || 0, e])
    // Times are in seconds: within one, the later write first.
    .sort((a, b) => b[0] - a[0] || b[1] - a[1])
    .slice(0, EVENTS_SHOWN);
  fillBody('events', es.map(([, , e]) => {
    const io = e.involvedObject || e.regarding || {};
    const obj = `${(io.kind || '').toLowerCase()}/${io.name || ''}${io.namespace ? ` -n ${io.namespace}` : ''}`;
    const type = el('td', e.type || '', e.type === 'Warning' ? 'bad' : '');
    const tr = row([ago(eventTime(e)), type, e.reason || '', el('td', obj, 'mono'),
      String(e.count || (e.series && e.series.count) || 1), el('td', e.message || e.note || '', 'msg')], keyOf(e));
    tr.dataset.time = eventTime(e);
    return tr;
  }));
}

// ---- a pod's log, live ---------------------------------------------------------------------

const LOG_LINES = 2000;

async function openLog(ns, name, container) {
  if (logStream) logStream.abort.abort();
  const abort = new AbortController();
  logStream = { abort };
  $('#log').hidden = false;
  $('#log-title').textContent = `${ns}/${name}${container ? ` (${container})` : ''}`;
  const pre = $('#log-text');
  pre.textContent = '';
  const state = $('#log-state');
  state.textContent = 'following…';
  state.className = 'hint';
  const q = new URLSearchParams({ follow: 'true', tailLines: String(LOG_LINES) });
  if (container) q.set('container', container);
  const path = `/api/v1/namespaces/${encodeURIComponent(ns)}/pods/${encodeURIComponent(name)}/log?${q}`;
  try {
    const r = await api(path, { signal: abort.signal, headers: { Accept: '*/*' } });
    let lines = 0;
    await readLines(r.body, (line) => {
      pre.append(document.createTextNode(`${line}\n`));
      lines += 1;
      if (lines > LOG_LINES && pre.firstChild) pre.firstChild.remove();
      pre.scrollTop = pre.scrollHeight;
      return !abort.signal.aborted;
    });
    if (!abort.signal.aborted) state.textContent = 'the log stream ended (the container stopped or the pod went away)';
  } catch (e) {
    if (abort.signal.aborted || e instanceof AuthError) return;
    state.textContent = `cannot read the log: ${e.message || e}`;
    state.className = 'error';
  }
}

function closeLog() {
  if (logStream) logStream.abort.abort();
  logStream = null;
  $('#log').hidden = true;
}

// ---- session ------------------------------------------------------------------------------

// What each view watches.
const VIEWS = {
  nodes: ['nodes', 'leases', 'pods'],
  deployments: ['deployments'],
  plugins: ['plugins'],
  events: ['events'],
};

const SOURCES = {
  nodes: '/api/v1/nodes',
  leases: '/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases',
  pods: '/api/v1/pods',
  deployments: '/apis/apps/v1/deployments',
  plugins: '/apis/plugins.kedge.io/v1/plugins',
  events: '/api/v1/events',
};

async function whoami() {
  const r = await api('/apis/authentication.k8s.io/v1/selfsubjectreviews', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }),
  });
  const review = await r.json();
  return (review.status && review.status.userInfo && review.status.userInfo.username) || '?';
}

// Shows the view the URL's fragment names, watching what it needs and no more.
function showView() {
  if (!session) return;
  const view = location.hash.slice(1) in VIEWS ? location.hash.slice(1) : 'nodes';
  if (view === session.view) return;
  session.view = view;
  if (view !== 'nodes') closeLog();
  const wanted = VIEWS[view];
  for (const [name, i] of Object.entries(session.informers)) {
    if (!wanted.includes(name)) {
      i.abort.abort();
      delete session.informers[name];
    }
  }
  for (const name of wanted) {
    if (!session.informers[name]) {
      const i = new Informer(name, SOURCES[name]);
      session.informers[name] = i;
      i.run();
    }
  }
  for (const v of document.querySelectorAll('.view')) v.hidden = v.dataset.view !== view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === view);
  changed();
}

async function start() {
  stop();
  $('#login-view').hidden = true;
  $('#dashboard').hidden = false;
  $('#logout').hidden = false;
  session = { view: null, informers: {} };
  showView();
  try {
    $('#whoami').textContent = `as ${await whoami()}`;
  } catch (e) {
    if (!(e instanceof AuthError)) $('#whoami').textContent = `(who am I: ${e.message})`;
  }
}

function stop() {
  closeLog();
  if (session) for (const i of Object.values(session.informers)) i.abort.abort();
  session = null;
}

function logout(message) {
  stop();
  sessionStorage.removeItem(TOKEN_KEY);
  $('#dashboard').hidden = true;
  $('#logout').hidden = true;
  $('#whoami').textContent = '';
  $('#login-view').hidden = false;
  $('#login-error').textContent = message || '';
}

function init() {
  $('#login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('#token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    $('#token').value = '';
    $('#login-error').textContent = '';
    start();
  });
  $('#logout').addEventListener('click', () => logout(''));
  $('#log-close').addEventListener('click', closeLog);
  window.addEventListener('hashchange', showView);
  document.addEventListener('pointerdown', () => { pressed = true; }, true);
  for (const ev of ['pointerup', 'pointercancel']) {
    document.addEventListener(ev, () => { pressed = false; changed(); }, true);
  }
  // Relative times ("4s ago") and tunnel freshness move with the clock, not with the API.
  setInterval(changed, 1000);
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else logout('');
}

init();
