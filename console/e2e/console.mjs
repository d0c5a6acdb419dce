// Browser side of telegate's console end-to-end test.
//
//   node console.mjs PHASE
//
// Drives Debian's Chromium (playwright-core, no browser download) against a running
// `telegate serve --console-listen ...` and writes what the page showed to $OUT_DIR/PHASE.json,
// so the Rust test that runs this script can check the page against what it put in Kafka.
// Exit code 0: every assertion held. Exit code 1: the first failed assertion is on stderr, and
// $OUT_DIR/PHASE.json holds {"ok":false,"error":...} plus $OUT_DIR/PHASE-failure.{png,html}.
//
// Environment: CONSOLE_URL (https://127.0.0.1:PORT), OFFICER_TOKEN, VIEWER_TOKEN, VIN,
// CHROMIUM (default /usr/bin/chromium), OUT_DIR, and per phase: PURPOSE, GRANTED, ON, REASON,
// KIND, SETTINGS, SHOT_DIR. PHASE_TIMEOUT_S bounds a whole phase (default 120).

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { AxeBuilder } from '@axe-core/playwright';

const STEP_TIMEOUT_MS = 15_000;
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const OFFICER_FORMS = ['consent', 'objection', 'activation', 'export', 'erase'];

// ---------------------------------------------------------------- small helpers

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== '') return v;
  if (fallback !== undefined) return fallback;
  fail(`environment variable ${name} is required for this phase`);
}

function envBool(name) {
  const v = env(name);
  check(v === 'true' || v === 'false', `${name} must be "true" or "false", got ${JSON.stringify(v)}`);
  return v;
}

const BASE = () => env('CONSOLE_URL').replace(/\/+$/, '');
const at = (p) => new URL(p, BASE() + '/').toString();
const pathOf = (u) => new URL(u).pathname;
const show = (v) => JSON.stringify(v);

// What a phase observed so far; written to $OUT_DIR/PHASE.json whatever happens.
const observed = { phase: null, ok: false };

// ---------------------------------------------------------------- browser

// One headless Chromium with a fresh, empty profile (playwright's launch() makes a new temporary
// --user-data-dir and removes it on close), one context that accepts the test's self-signed
// certificate, one page with 15 s timeouts. Every dialog is dismissed and recorded, every
// main-frame URL is recorded (to prove the VIN never travels in one).
async function launch() {
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 30_000,
  });
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    acceptDownloads: true,
    viewport: { width: 1280, height: 900 },
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  const state = { dialogs: [], urls: [], pageErrors: [], consoleErrors: [] };
  page.on('dialog', (d) => {
    state.dialogs.push({ type: d.type(), message: d.message() });
    d.dismiss().catch(() => {});
  });
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) state.urls.push(r.url());
  });
  page.on('pageerror', (e) => state.pageErrors.push(String(e.message || e)));
  page.on('console', (m) => {
    if (m.type() === 'error') state.consoleErrors.push(m.text());
  });
  observed.dialogs = state.dialogs;
  observed.pageErrors = state.pageErrors;
  observed.consoleErrors = state.consoleErrors;
  return { browser, context, page, state };
}

// Clicks the named submit button of a form and waits for the main-frame navigation it starts to
// settle (redirects followed); returns the final response (status, url).
async function submit(page, formSel, buttonName) {
  const form = page.locator(formSel);
  check((await form.count()) === 1, `expected exactly one ${formSel} on ${page.url()}`);
  const button = form.getByRole('button', { name: buttonName, exact: true });
  check((await button.count()) === 1, `${formSel} has no button named ${show(buttonName)} on ${page.url()}`);
  const settled = page.waitForResponse(
    (r) =>
      r.request().isNavigationRequest() &&
      r.request().frame() === page.mainFrame() &&
      !(r.status() >= 300 && r.status() < 400),
  );
  await button.click();
  const response = await settled;
  await page.waitForLoadState('domcontentloaded');
  return response;
}

async function goto(page, p) {
  const response = await page.goto(at(p), { waitUntil: 'domcontentloaded' });
  check(response, `no response for GET ${p}`);
  return response;
}

// Selects VALUE in FORM's select[name=NAME], failing at once (not after a timeout) with the
// options the page offers when VALUE is not among them.
async function choose(page, formSel, name, value) {
  const select = page.locator(`${formSel} select[name="${name}"]`);
  check((await select.count()) === 1, `${formSel} has no select[name=${name}]`);
  const options = await select.locator('option').evaluateAll((os) =>
    os.map((o) => ({ value: o.value, label: o.textContent.trim() })),
  );
  check(
    options.some((o) => o.value === value || o.label === value),
    `${formSel} select[name=${name}] has no option ${show(value)}; it offers ${show(options)}`,
  );
  await select.selectOption(value);
}

async function fillIn(page, formSel, name, value) {
  const input = page.locator(`${formSel} [name="${name}"]`).first();
  check((await input.count()) === 1, `${formSel} has no input[name=${name}]`);
  await input.fill(value);
}

async function text(page, sel) {
  const l = page.locator(sel);
  return (await l.count()) ? ((await l.first().textContent()) ?? '').trim() : null;
}

async function signIn(page, token) {
  await goto(page, '/sign-in');
  await page.locator('form#sign-in input#token').fill(token);
  const response = await submit(page, 'form#sign-in', 'Sign in');
  check(
    response.status() === 200 && pathOf(page.url()) === '/',
    `signing in should land on / with 200, got ${response.status()} at ${page.url()}` +
      ((await text(page, '#error')) ? ` (#error: ${await text(page, '#error')})` : ''),
  );
  const who = await text(page, '#who');
  check(who, 'signed in, but the page has no #who');
  observed.who = who;
  return who;
}

// Opens the vehicle through form#open-vehicle; the VIN must appear in no URL the page visited.
async function openVehicle(page, state, vin) {
  await goto(page, '/');
  await page.locator('form#open-vehicle input#vin').fill(vin);
  const response = await submit(page, 'form#open-vehicle', 'Open');
  check(
    response.status() === 200 && /^\/vehicles\/[^/]+$/.test(pathOf(page.url())),
    `opening the vehicle should land on /vehicles/{handle} with 200, got ${response.status()} at ${page.url()}` +
      ((await text(page, '#error')) ? ` (#error: ${await text(page, '#error')})` : ''),
  );
  const leaked = state.urls.filter((u) => decodeURIComponent(u).toUpperCase().includes(vin.toUpperCase()));
  check(leaked.length === 0, `the VIN appears in a URL: ${show(leaked)}`);
  const shown = await text(page, 'code#vin');
  check(shown === vin, `the vehicle page should show code#vin ${show(vin)}, shows ${show(shown)}`);
  observed.vehicleUrl = page.url();
  return page.url();
}

async function timelineRows(page) {
  return page.locator('table#timeline tbody tr').evaluateAll((rows) =>
    rows
      .filter((r) => r.querySelector('td.action'))
      .map((r) => {
        const cell = (c) => {
          const td = r.querySelector(`td.${c}`);
          return td ? td.textContent.trim() : null;
        };
        return {
          recorded: cell('recorded'),
          action: cell('action'),
          target: cell('target'),
          value: cell('value'),
          channel: cell('channel'),
          actor: cell('actor'),
          reason: cell('reason'),
        };
      }),
  );
}

async function newestRow(page) {
  const rows = await timelineRows(page);
  check(rows.length > 0, `the timeline on ${page.url()} has no rows`);
  return rows[0];
}

function checkRow(row, want) {
  for (const [k, v] of Object.entries(want)) {
    check(row[k] === v, `newest timeline row: ${k} should be ${show(v)}, is ${show(row[k])}; row ${show(row)}`);
  }
}

async function waitForFlash(page) {
  const flash = page.locator('p#flash');
  await flash.waitFor({ state: 'visible' }).catch(() => {});
  check((await flash.count()) === 1, `no p#flash after the action on ${page.url()}`);
  return ((await flash.textContent()) ?? '').trim();
}

// Markup a reason (or anything else the server echoes) must never turn into.
async function injectedElements(page) {
  return page.evaluate(() => {
    const found = [];
    if (document.querySelector('#injected')) found.push('#injected');
    const bad = 'img, script, iframe, object, embed, svg, style, link, form, input, button';
    for (const scope of ['#timeline', '#flash', '#error']) {
      const root = document.querySelector(scope);
      if (!root) continue;
      for (const el of root.querySelectorAll('*')) {
        const on = [...el.attributes].filter((a) => a.name.toLowerCase().startsWith('on')).map((a) => a.name);
        if (el.matches(bad) || on.length) found.push(`${scope} ${el.outerHTML.slice(0, 120)}`);
      }
    }
    return found;
  });
}

async function assertNoInjection(page) {
  const found = await injectedElements(page);
  check(found.length === 0, `the page contains markup that only an injection would create: ${show(found)}`);
}

async function presence(page, selectors) {
  const out = {};
  for (const s of selectors) out[s] = await page.locator(s).count();
  return out;
}

// ---------------------------------------------------------------- phases

const phases = {
  async refused({ page }) {
    const landings = {};
    for (const p of ['/', '/policy', '/flows']) {
      await goto(page, p);
      landings[p] = pathOf(page.url());
      check(landings[p] === '/sign-in', `GET ${p} without a session should land on /sign-in, landed on ${page.url()}`);
    }
    observed.landings = landings;
    check((await page.locator('form#sign-in input#token').count()) === 1, 'the sign-in page has no form#sign-in input#token');
    check(
      (await page.locator('input#token').getAttribute('type')) === 'password',
      'input#token should be type=password',
    );

    // A wrong token.
    await page.locator('input#token').fill('not-a-token-' + Date.now());
    let r = await submit(page, 'form#sign-in', 'Sign in');
    const wrong = { status: r.status(), path: pathOf(page.url()), error: await text(page, 'p#error') };
    observed.wrong = wrong;
    check(wrong.status === 401, `a wrong token should get 401, got ${wrong.status}`);
    check(wrong.error, 'a wrong token should show p#error');
    check((await page.locator('p#error[role="alert"]').count()) === 1, 'p#error should have role=alert');

    // An empty token: if the browser's own validation (required) would stop the form, switch it
    // off so that the server's answer is what gets tested.
    await goto(page, '/sign-in');
    const required = await page.locator('input#token').evaluate((i) => i.required);
    await page.locator('form#sign-in').evaluate((f) => {
      f.noValidate = true;
    });
    await page.locator('input#token').fill('');
    r = await submit(page, 'form#sign-in', 'Sign in');
    const empty = { status: r.status(), path: pathOf(page.url()), error: await text(page, 'p#error'), inputRequired: required };
    observed.empty = empty;
    check(empty.status === 401, `an empty token should get 401, got ${empty.status}`);
    check(empty.error, 'an empty token should show p#error');

    // Still no session.
    await goto(page, '/');
    check(pathOf(page.url()) === '/sign-in', `after refused sign-ins GET / should still land on /sign-in, landed on ${page.url()}`);
  },

  async view({ page, state }) {
    const vin = env('VIN');
    await signIn(page, env('OFFICER_TOKEN'));
    await openVehicle(page, state, vin);
    const data = await page.evaluate(() => {
      const t = (el, sel) => {
        const c = el.querySelector(sel);
        return c ? c.textContent.trim() : null;
      };
      const settings = {};
      for (const r of document.querySelectorAll('section#settings tr[data-setting]')) {
        settings[r.dataset.setting] = t(r, 'td.value');
      }
      const purposes = {};
      for (const r of document.querySelectorAll('section#purposes tr[data-purpose]')) {
        purposes[r.dataset.purpose] = {
          basis: t(r, 'td.basis'),
          active: t(r, 'td.active'),
          topic: t(r, 'td.topic'),
          form: t(r, 'td.form'),
          location: t(r, 'td.location'),
          retention: t(r, 'td.retention'),
        };
      }
      const activations = {};
      for (const r of document.querySelectorAll('section#activations tr[data-feature]')) {
        activations[r.dataset.feature] = t(r, 'td.value');
      }
      return {
        sections: {
          settings: !!document.querySelector('section#settings'),
          purposes: !!document.querySelector('section#purposes'),
          activations: !!document.querySelector('section#activations'),
          contributions: !!document.querySelector('section#contributions'),
          ledger: !!document.querySelector('section#ledger'),
        },
        noSettings: !!document.querySelector('p#no-settings'),
        erased: !!document.querySelector('p#erased'),
        settings,
        purposes,
        activations,
      };
    });
    Object.assign(observed, data);
    observed.ledger = await timelineRows(page);
    observed.officerForms = await presence(page, OFFICER_FORMS.map((f) => `form#${f}`));
    for (const [s, present] of Object.entries(data.sections)) {
      check(present, `the vehicle page has no section#${s}`);
    }
    check(
      data.noSettings || Object.keys(data.settings).length > 0,
      'section#settings has neither tr[data-setting] rows nor p#no-settings',
    );
    for (const [id, p] of Object.entries(data.purposes)) {
      check(/^(yes|no)\b/.test(p.active ?? ''), `purpose ${id}: td.active should start "yes" or "no", is ${show(p.active)}`);
    }
  },

  consent: (ctx) => recordChoice(ctx, 'consent', 'purpose', 'granted', envBool('GRANTED'), 'Save consent'),
  objection: (ctx) => recordChoice(ctx, 'objection', 'purpose', 'on', envBool('ON'), 'Save objection'),
  activation: (ctx) => recordChoice(ctx, 'activation', 'feature', 'active', envBool('ACTIVE'), 'Save activation'),

  async export({ page, state }) {
    const vin = env('VIN');
    const reason = env('REASON');
    const outDir = env('OUT_DIR');
    await signIn(page, env('OFFICER_TOKEN'));
    await openVehicle(page, state, vin);
    const files = {};
    for (const [format, name] of [
      ['readable', 'telegate-export.html'],
      ['json', 'telegate-export.json'],
    ]) {
      await choose(page, 'form#export', 'format', format);
      await fillIn(page, 'form#export', 'reason', reason);
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.locator('form#export').getByRole('button', { name: 'Download export', exact: true }).click(),
      ]);
      const failure = await download.failure();
      check(!failure, `the ${format} export download failed: ${failure}`);
      const target = path.join(outDir, name);
      await download.saveAs(target);
      files[format] = {
        path: target,
        suggestedFilename: download.suggestedFilename(),
        bytes: fs.statSync(target).size,
      };
      check(
        download.suggestedFilename() === name,
        `the ${format} export should be named ${name}, is ${show(download.suggestedFilename())}`,
      );
    }
    observed.files = files;
    const html = fs.readFileSync(files.readable.path, 'utf8');
    check(html.includes(vin), `the readable export does not mention the VIN ${vin}`);
    let doc;
    try {
      doc = JSON.parse(fs.readFileSync(files.json.path, 'utf8'));
    } catch (e) {
      fail(`the json export does not parse: ${e.message}`);
    }
    observed.jsonKeys = doc && typeof doc === 'object' && !Array.isArray(doc) ? Object.keys(doc) : typeof doc;
    await page.reload({ waitUntil: 'domcontentloaded' });
    const rows = await timelineRows(page);
    observed.rows = rows.slice(0, 3);
    const row = await newestRow(page);
    observed.row = row;
    checkRow(row, { action: 'export', channel: 'console', reason });
    await assertNoInjection(page);
  },

  async viewer({ page, state }) {
    const vin = env('VIN');
    await signIn(page, env('VIEWER_TOKEN'));
    const vehicleUrl = await openVehicle(page, state, vin);
    const forms = await presence(page, OFFICER_FORMS.map((f) => `form#${f}`));
    observed.officerForms = forms;
    for (const [sel, n] of Object.entries(forms)) check(n === 0, `a viewer should not see ${sel}`);
    check((await page.locator('section#purposes').count()) === 1, 'a viewer should see section#purposes');
    const csrf = await page.locator('form#sign-out input[name="csrf"]').getAttribute('value');
    check(csrf, 'form#sign-out has no hidden input csrf with a value');
    const r = await page.request.post(`${vehicleUrl}/erase`, {
      form: { csrf, confirm: vin, reason: 'x' },
      maxRedirects: 0,
      timeout: STEP_TIMEOUT_MS,
    });
    observed.erasePost = { url: `${vehicleUrl}/erase`, status: r.status() };
    check(r.status() === 403, `a viewer's POST ${vehicleUrl}/erase (with a valid csrf) should get 403, got ${r.status()}`);
    await page.reload({ waitUntil: 'domcontentloaded' });
    check((await page.locator('p#erased').count()) === 0, "the viewer's refused erase still erased the vehicle");
  },

  async erase({ page, state }) {
    const vin = env('VIN');
    const reason = env('REASON');
    await signIn(page, env('OFFICER_TOKEN'));
    const vehicleUrl = await openVehicle(page, state, vin);
    const countErase = (rows) => rows.filter((r) => r.action === 'erase').length;
    const erasesBefore = countErase(await timelineRows(page));
    check((await page.locator('form#erase p.explain').count()) >= 1, 'form#erase has no p.explain');

    // Without a valid csrf the server must refuse even an officer.
    const action = await page.locator('form#erase').evaluate((f) => f.action);
    const noCsrf = await page.request.post(action, {
      form: { confirm: vin, reason },
      maxRedirects: 0,
      timeout: STEP_TIMEOUT_MS,
    });
    const badCsrf = await page.request.post(action, {
      form: { csrf: 'forged', confirm: vin, reason },
      maxRedirects: 0,
      timeout: STEP_TIMEOUT_MS,
    });
    observed.csrfRefusals = { action, missing: noCsrf.status(), forged: badCsrf.status() };
    check(noCsrf.status() === 403, `an erase POST without csrf should get 403, got ${noCsrf.status()}`);
    check(badCsrf.status() === 403, `an erase POST with a forged csrf should get 403, got ${badCsrf.status()}`);

    // A wrong confirmation: same length and alphabet as the VIN, last character changed.
    const wrong = vin.slice(0, -1) + (vin.endsWith('X') ? 'Y' : 'X');
    await fillIn(page, 'form#erase', 'confirm', wrong);
    await fillIn(page, 'form#erase', 'reason', reason);
    let r = await submit(page, 'form#erase', 'Erase');
    observed.wrongConfirmation = { typed: wrong, status: r.status(), error: await text(page, 'p#error') };
    check(r.status() === 400, `a wrong confirmation should get 400, got ${r.status()} at ${page.url()}`);
    check(observed.wrongConfirmation.error, 'a wrong confirmation should show p#error');

    await page.goto(vehicleUrl, { waitUntil: 'domcontentloaded' });
    check((await page.locator('p#erased').count()) === 0, 'the vehicle shows p#erased after a wrong confirmation');
    check(
      countErase(await timelineRows(page)) === erasesBefore,
      'a wrong confirmation added an erase row to the timeline',
    );

    await fillIn(page, 'form#erase', 'confirm', vin);
    await fillIn(page, 'form#erase', 'reason', reason);
    r = await submit(page, 'form#erase', 'Erase');
    check(r.status() === 200, `erasing should end on the vehicle page with 200, got ${r.status()} at ${page.url()}`);
    observed.flash = await waitForFlash(page);
    check((await page.locator('p#erased').count()) === 1, 'after erasing the vehicle page has no p#erased');
    const row = await newestRow(page);
    observed.row = row;
    checkRow(row, { action: 'erase', channel: 'console' });
    await assertNoInjection(page);
  },

  async policy({ page }) {
    await signIn(page, env('OFFICER_TOKEN'));
    await goto(page, '/policy');
    observed.purposes = await policyPurposes(page);
    check(Object.keys(observed.purposes).length > 0, 'table#policy-purposes has no tr[data-purpose] rows');
    await whatHappens(page, env('KIND'), JSON.parse(env('SETTINGS', '{}')));
    observed.query = new URL(page.url()).search;
    observed.verdicts = await verdicts(page);
    observed.explain = await text(page, 'pre#explain');
    check(Object.keys(observed.verdicts).length > 0, 'after "Show" table#verdicts has no tr[data-purpose] rows');
    for (const [id, v] of Object.entries(observed.verdicts)) {
      check(/^(forward|drop)\b/.test(v ?? ''), `verdict for ${id} should start "forward" or "drop", is ${show(v)}`);
    }
    check(observed.explain !== null, 'after "Show" the page has no pre#explain');
  },

  async flows({ page }) {
    await signIn(page, env('OFFICER_TOKEN'));
    await goto(page, '/flows');
    check((await page.locator('section#flows').count()) === 1, 'the flows page has no section#flows');
    const read = () =>
      page.locator('#flows dl.totals dd[data-metric]').evaluateAll((dds) =>
        Object.fromEntries(dds.map((d) => [d.dataset.metric, d.textContent.trim()])),
      );
    const before = await read();
    observed.before = before;
    observed.figures = await page.locator('section#flows figure').count();
    check(Object.keys(before).length > 0, '#flows dl.totals has no dd[data-metric]');
    const changed = await page
      .waitForFunction(
        (b) =>
          [...document.querySelectorAll('#flows dl.totals dd[data-metric]')].some(
            (d) => d.textContent.trim() !== b[d.dataset.metric],
          ),
        before,
        { timeout: 10_000, polling: 100 },
      )
      .then(() => true)
      .catch(() => false);
    observed.after = await read();
    observed.changed = Object.keys(observed.after).filter((k) => observed.after[k] !== before[k]);
    check(changed, `no dd[data-metric] value changed within 10 s (values ${show(before)})`);
  },

  async axe({ page, state }) {
    const vin = env('VIN');
    const results = {};
    const serious = [];
    const scan = async (name) => {
      const r = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa']).analyze();
      const byImpact = {};
      for (const v of r.violations) byImpact[v.impact ?? 'unknown'] = (byImpact[v.impact ?? 'unknown'] ?? 0) + 1;
      results[name] = {
        url: page.url(),
        violations: r.violations.length,
        byImpact,
        passes: r.passes.length,
        incomplete: r.incomplete.length,
        ids: r.violations.map((v) => `${v.id} (${v.impact})`),
      };
      for (const v of r.violations) {
        if (v.impact === 'serious' || v.impact === 'critical') {
          serious.push(`${name}: ${v.id} (${v.impact}) ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
        }
      }
    };
    await goto(page, '/sign-in');
    await scan('sign-in');
    await signIn(page, env('OFFICER_TOKEN'));
    await scan('home');
    await openVehicle(page, state, vin);
    await scan('vehicle');
    await goto(page, '/policy');
    await scan('policy');
    await whatHappens(page, process.env.KIND || null, JSON.parse(env('SETTINGS', '{}')));
    await scan('policy-verdicts');
    await goto(page, '/flows');
    await scan('flows');
    observed.pages = results;
    check(serious.length === 0, `axe found serious or critical violations:\n  ${serious.join('\n  ')}`);
  },

  async screenshots({ page, state }) {
    const vin = env('VIN');
    const dir = env('SHOT_DIR', env('OUT_DIR'));
    fs.mkdirSync(dir, { recursive: true });
    const shots = [];
    const shoot = async (name) => {
      const file = path.join(dir, `console-${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      shots.push(file);
    };
    await goto(page, '/sign-in');
    await shoot('sign-in');
    await signIn(page, env('OFFICER_TOKEN'));
    await shoot('home');
    await openVehicle(page, state, vin);
    await shoot('vehicle');
    await goto(page, '/policy');
    await whatHappens(page, process.env.KIND || null, JSON.parse(env('SETTINGS', '{}')));
    check((await page.locator('table#verdicts').count()) === 1, 'the policy page shows no table#verdicts after "Show"');
    await shoot('policy');
    await goto(page, '/flows');
    // Give the server-sent events a moment to draw the charts.
    await page.locator('section#flows figure svg').first().waitFor({ state: 'visible' }).catch(() => {});
    await page.waitForTimeout(6000);
    await shoot('flows');
    observed.screenshots = shots;
  },
};

// consent / objection / activation: one form, one purpose (env PURPOSE) or feature (env
// FEATURE), one on/off select, a reason; the newest timeline row must say so, with the reason
// shown as text.
async function recordChoice({ page, state }, action, targetName, flagName, flag, buttonName) {
  const vin = env('VIN');
  const purpose = env(targetName.toUpperCase());
  const reason = env('REASON');
  const form = `form#${action}`;
  await signIn(page, env('OFFICER_TOKEN'));
  const vehicleUrl = await openVehicle(page, state, vin);
  await choose(page, form, targetName, purpose);
  await choose(page, form, flagName, flag);
  await fillIn(page, form, 'reason', reason);
  const r = await submit(page, form, buttonName);
  check(
    r.status() === 200 && pathOf(page.url()) === pathOf(vehicleUrl),
    `saving the ${action} should come back to ${vehicleUrl} with 200, got ${r.status()} at ${page.url()}` +
      ((await text(page, '#error')) ? ` (#error: ${await text(page, '#error')})` : ''),
  );
  observed.flash = await waitForFlash(page);
  const row = await newestRow(page);
  observed.row = row;
  // Let any script an injection would have planted run, then judge injection before the row
  // (an injected reason also fails the row check, less tellingly).
  await page.waitForTimeout(300);
  check(state.dialogs.length === 0, `a dialog fired after saving the ${action}: ${show(state.dialogs)}`);
  await assertNoInjection(page);
  checkRow(row, { action, target: purpose, channel: 'console', reason });
}

async function policyPurposes(page) {
  return page.locator('table#policy-purposes tr[data-purpose]').evaluateAll((rows) =>
    Object.fromEntries(
      rows.map((r) => {
        const t = (c) => (r.querySelector(`td.${c}`)?.textContent ?? null)?.trim() ?? null;
        return [
          r.dataset.purpose,
          { basis: t('basis'), form: t('form'), location: t('location'), retention: t('retention'), cites: t('cites') },
        ];
      }),
    ),
  );
}

async function verdicts(page) {
  return page.locator('table#verdicts tr[data-purpose]').evaluateAll((rows) =>
    Object.fromEntries(rows.map((r) => [r.dataset.purpose, r.querySelector('td.verdict')?.textContent.trim() ?? null])),
  );
}

// Fills form#what-happens: KIND (when given) and the named checkboxes (others keep the page's
// default), then "Show". Records every checkbox's final state.
async function whatHappens(page, kind, settings) {
  const form = 'form#what-happens';
  check((await page.locator(form).count()) === 1, `the policy page has no ${form}`);
  if (kind) await choose(page, form, 'kind', kind);
  for (const [name, on] of Object.entries(settings)) {
    const box = page.locator(`${form} input[type="checkbox"][name="${name}"]`);
    check((await box.count()) === 1, `${form} has no checkbox named ${show(name)}`);
    await box.setChecked(Boolean(on));
  }
  observed.checkboxes = await page
    .locator(`${form} input[type="checkbox"]`)
    .evaluateAll((bs) => Object.fromEntries(bs.map((b) => [b.name, b.checked])));
  observed.kind = await page.locator(`${form} select[name="kind"]`).inputValue();
  const r = await submit(page, form, 'Show');
  check(r.status() === 200, `"Show" should answer 200, got ${r.status()} at ${page.url()}`);
}

// ---------------------------------------------------------------- main

async function main() {
  const phase = process.argv[2];
  if (!phase || !Object.hasOwn(phases, phase)) {
    console.error(`usage: node console.mjs PHASE   (PHASE one of: ${Object.keys(phases).join(', ')})`);
    process.exit(2);
  }
  observed.phase = phase;
  const outDir = process.env.OUT_DIR;
  if (!outDir) {
    console.error('console.mjs: OUT_DIR is required');
    process.exit(2);
  }
  fs.mkdirSync(outDir, { recursive: true });
  const write = () => fs.writeFileSync(path.join(outDir, `${phase}.json`), JSON.stringify(observed, null, 2) + '\n');

  const limitS = Number(process.env.PHASE_TIMEOUT_S || 120);
  const watchdog = setTimeout(() => {
    observed.ok = false;
    observed.error = `phase ${phase} did not finish within ${limitS} s`;
    write();
    console.error(`console.mjs ${phase}: ${observed.error}`);
    process.exit(1);
  }, limitS * 1000);

  let session;
  try {
    session = await launch();
    await phases[phase](session);
    const d = session.state.dialogs;
    check(d.length === 0, `a dialog fired during the phase: ${show(d)}`);
    // A script error, or anything the Content-Security-Policy blocked, fails every phase.
    const errors = session.state.pageErrors;
    check(errors.length === 0, `a script error during the phase: ${show(errors)}`);
    const csp = session.state.consoleErrors.filter((m) => /Content Security Policy|Refused to/i.test(m));
    check(csp.length === 0, `the Content-Security-Policy blocked something: ${show(csp)}`);
    observed.ok = true;
    delete observed.error;
  } catch (e) {
    observed.ok = false;
    observed.error = (e instanceof Failure ? e.message : String(e && e.stack ? e.stack : e)).replace(/\x1b\[[0-9;]*m/g, '');
    if (session) {
      observed.failedAt = session.page.url();
      await session.page.screenshot({ path: path.join(outDir, `${phase}-failure.png`), fullPage: true }).catch(() => {});
      const html = await session.page.content().catch(() => null);
      if (html) fs.writeFileSync(path.join(outDir, `${phase}-failure.html`), html);
    }
  } finally {
    write();
    if (session) await session.browser.close().catch(() => {});
    clearTimeout(watchdog);
  }
  if (!observed.ok) {
    console.error(`console.mjs ${phase}: ${observed.error}`);
    process.exitCode = 1;
  } else {
    console.log(`console.mjs ${phase}: ok`);
  }
}

await main();
