// The privacy desk. It calls the vault's API with the key typed at sign-in,
// which lives in this closure only: never in storage, a cookie or a URL, so a
// reload forgets it. Subject ids travel in request bodies, never in URLs, and the
// page's own URL never changes. Everything shown is set as text, never as HTML.
'use strict';
(() => {
  let key = null;
  let me = null;
  let declared = [];
  let current = null;
  let receipt = null;
  // Each look-up's number: an answer to an older one is dropped, so the screen
  // never shows a subject other than the last one asked for.
  let asked = 0;
  let busy = false;

  const $ = (id) => document.getElementById(id);

  function say(text, error = false) {
    const status = $('status');
    status.textContent = text;
    status.classList.toggle('error', error);
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + key };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      referrerPolicy: 'no-referrer',
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new Error((data && data.error && data.error.message) || response.statusText);
      error.code = data && data.error && data.error.code;
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const can = (scope) => me !== null && me.scopes.includes(scope);
  const allowed = (purpose) => me.purposes === null || me.purposes.includes(purpose);

  function when(ms) {
    return new Date(ms).toISOString().replace('T', ' ').slice(0, 16) + ' UTC';
  }

  function cell(row, text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function button(text, onClick, className) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    if (className) b.className = className;
    b.addEventListener('click', onClick);
    return b;
  }

  function clear(tbody) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function download(name, data) {
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  // Sign-in and sign-out.

  async function signIn(event) {
    event.preventDefault();
    const input = $('api-key');
    key = input.value.trim();
    input.value = '';
    try {
      me = await api('GET', '/v1/whoami');
      declared = (await api('GET', '/v1/purposes')).purposes;
    } catch (error) {
      key = null;
      me = null;
      say(error.status === 401 ? 'That key was refused.' : 'Sign-in failed: ' + error.message, true);
      return;
    }
    $('who').textContent = 'Signed in as ' + me.name;
    show('who', true);
    show('sign-out', true);
    show('sign-in', false);
    show('nav', true);
    show('nav-subject', can('export'));
    show('nav-audit', can('audit'));
    say('Signed in.');
    if (can('export')) view('subject-view');
    else if (can('audit')) view('audit-view');
    else say('Signed in, but this key may not look subjects up nor read the audit trail.');
  }

  // Signing out reloads the page: the key and every value shown go with it (the
  // address holds nothing to lose).
  function signOut() {
    key = null;
    location.reload();
  }

  function view(id) {
    for (const other of ['subject-view', 'audit-view', 'print-view']) show(other, other === id);
    for (const b of document.querySelectorAll('#nav button')) {
      if (b.dataset.view === id) b.setAttribute('aria-current', 'page');
      else b.removeAttribute('aria-current');
    }
    // Where a screen reader (and the keyboard) goes on: the view's heading.
    const heading = $(id).querySelector('h2');
    heading.tabIndex = -1;
    heading.focus();
  }

  // Runs one write at a time: a second click while one is under way does nothing
  // (a second erasure would answer with an empty receipt).
  async function once(task) {
    if (busy) return;
    busy = true;
    try {
      await task();
    } finally {
      busy = false;
    }
  }

  function forget() {
    current = null;
    receipt = null;
    show('subject-result', false);
    show('receipt', false);
    clearPrint();
  }

  // A subject.

  async function lookUp(event) {
    event.preventDefault();
    const subject = $('subject-id').value;
    if (!subject) return;
    forget();
    await load(subject);
  }

  // Reads `subject` and shows it, unless another look-up was asked for meanwhile.
  async function load(subject) {
    const mine = ++asked;
    say('Looking up…');
    try {
      const overview = await api('POST', '/v1/subjects/lookup', { subject });
      if (mine !== asked) return;
      current = { subject, overview };
      render();
      say(overview.subject_ref ? 'Found.' : 'The vault holds nothing under this id.');
    } catch (error) {
      if (mine === asked) say('Look-up failed: ' + error.message, true);
    }
  }

  function render() {
    const { overview } = current;
    const found = overview.subject_ref !== null;
    show('subject-result', true);
    show('erase-confirm', false);
    $('subject-shown').textContent = current.subject;
    $('subject-ref').textContent = found ? overview.subject_ref : 'none';
    show('export-json', found && can('export'));
    show('export-print', found && can('export'));
    show('erase-start', found && can('erase'));
    renderRecords(overview);
    renderConsents(overview);
    renderLog(overview.access_log, $('access-log').tBodies[0], 'access-empty', false);
    show('access-more', overview.more_events);
    const list = $('backups');
    while (list.firstChild) list.removeChild(list.firstChild);
    for (const id of overview.backups) {
      const item = document.createElement('li');
      item.textContent = id;
      list.appendChild(item);
    }
    if (overview.backups.length === 0) {
      const item = document.createElement('li');
      item.textContent = 'None kept by the vault.';
      list.appendChild(item);
    }
  }

  function revealPurposes() {
    return declared.filter((p) => allowed(p.name));
  }

  function renderRecords(overview) {
    const body = $('records').tBodies[0];
    clear(body);
    show('records-empty', overview.records.length === 0);
    show('records', overview.records.length > 0);
    show('records-more', overview.more_records);
    const purposes = can('detokenize') ? revealPurposes() : [];
    const select = $('reveal-purpose');
    while (select.firstChild) select.removeChild(select.firstChild);
    for (const p of purposes) {
      const option = document.createElement('option');
      option.value = p.name;
      option.textContent = p.name + (p.masked ? ' (masked)' : '');
      select.appendChild(option);
    }
    show('reveal-controls', purposes.length > 0 && overview.records.length > 0);
    for (const record of overview.records) {
      const row = document.createElement('tr');
      cell(row, record.field);
      cell(row, when(record.created_at));
      cell(row, record.token, 'token');
      const value = cell(row, '•••••• ');
      value.tabIndex = -1;
      if (purposes.length > 0) {
        const reveal_ = button('Reveal', () => reveal(record, value), 'reveal');
        reveal_.setAttribute('aria-label', 'Reveal ' + record.field);
        value.appendChild(reveal_);
      }
      body.appendChild(row);
    }
  }

  async function reveal(record, target) {
    const purpose = $('reveal-purpose').value;
    try {
      const answer = await api('POST', '/v1/detokenize', { tokens: [record.token], purpose });
      const result = answer.results[0];
      if (result.error) {
        target.textContent = 'Not shown: ' + result.error.replace(/_/g, ' ');
      } else {
        target.textContent = result.value + (result.masked ? ' (masked)' : '');
      }
      // The button is gone: the keyboard's place is the value.
      target.focus();
      say('Revealed for ' + purpose + ' (recorded in the audit trail).');
    } catch (error) {
      say('Reveal failed: ' + error.message, true);
    }
  }

  function renderConsents(overview) {
    const body = $('consents').tBodies[0];
    clear(body);
    show('consents-empty', overview.consents.length === 0);
    show('consents', overview.consents.length > 0);
    for (const consent of overview.consents) {
      const row = document.createElement('tr');
      cell(row, consent.purpose);
      cell(row, consent.granted ? 'granted' : 'withdrawn');
      cell(row, when(consent.since));
      cell(
        row,
        consent.history
          .map((h) => (h.granted ? 'granted ' : 'withdrawn ') + when(h.at) + (h.source ? ' (' + h.source + ')' : ''))
          .join('; ')
      );
      body.appendChild(row);
    }
    const consentable = declared.filter((p) => p.basis === 'consent' && allowed(p.name));
    const form = $('consent-form');
    form.hidden = !(can('consent') && consentable.length > 0 && overview.subject_ref !== null);
    const select = $('consent-purpose');
    while (select.firstChild) select.removeChild(select.firstChild);
    for (const p of consentable) {
      const option = document.createElement('option');
      option.value = p.name;
      option.textContent = p.name;
      select.appendChild(option);
    }
  }

  function renderLog(events, body, emptyId, withSeq) {
    clear(body);
    show(emptyId, events.length === 0);
    body.parentElement.hidden = events.length === 0;
    for (const e of events) {
      const row = document.createElement('tr');
      if (withSeq) cell(row, String(e.seq));
      cell(row, when(e.at));
      cell(row, e.actor);
      cell(row, e.action.replace(/_/g, ' '));
      cell(row, e.purpose || '');
      cell(row, e.outcome.replace(/_/g, ' '));
      cell(row, String(e.records));
      body.appendChild(row);
    }
  }

  function recordConsent(event) {
    event.preventDefault();
    once(() => recordConsentNow());
  }

  async function recordConsentNow() {
    const granted = document.querySelector('input[name="consent-change"]:checked').value === 'grant';
    const source = $('consent-source').value.trim();
    // Counted as the vault counts: characters, not UTF-16 units (maxlength's).
    if ([...source].length > 256) {
      say('The source has more than 256 characters: nothing was recorded.', true);
      return;
    }
    const body = { subject: current.subject, purpose: $('consent-purpose').value, granted };
    if (source) body.source = source;
    try {
      await api('POST', '/v1/subjects/consent', body);
      $('consent-source').value = '';
      await load(current.subject);
      say('Consent ' + (granted ? 'granted' : 'withdrawn') + ' for ' + body.purpose + '.');
    } catch (error) {
      say('Recording the consent failed: ' + error.message, true);
    }
  }

  // Exports (Art. 15 and 20): every page, then a file or a printable page.

  async function exportAll() {
    const subject = current.subject;
    let cursor = null;
    const all = { subject_ref: null, exported_at: null, records: [], consents: [], access_log: [] };
    do {
      const body = cursor ? { subject, cursor } : { subject };
      const page = await api('POST', '/v1/subjects/export', body);
      all.subject_ref = page.subject_ref;
      all.exported_at = all.exported_at || page.exported_at;
      all.records.push(...page.records);
      if (page.consents.length) all.consents = page.consents;
      all.access_log.push(...page.access_log);
      cursor = page.next_cursor;
    } while (cursor);
    return all;
  }

  async function exportJson() {
    const subject = current.subject;
    try {
      const all = await exportAll();
      if (!current || current.subject !== subject) return;
      download('export-' + all.subject_ref + '.json', all);
      say('Export downloaded (recorded in the audit trail).');
    } catch (error) {
      say('Export failed: ' + error.message, true);
    }
  }

  function clearPrint() {
    for (const id of ['print-records', 'print-consents', 'print-log']) {
      const element = id === 'print-records' ? $(id).tBodies[0] : $(id);
      while (element.firstChild) element.removeChild(element.firstChild);
    }
    $('print-date').textContent = '';
    $('print-ref').textContent = '';
  }

  async function exportPrint() {
    const subject = current.subject;
    let all;
    try {
      all = await exportAll();
    } catch (error) {
      say('Export failed: ' + error.message, true);
      return;
    }
    if (!current || current.subject !== subject) return;
    clearPrint();
    $('print-date').textContent = when(all.exported_at);
    $('print-ref').textContent = all.subject_ref;
    const body = $('print-records').tBodies[0];
    clear(body);
    for (const r of all.records) {
      const row = document.createElement('tr');
      cell(row, r.field.replace(/_/g, ' '));
      cell(row, r.value === null ? '(not text)' : r.value);
      cell(row, when(r.created_at));
      body.appendChild(row);
    }
    const consents = $('print-consents');
    while (consents.firstChild) consents.removeChild(consents.firstChild);
    for (const c of all.consents) {
      const item = document.createElement('li');
      item.textContent = c.purpose + ': ' + (c.granted ? 'given' : 'withdrawn') + ' since ' + when(c.since);
      consents.appendChild(item);
    }
    const log = $('print-log');
    while (log.firstChild) log.removeChild(log.firstChild);
    for (const e of all.access_log) {
      const item = document.createElement('li');
      item.textContent = when(e.at) + ': ' + e.actor + ', ' + e.action.replace(/_/g, ' ') + (e.purpose ? ' for ' + e.purpose : '');
      log.appendChild(item);
    }
    view('print-view');
    say('Printable export ready.');
  }

  // Erasure (Art. 17): confirmed by typing the id again.

  function eraseStart() {
    show('erase-confirm', true);
    $('erase-id').value = '';
    $('erase-id').focus();
  }

  function eraseConfirm(event) {
    event.preventDefault();
    once(() => eraseNow());
  }

  async function eraseNow() {
    // Compared as the vault compares ids: in NFC.
    if ($('erase-id').value.normalize('NFC') !== current.subject.normalize('NFC')) {
      say('The id typed again does not match: nothing was erased.', true);
      return;
    }
    try {
      receipt = await api('POST', '/v1/subjects/erase', { subject: current.subject });
    } catch (error) {
      say('Erasure failed: ' + error.message, true);
      return;
    }
    $('erase-id').value = '';
    show('erase-confirm', false);
    const fields = $('receipt-fields');
    while (fields.firstChild) fields.removeChild(fields.firstChild);
    const purgeAt = receipt.purge.at || receipt.purge.due_by;
    const purge = receipt.purge.state + (purgeAt ? ' (' + when(purgeAt) + ')' : '');
    const rows = [
      ['Subject reference', receipt.subject_ref || 'none'],
      ['Erased at', when(receipt.erased_at)],
      ['Records', String(receipt.records)],
      ['Purge', purge.replace(/_/g, ' ')],
      ['Audit event', receipt.audit_event == null ? '-' : String(receipt.audit_event)],
      ['Backups still holding it', receipt.backups.length ? receipt.backups.join(', ') : 'none'],
    ];
    for (const [name, value] of rows) {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = value;
      fields.append(dt, dd);
    }
    await load(current.subject);
    show('receipt', true);
    $('receipt').querySelector('h3').tabIndex = -1;
    $('receipt').querySelector('h3').focus();
    say('Erased. The receipt is below.');
  }

  function receiptDownload() {
    download('erasure-' + (receipt.subject_ref || 'none') + '.json', receipt);
  }

  // The audit trail.

  async function auditRefresh() {
    try {
      const head = await api('GET', '/v1/audit/head');
      $('audit-head').textContent = head.seq === null
        ? 'The trail is empty.'
        : 'Head: event ' + head.seq + ', MAC ' + head.mac;
      // The latest 50: those after head - 50 (sequence numbers start at 0).
      const path = head.seq !== null && head.seq >= 50
        ? '/v1/audit?limit=50&after=' + (head.seq - 50)
        : '/v1/audit?limit=50';
      const events = (await api('GET', path)).events.reverse();
      renderLog(events, $('audit-events').tBodies[0], 'audit-empty', true);
      say('Showing the latest ' + events.length + ' events.');
    } catch (error) {
      say('Reading the trail failed: ' + error.message, true);
    }
  }

  async function auditVerify() {
    try {
      const check = await api('POST', '/v1/audit/verify');
      $('audit-check').textContent = check.ok
        ? 'The trail verifies: ' + check.events + ' events, chain and checkpoint intact.'
        : 'The trail does NOT verify: ' + (check.problem || 'damaged') + ' at event ' + check.first_bad + '.';
      say('Verified.');
    } catch (error) {
      say('Verification failed: ' + error.message, true);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('sign-in-form').addEventListener('submit', signIn);
    $('sign-out').addEventListener('click', signOut);
    for (const b of document.querySelectorAll('#nav button')) {
      b.addEventListener('click', () => view(b.dataset.view));
    }
    $('lookup-form').addEventListener('submit', lookUp);
    $('consent-form').addEventListener('submit', recordConsent);
    $('export-json').addEventListener('click', exportJson);
    $('export-print').addEventListener('click', exportPrint);
    $('erase-start').addEventListener('click', eraseStart);
    $('erase-cancel').addEventListener('click', () => show('erase-confirm', false));
    $('erase-form').addEventListener('submit', eraseConfirm);
    $('receipt-download').addEventListener('click', receiptDownload);
    $('audit-refresh').addEventListener('click', auditRefresh);
    $('audit-verify').addEventListener('click', auditVerify);
    $('print-now').addEventListener('click', () => {
      document.body.classList.add('printing');
      window.print();
    });
    window.addEventListener('afterprint', () => document.body.classList.remove('printing'));
    // A page restored from the back-forward cache would come back signed in.
    window.addEventListener('pagehide', () => {
      key = null;
      forget();
    });
    $('subject-id').addEventListener('input', () => {
      if (current && $('subject-id').value !== current.subject) forget();
    });
    $('print-close').addEventListener('click', () => view('subject-view'));
    $('api-key').focus();
  });
})();
