/*
 * claudcode dashboard: the four pages (overview, keys, usage, live) in one shell, switched
 * without reloading (history.pushState; each has its own URL). Data comes from
 * /dashboard/api/*; every change sends the session's CSRF token (the csrf-token meta tag) in
 * x-csrf-token.
 *
 * Rules this file keeps: DOM is built with textContent and attributes, never innerHTML with data
 * (key names are whatever an operator typed); no inline styles (the CSP forbids them: meters use
 * width classes); a new key is shown once in its panel and dropped from the page when the panel
 * is dismissed or the page changes: never kept in a variable, the URL or storage.
 */
'use strict';

(function dashboard() {
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute('content');
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  /** An element with attributes (or properties for `className`, `textContent`, `on*`) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'className') node.className = value;
      else if (name === 'text') node.textContent = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ---- formatting ----
  const integer = new Intl.NumberFormat('en-US');
  const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });
  const usd = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const usdSmall = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 4 });
  const fmtInt = (n) => integer.format(Math.round(n || 0));
  const fmtCompact = (n) => compact.format(n || 0);
  const fmtUsd = (n) => (Math.abs(n || 0) >= 1 || !n ? usd : usdSmall).format(n || 0);
  const fmtPct = (x) => `${(100 * (x || 0)).toFixed(1)} %`;
  const fmtMs = (ms) => (ms === null || ms === undefined ? '–' : ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 100000 ? 0 : 1)} s` : `${Math.round(ms)} ms`);
  const pad = (n) => String(n).padStart(2, '0');
  function fmtPoint(t, bucket) {
    const d = new Date(t);
    if (bucket === 'day') return d.toLocaleDateString('en-US', { month: 'short', day: 'numeric' });
    if (bucket === 'hour') return d.getHours() === 0 ? d.toLocaleDateString('en-US', { month: 'short', day: 'numeric' }) : `${pad(d.getHours())}:00`;
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  const fmtDateTime = (iso) => new Date(iso).toLocaleString('en-US', { dateStyle: 'medium', timeStyle: 'short' });

  // ---- notices and the API ----
  let noticeTimer;
  function notice(message, ok = false) {
    const box = $('#notice');
    box.textContent = message;
    box.classList.toggle('ok', ok);
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (box.hidden = true), ok ? 4000 : 10000);
  }

  async function api(path, { method = 'GET', body } = {}) {
    const headers = { accept: 'application/json' };
    if (method !== 'GET') headers['x-csrf-token'] = csrf;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(path.startsWith('/') ? path : `/dashboard/api/${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (res.status === 401) {
      location.assign('/dashboard/login');
      throw new Error('The session has ended.');
    }
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) throw new Error((data && data.error && data.error.message) || `HTTP ${res.status}`);
    return data;
  }

  // ---- pages and navigation ----
  const pages = {
    overview: { path: '/dashboard', enter: enterOverview, leave() {} },
    keys: { path: '/dashboard/keys', enter: enterKeys, leave: leaveKeys },
    usage: { path: '/dashboard/usage', enter: enterUsage, leave() {} },
    live: { path: '/dashboard/live', enter: enterLive, leave: leaveLive },
  };
  let current;

  function pageFor(pathname) {
    const path = pathname.replace(/\/+$/, '') || '/dashboard';
    return Object.keys(pages).find((name) => pages[name].path === path) || 'overview';
  }

  function show(name, push) {
    if (current && current !== name) pages[current].leave();
    if (push) history.pushState({}, '', pages[name].path);
    current = name;
    for (const section of $$('.page')) section.hidden = section.id !== `page-${name}`;
    for (const link of $$('[data-nav]')) {
      if (link.dataset.nav === name) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    document.title = `${name[0].toUpperCase()}${name.slice(1)} · claudcode dashboard`;
    $('#notice').hidden = true;
    pages[name].enter().catch((err) => notice(err.message));
  }

  for (const link of $$('[data-nav]')) {
    link.addEventListener('click', (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      show(link.dataset.nav, current !== link.dataset.nav);
    });
  }
  window.addEventListener('popstate', () => show(pageFor(location.pathname), false));

  $('#logout').addEventListener('click', async () => {
    try {
      await api('/dashboard/logout', { method: 'POST' });
    } catch (err) {
      notice(err.message);
      return;
    }
    location.assign('/dashboard/login');
  });

  // ---- overview ----
  const COLORS = {
    requests: '#1f1e1c',
    input: '#3b6ea5', output: '#c2562f', cache_creation: '#8e6bb8', cache_read: '#3d9a8b',
    cost: '#c2562f', hit: '#3d9a8b', saved: '#a8d5cc', p50: '#3b6ea5', p95: '#c2562f',
    rate_limited: '#e0a030', client_error: '#d9825b', upstream_error: '#b42318', gateway_error: '#7a1c12', client_closed: '#9c9890', upstream_cut: '#c97b84',
  };
  const ERROR_KINDS = [
    ['rate_limited', 'Rate limited'], ['client_error', 'Client errors'], ['upstream_error', 'Upstream errors'],
    ['gateway_error', 'Gateway errors'], ['client_closed', 'Client closed'], ['upstream_cut', 'Upstream cut'],
  ];
  const TOKEN_KINDS = [['input', 'Input'], ['output', 'Output'], ['cache_creation', 'Cache write'], ['cache_read', 'Cache read']];
  const charts = {};
  let range = 'day';

  function chart(id, config) {
    if (typeof Chart === 'undefined') throw new Error('Chart.js did not load.');
    charts[id]?.destroy();
    const base = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: 'index', intersect: false },
      plugins: { legend: { position: 'bottom', labels: { boxWidth: 12, usePointStyle: true } } },
      scales: { x: { ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 }, grid: { display: false } } },
    };
    const own = config.options || {};
    const scales = { ...base.scales, ...(own.scales || {}) };
    scales.x = { ...base.scales.x, ...((own.scales && own.scales.x) || {}) };
    const options = { ...base, ...own, plugins: { ...base.plugins, ...(own.plugins || {}) }, scales };
    charts[id] = new Chart(document.getElementById(id), { ...config, options });
  }

  function tile(label, value, sub) {
    return el('div', { className: 'tile' }, el('div', { className: 'label', text: label }), el('div', { className: 'value', text: value }), sub ? el('div', { className: 'sub', text: sub }) : null);
  }

  async function enterOverview() {
    for (const button of $$('[data-range]')) button.setAttribute('aria-pressed', String(button.dataset.range === range));
    const data = await api(`overview?range=${range}`);
    if (current !== 'overview') return;
    const t = data.totals;
    const errors = Object.values(t.errors || {}).reduce((a, b) => a + b, 0);
    const tokens = t.tokens.input + t.tokens.output + t.tokens.cache_creation + t.tokens.cache_read;
    $('#overview-span').textContent = `${fmtDateTime(data.since)} – ${fmtDateTime(data.until)}, ${data.points.length} points by ${data.bucket}`;
    $('#tiles').replaceChildren(
      tile('Requests', fmtInt(t.requests)),
      tile('Errors', fmtInt(errors), t.requests ? fmtPct(errors / t.requests) : undefined),
      tile('Tokens', fmtCompact(tokens), `${fmtCompact(t.tokens.input)} in · ${fmtCompact(t.tokens.output)} out`),
      tile('Cost estimate', fmtUsd(t.costUsd)),
      tile('Cache hit rate', fmtPct(t.cacheHitRate), `${fmtInt(t.cacheHits)} hits`),
      tile('Tokens saved', fmtCompact(t.savedTokens)),
      tile('Latency p50 / p95', `${fmtMs(t.p50Ms)} / ${fmtMs(t.p95Ms)}`),
    );
    const labels = data.points.map((p) => fmtPoint(p.t, data.bucket));
    const pts = data.points;
    chart('chart-requests', {
      data: {
        labels,
        datasets: [
          { type: 'line', label: 'Requests', data: pts.map((p) => p.requests), borderColor: COLORS.requests, backgroundColor: COLORS.requests, pointRadius: 0, tension: 0.25, order: 0 },
          ...ERROR_KINDS.map(([kind, label]) => ({ type: 'bar', label, data: pts.map((p) => (p.errors && p.errors[kind]) || 0), backgroundColor: COLORS[kind], stack: 'errors', yAxisID: 'errors', order: 1 })),
        ],
      },
      options: {
        scales: {
          x: { stacked: true },
          y: { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: 'requests' } },
          errors: { position: 'right', beginAtZero: true, stacked: true, grid: { display: false }, ticks: { precision: 0 }, title: { display: true, text: 'errors' } },
        },
      },
    });
    chart('chart-tokens', {
      type: 'bar',
      data: { labels, datasets: TOKEN_KINDS.map(([kind, label]) => ({ label, data: pts.map((p) => p.tokens[kind]), backgroundColor: COLORS[kind], stack: 'tokens' })) },
      options: { scales: { y: { beginAtZero: true, stacked: true, ticks: { callback: (v) => fmtCompact(v) } }, x: { stacked: true } } },
    });
    chart('chart-cost', {
      type: 'bar',
      data: { labels, datasets: [{ label: 'Estimated cost (USD)', data: pts.map((p) => p.costUsd), backgroundColor: COLORS.cost }] },
      options: { plugins: { tooltip: { callbacks: { label: (ctx) => fmtUsd(ctx.parsed.y) } } }, scales: { y: { beginAtZero: true, ticks: { callback: (v) => fmtUsd(v) } } } },
    });
    chart('chart-cache', {
      data: {
        labels,
        datasets: [
          { type: 'line', label: 'Hit rate (%)', data: pts.map((p) => (p.requests ? (100 * p.cacheHits) / p.requests : null)), borderColor: COLORS.hit, backgroundColor: COLORS.hit, yAxisID: 'rate', spanGaps: true, pointRadius: 2, tension: 0.25 },
          { type: 'bar', label: 'Tokens saved', data: pts.map((p) => p.savedTokens), backgroundColor: COLORS.saved, yAxisID: 'saved' },
        ],
      },
      options: {
        scales: {
          rate: { position: 'left', beginAtZero: true, max: 100, ticks: { callback: (v) => `${v}%` } },
          saved: { position: 'right', beginAtZero: true, grid: { display: false }, ticks: { callback: (v) => fmtCompact(v) } },
        },
      },
    });
    chart('chart-latency', {
      type: 'line',
      data: {
        labels,
        datasets: [
          { label: 'p50', data: pts.map((p) => p.p50Ms), borderColor: COLORS.p50, backgroundColor: COLORS.p50, spanGaps: true, pointRadius: 2, tension: 0.25 },
          { label: 'p95', data: pts.map((p) => p.p95Ms), borderColor: COLORS.p95, backgroundColor: COLORS.p95, spanGaps: true, pointRadius: 2, tension: 0.25 },
        ],
      },
      options: { plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${fmtMs(ctx.parsed.y)}` } } }, scales: { y: { beginAtZero: true, ticks: { callback: (v) => fmtMs(v) } } } },
    });
  }

  for (const button of $$('[data-range]')) {
    button.addEventListener('click', () => {
      range = button.dataset.range;
      enterOverview().catch((err) => notice(err.message));
    });
  }

  // ---- keys ----
  let keyCatalog = { models: [], mcp_servers: [], defaults: {} };
  let keysById = new Map();
  let editing;

  function widthClass(fraction) {
    const step = Math.min(100, Math.max(0, Math.round((fraction * 100) / 5) * 5));
    return `w${fraction > 0 && step === 0 ? 5 : step}`;
  }

  function meter(used, total) {
    const fraction = total > 0 ? used / total : 0;
    const level = fraction >= 1 ? ' full' : fraction >= 0.8 ? ' high' : '';
    return el('div', { className: `meter${level}`, role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': total, 'aria-valuenow': Math.min(used, total) }, el('span', { className: widthClass(fraction) }));
  }

  function fillChoices(form, name, options, selected) {
    const box = $(`[data-choices="${name}"]`, form);
    const legend = $('legend', box);
    box.replaceChildren(legend, ...options.map((option) => el('label', {}, el('input', { type: 'checkbox', name, value: option, checked: selected.includes(option) }), option)));
    box.hidden = options.length === 0;
  }

  const chosen = (form, name) => $$(`input[name="${name}"]:checked`, form).map((input) => input.value);

  /** ISO (UTC) → the value of a datetime-local input (local time). */
  function toLocalInput(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  /** The key fields a form gives; `all` sends every field (edit), else only those filled in (create). */
  function keyInput(form, all) {
    const input = {};
    const value = (name) => form.elements[name].value.trim();
    input.name = value('name');
    for (const name of ['budget_tokens', 'rpm', 'concurrent']) {
      if (value(name) !== '' || all) input[name] = Number(value(name));
    }
    if (value('window') !== '' || all) input.window = /^\d+$/.test(value('window')) ? Number(value('window')) : value('window');
    const expires = value('expires_at');
    if (expires !== '') input.expires_at = new Date(expires).toISOString();
    else if (all) input.expires_at = null;
    const models = chosen(form, 'models');
    if (models.length > 0 || all) input.models = models.length > 0 ? models : null;
    if (keyCatalog.mcp_servers.length > 0) input.mcp_servers = chosen(form, 'mcp_servers');
    return input;
  }

  function clearNewKey() {
    $('#new-key-value').textContent = '';
    $('#copy-state').textContent = '';
    $('#new-key').hidden = true;
  }

  function keyRow(key) {
    const b = key.budget;
    const toggle = key.disabled
      ? el('button', { type: 'button', text: 'Enable', 'data-action': 'enable' })
      : el('button', { type: 'button', text: 'Disable', 'data-action': 'disable' });
    return el(
      'tr',
      { 'data-key-id': key.id },
      el('td', { 'data-label': 'Name' }, el('div', {}, el('div', { className: 'key-name', text: key.name }), el('div', { className: 'key-meta', text: `${key.key_preview} · ${key.id}` }))),
      el('td', { 'data-label': 'Status' }, el('span', { className: `badge ${key.status}`, text: key.status, title: key.expires_at ? `expires ${fmtDateTime(key.expires_at)}` : undefined })),
      el('td', { 'data-label': 'Budget', className: 'budget-cell' }, el('div', {}, meter(b.used_tokens, b.total_tokens), el('div', { className: 'meter-text', text: `${fmtCompact(b.used_tokens)} / ${fmtCompact(b.total_tokens)} · ${b.window}${b.used_tokens > 0 ? ` · frees in ${b.resets_in}` : ''}` }))),
      el('td', { 'data-label': 'RPM', text: fmtInt(key.rpm) }),
      el('td', { 'data-label': 'Concurrent', text: fmtInt(key.concurrent) }),
      el('td', { 'data-label': 'Models', text: key.models ? key.models.join(', ') : 'all' }),
      el('td', { 'data-label': 'MCP servers', text: key.mcp_servers.length ? key.mcp_servers.join(', ') : '–' }),
      el('td', { 'data-label': 'Actions' }, el('div', { className: 'row-actions' }, el('button', { type: 'button', text: 'Edit', 'data-action': 'edit' }), toggle, el('button', { type: 'button', className: 'danger', text: 'Delete', 'data-action': 'delete' }))),
    );
  }

  async function loadKeys() {
    const data = await api('keys');
    keyCatalog = { models: data.models, mcp_servers: data.mcp_servers, defaults: data.defaults };
    keysById = new Map(data.data.map((k) => [k.id, k]));
    const rows = data.data.map(keyRow);
    $('#keys-table tbody').replaceChildren(...rows);
    $('#keys-empty').hidden = rows.length > 0;
    $('#keys-table').hidden = rows.length === 0;
    return data;
  }

  async function enterKeys() {
    await loadKeys();
    const form = $('#create-form');
    const d = keyCatalog.defaults;
    form.elements.budget_tokens.placeholder = d.budget_tokens ? String(d.budget_tokens) : '';
    form.elements.window.placeholder = d.window || '5h';
    form.elements.rpm.placeholder = d.rpm ? String(d.rpm) : '';
    form.elements.concurrent.placeholder = d.concurrent ? String(d.concurrent) : '';
    if (!form.dataset.filled) {
      fillChoices(form, 'models', keyCatalog.models, []);
      fillChoices(form, 'mcp_servers', keyCatalog.mcp_servers, []);
      form.dataset.filled = '1';
    }
  }

  function leaveKeys() {
    clearNewKey();
    if ($('#edit-dialog').open) $('#edit-dialog').close();
  }

  $('#show-create').addEventListener('click', () => {
    const form = $('#create-form');
    form.hidden = !form.hidden;
    if (!form.hidden) form.elements.name.focus();
  });

  $('#create-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const error = $('[data-form-error]', form);
    error.textContent = '';
    if (!form.elements.name.value.trim()) {
      error.textContent = 'A name is required.';
      return;
    }
    const submit = $('button[type="submit"]', form);
    submit.disabled = true;
    try {
      const created = await api('keys', { method: 'POST', body: keyInput(form, false) });
      form.reset();
      form.hidden = true;
      $('#new-key-value').textContent = created.key;
      $('#copy-state').textContent = '';
      $('#new-key').hidden = false;
      await loadKeys();
      $('#copy-key').focus();
    } catch (err) {
      error.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  });

  $('#copy-key').addEventListener('click', async () => {
    const value = $('#new-key-value').textContent;
    try {
      await navigator.clipboard.writeText(value);
    } catch {
      // Not a secure context (plain http to a remote host): select the text and copy that way.
      const selection = window.getSelection();
      const range = document.createRange();
      range.selectNodeContents($('#new-key-value'));
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand('copy');
    }
    $('#copy-state').textContent = 'Copied. Press Done once it is stored safely.';
  });
  $('#dismiss-key').addEventListener('click', clearNewKey);
  window.addEventListener('pagehide', clearNewKey);

  for (const cancel of $$('[data-cancel]')) {
    cancel.addEventListener('click', () => {
      const form = cancel.closest('form');
      if (form.id === 'create-form') {
        form.reset();
        form.hidden = true;
      } else $('#edit-dialog').close();
    });
  }

  $('#keys-table').addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const id = button.closest('tr').dataset.keyId;
    const key = keysById.get(id);
    if (!key) return;
    const action = button.dataset.action;
    if (action === 'edit') return openEdit(key);
    if (action === 'delete' && !window.confirm(`Delete the key “${key.name}”? Clients using it get 401 from now on. This cannot be undone.`)) return;
    button.disabled = true;
    try {
      if (action === 'delete') await api(`keys/${encodeURIComponent(id)}`, { method: 'DELETE' });
      else await api(`keys/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
      notice(`Key “${key.name}” ${action === 'delete' ? 'deleted' : `${action}d`}.`, true);
      await loadKeys();
    } catch (err) {
      notice(err.message);
      button.disabled = false;
    }
  });

  function openEdit(key) {
    editing = key.id;
    const form = $('#edit-form');
    $('[data-edit-name]', form).textContent = key.name;
    $('[data-form-error]', form).textContent = '';
    form.elements.name.value = key.name;
    form.elements.budget_tokens.value = String(key.budget_tokens);
    form.elements.window.value = key.budget.window.replace(/ rolling$/, '');
    form.elements.rpm.value = String(key.rpm);
    form.elements.concurrent.value = String(key.concurrent);
    form.elements.expires_at.value = toLocalInput(key.expires_at);
    fillChoices(form, 'models', keyCatalog.models, key.models || []);
    fillChoices(form, 'mcp_servers', keyCatalog.mcp_servers, key.mcp_servers);
    $('#edit-dialog').showModal();
  }

  $('#edit-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const error = $('[data-form-error]', form);
    error.textContent = '';
    try {
      const updated = await api(`keys/${encodeURIComponent(editing)}`, { method: 'PATCH', body: keyInput(form, true) });
      $('#edit-dialog').close();
      notice(`Key “${updated.name}” saved.`, true);
      await loadKeys();
    } catch (err) {
      error.textContent = err.message;
    }
  });

  // ---- usage explorer ----
  let usageFilled = false;

  function usageParams() {
    const form = $('#usage-form');
    const params = new URLSearchParams();
    for (const name of ['by', 'since', 'key', 'model', 'upstream']) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  const USAGE_COLUMNS = [
    (r) => fmtInt(r.requests), (r) => fmtInt(r.errors), (r) => fmtInt(r.cachedRequests), (r) => fmtInt(r.inputTokens), (r) => fmtInt(r.outputTokens),
    (r) => fmtInt(r.cacheCreationTokens), (r) => fmtInt(r.cacheReadTokens), (r) => fmtInt(r.billedTokens), (r) => fmtInt(r.savedTokens),
    (r) => fmtUsd(r.costUsd), (r) => fmtMs(r.avgLatencyMs),
  ];

  function groupLabel(row, by) {
    if (by === 'key') return el('div', {}, el('div', { text: row.label || '(deleted key)' }), el('div', { className: 'key-meta', text: row.group }));
    if (by === 'upstream' && row.group === '') return '(none: cache hits and refusals)';
    if (by === 'hour') return fmtDateTime(row.group);
    return row.label || row.group;
  }

  async function loadUsage() {
    const params = usageParams();
    const data = await api(`usage?${params}`);
    const csv = new URLSearchParams(params);
    csv.set('format', 'csv');
    $('#csv-link').href = `/dashboard/api/usage?${csv}`;
    $('#usage-span').textContent = `${fmtDateTime(data.since)} – ${fmtDateTime(data.until)}`;
    const rows = data.rows.map((r) => el('tr', {}, el('td', {}, groupLabel(r, data.by)), USAGE_COLUMNS.map((f) => el('td', { text: f(r) }))));
    $('#usage-table tbody').replaceChildren(...rows);
    const sum = (field) => data.rows.reduce((a, r) => a + (r[field] || 0), 0);
    const requests = sum('requests');
    const totals = {
      requests, errors: sum('errors'), cachedRequests: sum('cachedRequests'), inputTokens: sum('inputTokens'), outputTokens: sum('outputTokens'),
      cacheCreationTokens: sum('cacheCreationTokens'), cacheReadTokens: sum('cacheReadTokens'), billedTokens: sum('billedTokens'),
      savedTokens: sum('savedTokens'), costUsd: sum('costUsd'),
      avgLatencyMs: requests ? data.rows.reduce((a, r) => a + r.avgLatencyMs * r.requests, 0) / requests : 0,
    };
    $('#usage-table tfoot').replaceChildren(rows.length ? el('tr', {}, el('td', { text: 'Total' }), USAGE_COLUMNS.map((f) => el('td', { text: f(totals) }))) : '');
    $('#usage-empty').hidden = rows.length > 0;
  }

  async function enterUsage() {
    if (!usageFilled) {
      const [keys, live] = await Promise.all([api('keys'), api('live')]);
      const form = $('#usage-form');
      form.elements.key.append(...keys.data.map((k) => el('option', { value: k.id, text: `${k.name} (${k.key_preview})` })));
      form.elements.model.append(...keys.models.map((m) => el('option', { value: m, text: m })));
      $('#upstream-names').replaceChildren(...live.upstreams.map((u) => el('option', { value: u.name })));
      usageFilled = true;
    }
    await loadUsage();
  }

  $('#usage-form').addEventListener('change', () => loadUsage().catch((err) => notice(err.message)));
  $('#usage-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadUsage().catch((err) => notice(err.message));
  });

  // ---- live ----
  const LIVE_REFRESH_MS = 3000;
  let liveTimer;

  function ratio(used, limit) {
    return el('div', {}, meter(used, limit), el('div', { className: 'meter-text', text: `${fmtInt(used)} / ${fmtInt(limit)}` }));
  }

  async function refreshLive() {
    clearTimeout(liveTimer);
    try {
      const data = await api('live');
      if (current !== 'live') return;
      const m = data.maintenance;
      const sum = (field) => data.keys.reduce((a, k) => a + k[field], 0);
      $('#live-tiles').replaceChildren(
        tile('In flight', fmtInt(sum('in_flight')), data.mode === 'scale-out' ? `every instance · ${fmtInt(data.in_flight)} here` : undefined),
        tile('Requests, last minute', fmtInt(sum('rpm_used'))),
        tile('Mode', data.mode),
        tile('Maintenance', m.enabled ? 'on' : 'off', m.enabled && m.since ? `since ${fmtDateTime(m.since)}` : undefined),
        tile('Upstreams closed', `${data.upstreams.filter((u) => u.state === 'closed').length} / ${data.upstreams.length}`),
      );
      $('#upstreams-table tbody').replaceChildren(...data.upstreams.map((u) => el('tr', {}, el('td', { text: u.name }), el('td', {}, el('span', { className: `badge ${u.state}`, text: u.state })))));
      $('#live-keys-table tbody').replaceChildren(
        ...data.keys.map((k) => el('tr', {}, el('td', { text: k.name }), el('td', {}, el('span', { className: `badge ${k.status}`, text: k.status })), el('td', {}, ratio(k.rpm_used, k.rpm)), el('td', {}, ratio(k.in_flight, k.concurrent)))),
      );
      $('#live-updated').textContent = `Updated ${new Date(data.at).toLocaleTimeString('en-US')} · every ${LIVE_REFRESH_MS / 1000} s`;
    } catch (err) {
      notice(err.message);
    }
    if (current === 'live') liveTimer = setTimeout(refreshLive, LIVE_REFRESH_MS);
  }

  async function enterLive() {
    await refreshLive();
  }

  function leaveLive() {
    clearTimeout(liveTimer);
  }

  document.addEventListener('visibilitychange', () => {
    if (current !== 'live') return;
    if (document.hidden) clearTimeout(liveTimer);
    else refreshLive();
  });

  show(pageFor(location.pathname), false);
})();
