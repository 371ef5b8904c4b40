// The web page: sign in, upload with Uppy over tus (/files/), list, download, delete.
// The token lives in sessionStorage only; downloads use short-lived signed links, so no
// token ever goes into a URL. Everything the page shows from the server goes in as text.
'use strict';

(() => {
  const TOKEN_KEY = 'ft.token';
  const PAGE = 100;
  const MAX_LIMIT = 1000;
  const BUSY_POLL_MS = 1500;
  const IDLE_POLL_MS = 15000;
  const LINK_MARGIN_S = 20;

  const $ = (id) => document.getElementById(id);
  const state = { session: null, uppy: null, timer: null, limit: PAGE, showAll: false, uploading: false };

  // --- session -----------------------------------------------------------------------------
  function decodeSession(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const claims = JSON.parse(atob(part));
      if (typeof claims.sub !== 'string' || typeof claims.uid !== 'string' || claims.exp * 1000 <= Date.now()) return null;
      return { token, name: claims.sub, uid: claims.uid, admin: claims.role === 'admin', exp: claims.exp };
    } catch (_) {
      return null;
    }
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(body.detail || `the server answered ${status}`);
      this.status = status;
      this.code = body.code || '';
      this.body = body;
    }
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (state.session) headers.Authorization = `Bearer ${state.session.token}`;
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: 'no-store' });
    } catch (_) {
      throw new ApiError(0, { code: 'offline', detail: 'The server cannot be reached. Check your connection.' });
    }
    if (response.status === 401 && state.session) {
      signOut('Your session has ended. Please sign in again.');
      throw new ApiError(401, { code: 'not_authenticated', detail: 'signed out' });
    }
    const body = response.status === 204 ? null : await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body || {});
    return { status: response.status, body };
  }

  async function signIn(event) {
    event.preventDefault();
    const error = $('signin-error');
    const button = $('signin-button');
    const username = $('username').value.trim();
    const password = $('password').value;
    error.hidden = true;
    if (!username || !password) {
      showSigninError('Enter your username and password.');
      return;
    }
    button.disabled = true;
    button.textContent = 'Signing in…';
    try {
      const { body } = await api('/token', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ username, password }),
      });
      const session = decodeSession(body.access_token);
      if (!session) throw new ApiError(500, { detail: 'The server sent an unreadable token.' });
      sessionStorage.setItem(TOKEN_KEY, body.access_token);
      $('password').value = '';
      start(session);
    } catch (err) {
      if (err.status === 401) showSigninError('Wrong username or password.');
      else if (err.status === 429) showSigninError(`Too many attempts. Try again in ${err.body.retry_after || 'a few'} seconds.`);
      else showSigninError(err.message);
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  }

  function showSigninError(text) {
    const error = $('signin-error');
    error.textContent = text;
    error.hidden = false;
    $('password').focus();
  }

  function start(session) {
    state.session = session;
    $('signin-view').hidden = true;
    $('app-view').hidden = false;
    $('account').hidden = false;
    $('who').textContent = session.name;
    $('avatar').textContent = session.name.slice(0, 1).toUpperCase();
    $('role-badge').hidden = !session.admin;
    $('all-toggle').hidden = !session.admin;
    $('cleanup').hidden = !session.admin;
    startUppy();
    refresh();
    $('main').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.session = null;
    clearTimeout(state.timer);
    if (state.uppy) {
      state.uppy.destroy();
      state.uppy = null;
    }
    $('files-body').replaceChildren();
    $('app-view').hidden = true;
    $('account').hidden = true;
    $('signin-view').hidden = false;
    $('show-all').checked = false;
    state.showAll = false;
    state.limit = PAGE;
    if (message) showSigninError(message);
    else $('signin-error').hidden = true;
    $('username').focus();
  }

  // --- uploads (Uppy: Dashboard + Tus + Golden Retriever) ------------------------------------
  function startUppy() {
    const U = window.Uppy;
    if (!U) {
      notify('The uploader could not be loaded.', true);
      return;
    }
    // One id per user: Golden Retriever keys what it remembers by it, so a reload restores only
    // the signed-in user's uploads, never those another user left in this browser.
    const uppy = new U.Uppy({ autoProceed: false, id: `ft-uploader-${state.session.uid}` });
    uppy.use(U.Dashboard, {
      inline: true,
      target: '#uploader',
      width: '100%',
      height: 340,
      proudlyDisplayPoweredByUppy: false,
      showProgressDetails: true,
      showRemoveButtonAfterComplete: true,
      note: 'Any size. Interrupted uploads resume where they stopped.',
      theme: 'light',
    });
    uppy.use(U.Tus, {
      endpoint: '/files/',
      headers: () => (state.session ? { Authorization: `Bearer ${state.session.token}` } : {}),
      retryDelays: [0, 1000, 3000, 5000, 10000],
      removeFingerprintOnSuccess: true,
      limit: 3,
    });
    // Remembers the selection across a reload; tus fingerprints resume each file's bytes.
    uppy.use(U.GoldenRetriever, { serviceWorker: false });
    // After a reload, carry on by itself once every file is back: the browser keeps files up to
    // 10 MiB, bigger ones are ghosts until the user picks them again (Uppy asks for that).
    const resumeRestored = () => {
      if (uppy.getState().recoveredState && !uppy.getFiles().some((f) => f.isGhost)) uppy.emit('restore-confirmed');
    };
    uppy.on('restored', resumeRestored);
    uppy.on('file-added', resumeRestored);
    uppy.on('upload', () => { state.uploading = true; schedule(BUSY_POLL_MS); });
    uppy.on('upload-success', () => refresh());
    uppy.on('complete', (result) => {
      state.uploading = false;
      const ok = result.successful ? result.successful.length : 0;
      const failed = result.failed ? result.failed.length : 0;
      if (ok || failed) notify(failed ? `${ok} uploaded, ${failed} failed.` : `${ok} ${ok === 1 ? 'file' : 'files'} uploaded. The server is verifying them.`, failed > 0);
      refresh();
    });
    state.uppy = uppy;
  }

  // --- the files table -----------------------------------------------------------------------
  function schedule(ms) {
    clearTimeout(state.timer);
    if (state.session) state.timer = setTimeout(refresh, ms);
  }

  async function refresh() {
    if (!state.session) return;
    const params = new URLSearchParams({ limit: String(state.limit) });
    if (state.showAll) params.set('all', 'true');
    try {
      const { body } = await api(`/files?${params}`);
      render(body.items, body.next);
      const busy = state.uploading || body.items.some((f) => f.state === 'uploading' || f.state === 'assembling');
      schedule(busy && !document.hidden ? BUSY_POLL_MS : IDLE_POLL_MS);
    } catch (err) {
      if (err.status !== 401) {
        notify(`Could not load the files: ${err.message}`, true);
        schedule(IDLE_POLL_MS);
      }
    }
  }

  function render(items, next) {
    const owners = state.showAll;
    document.querySelectorAll('.owner-col').forEach((th) => { th.hidden = !owners; });
    $('files-title').textContent = owners ? 'All files' : 'Your files';
    const rows = items.map((item) => row(item, owners));
    $('files-body').replaceChildren(...rows);
    $('empty').hidden = items.length > 0;
    $('table-wrap').hidden = items.length === 0;
    $('more').hidden = !next || state.limit >= MAX_LIMIT;
    const done = items.filter((f) => f.state === 'complete').length;
    $('files-summary').textContent = items.length
      ? `${items.length}${next ? '+' : ''} ${items.length === 1 ? 'file' : 'files'}, ${done} complete. Newest first.`
      : 'Newest first.';
  }

  function cell(text, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function row(item, owners) {
    const tr = document.createElement('tr');
    tr.dataset.fileId = item.file_id;
    const nameId = `name-${item.file_id}`;
    const name = document.createElement('th');
    name.scope = 'row';
    name.id = nameId;
    name.className = 'name';
    const title = document.createElement('span');
    title.className = 'file-name';
    title.textContent = item.file_name || item.file_id;
    title.title = item.file_id;
    name.append(title);
    if (item.file_name && item.file_name !== item.file_id) {
      const sub = document.createElement('span');
      sub.className = 'file-id';
      sub.textContent = item.file_id;
      name.append(sub);
    }
    tr.append(name);
    if (owners) tr.append(cell(item.owner || '(removed user)', 'owner'));
    tr.append(cell(formatBytes(item.total_bytes), 'num'));
    tr.append(stateCell(item));
    const date = cell(formatDate(item.created_at), 'date');
    date.title = item.created_at || '';
    tr.append(date);
    tr.append(actionsCell(item, nameId));
    return tr;
  }

  function stateCell(item) {
    const td = cell(undefined, 'state');
    const badge = document.createElement('span');
    badge.className = `badge ${item.state}`;
    badge.textContent = item.state;
    td.append(badge);
    if (item.state === 'uploading' && item.total_bytes > 0) {
      const pct = Math.floor((100 * item.received_bytes) / item.total_bytes);
      const bar = document.createElement('progress');
      bar.max = 100;
      bar.value = pct;
      bar.setAttribute('aria-label', `${pct}% received`);
      td.append(bar);
    }
    return td;
  }

  function actionsCell(item, nameId) {
    const td = cell(undefined, 'actions');
    if (item.state === 'complete') {
      const link = document.createElement('a');
      link.className = 'btn small';
      link.textContent = 'Download';
      link.href = '#';
      link.setAttribute('aria-describedby', nameId);
      link.addEventListener('pointerenter', () => { freshLink(link, item.file_id).catch(() => {}); });
      link.addEventListener('focus', () => { freshLink(link, item.file_id).catch(() => {}); });
      link.addEventListener('click', (event) => download(event, link, item.file_id));
      td.append(link);
    }
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'btn small danger-ghost';
    remove.textContent = 'Delete';
    remove.setAttribute('aria-describedby', nameId);
    remove.disabled = item.state === 'assembling';
    remove.addEventListener('click', () => confirmDelete(item, remove));
    td.append(remove);
    return td;
  }

  // --- downloads: a signed link per file, minted when wanted, renewed before it expires ------
  async function freshLink(link, fileId) {
    const now = Date.now() / 1000;
    if (link.dataset.expires && Number(link.dataset.expires) - LINK_MARGIN_S > now) return;
    const { body } = await api(`/files/${encodeURIComponent(fileId)}/link`, { method: 'POST' });
    link.href = body.url;
    link.dataset.expires = String(Date.parse(body.expires_at) / 1000);
  }

  async function download(event, link, fileId) {
    const now = Date.now() / 1000;
    if (link.dataset.expires && Number(link.dataset.expires) - LINK_MARGIN_S > now) return; // the browser follows it
    event.preventDefault();
    try {
      await freshLink(link, fileId);
      link.click();
    } catch (err) {
      notify(`Could not start the download: ${err.message}`, true);
    }
  }

  // --- delete, with confirmation ---------------------------------------------------------------
  function confirmDelete(item, opener) {
    const dialog = $('confirm-delete');
    const label = item.file_name || item.file_id;
    $('confirm-text').textContent = item.state === 'complete'
      ? `“${label}” (${formatBytes(item.total_bytes)}) will be removed from the server for good.`
      : `The upload of “${label}” will be cancelled and its received bytes removed.`;
    dialog.returnValue = '';
    dialog.addEventListener('close', async () => {
      opener.focus();
      if (dialog.returnValue !== 'delete') return;
      try {
        await api(`/upload/${encodeURIComponent(item.file_id)}`, { method: 'DELETE' });
        notify(`Deleted “${label}”.`);
      } catch (err) {
        notify(`Could not delete “${label}”: ${err.message}`, true);
      }
      refresh();
    }, { once: true });
    dialog.showModal();
  }

  // --- admin -------------------------------------------------------------------------------------
  async function cleanup() {
    const button = $('cleanup');
    button.disabled = true;
    notify('Cleaning up stale uploads…');
    try {
      const { status, body } = await api('/cleanup', { method: 'POST' });
      if (status === 202) notify(`Cleanup is still running (task ${body.task_id}).`);
      else notify(`Cleanup removed ${body.removed.length} stale ${body.removed.length === 1 ? 'upload' : 'uploads'} and freed ${formatBytes(body.freed_bytes)}.`);
    } catch (err) {
      notify(`Cleanup failed: ${err.message}`, true);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  // --- helpers -----------------------------------------------------------------------------------
  function notify(text, isError = false) {
    const notice = $('notice');
    notice.textContent = text;
    notice.classList.toggle('error', isError);
  }

  function formatBytes(n) {
    if (!Number.isFinite(n)) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let value = n;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return i === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[i]}`;
  }

  function formatDate(iso) {
    if (!iso) return '';
    const date = new Date(iso);
    return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  // --- wiring ------------------------------------------------------------------------------------
  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', () => signOut());
    $('refresh').addEventListener('click', () => refresh());
    $('cleanup').addEventListener('click', cleanup);
    $('more').addEventListener('click', () => { state.limit = Math.min(MAX_LIMIT, state.limit + PAGE); refresh(); });
    $('show-all').addEventListener('change', (event) => { state.showAll = event.target.checked; refresh(); });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
    const session = decodeSession(sessionStorage.getItem(TOKEN_KEY) || '');
    if (session) start(session);
    else {
      sessionStorage.removeItem(TOKEN_KEY);
      $('signin-view').hidden = false;
      $('username').focus();
    }
  });
})();
