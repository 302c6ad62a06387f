/// <reference lib="dom" />
// The dashboard page in a real browser (Debian's chromium through puppeteer-core) against a whole
// gateway: it loads with no console error, shows the API's numbers, shows a message sent over SMTP
// in its rates, suspends and resumes a destination from its buttons (the relay's behaviour
// changes), and finds a message and its story.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import type { Page } from 'puppeteer-core';
import { startBrowser, type TestBrowser } from '../helpers/browser.ts';
import { startTestGateway, type TestGateway } from '../helpers/gateway.ts';
import { freePort, waitFor } from '../helpers/waitFor.ts';

const TOKEN = 'dashboard-token-0123456789';
const D = 'remote.test';

describe('the dashboard page in a browser', () => {
  let t: TestGateway;
  let b: TestBrowser;
  let page: Page;
  let base: string;
  const api = async (path: string, init: RequestInit = {}) => {
    const res = await fetch(base + path, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...(init.body ? { 'content-type': 'application/json' } : {}) } });
    return (await res.json()) as Record<string, unknown>;
  };
  const send = async (to: string, subject: string) => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.config.smtp.listen.port, secure: false, ignoreTLS: true });
    try {
      return await transport.sendMail({ envelope: { from: 'alice@src.test', to: [to] }, raw: `Subject: ${subject}\r\n\r\nhello\r\n` });
    } finally {
      transport.close();
    }
  };
  const text = (sel: string) => page.$eval(sel, (el) => el.textContent ?? '').catch(() => '');
  const cell = (domain: string, col: string) => text(`#dests tr[data-key="${domain}"] td[data-col="${col}"]`);

  before(async () => {
    t = await startTestGateway('dash', { domain: 'dash.test', hostname: 'mx.dash.test', overrides: { ops: { listen: `127.0.0.1:${await freePort()}`, tokens: [TOKEN] } } });
    base = `http://127.0.0.1:${t.config.ops.listen.port}`;
    b = await startBrowser();
    page = await b.page();
  });
  after(async () => {
    await b?.close();
    await t?.stop();
  });

  it('asks for the token once, then loads with no console error and goes live', async () => {
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.waitForSelector('#login:not(.hidden)');
    await page.type('#token', TOKEN);
    await page.click('#login-go');
    await page.waitForFunction(() => document.querySelector('#health')?.textContent === 'ok');
    // asked once: a reload goes live without asking again
    await page.reload({ waitUntil: 'load' });
    await page.waitForFunction(() => document.querySelector('#health')?.textContent === 'ok');
    assert.equal(await page.$eval('#login', (el) => el.classList.contains('hidden')), true);
    assert.deepEqual(b.problems, []);
  });

  it('shows a message sent over SMTP in the rates within 2 s, and the same numbers as the API', async () => {
    const before = Number(await text('#sum-accepted'));
    const info = await send(`bob@${D}`, 'rate');
    assert.match(info.response, /^250/);
    await page.waitForFunction((n) => Number(document.querySelector('#sum-accepted')?.textContent) > n, { timeout: 2000 }, before);
    await waitFor(() => t.sink.messages.length >= 1, { what: 'delivered' });
    await page.waitForFunction(() => Number(document.querySelector('#sum-delivered')?.textContent) >= 1);

    // suspended through the API, so that the numbers hold still while they are compared
    await api(`/api/queues/${D}/suspend`, { method: 'POST', body: JSON.stringify({ reason: 'compare' }) });
    for (let i = 0; i < 3; i++) await send(`r${i}@${D}`, `held still ${i}`);
    const q = (await api(`/api/queues/${D}`)) as { depth: { ready: number; deferred: number; held: number; inflight: number } };
    const totals = ((await api('/api/queues')) as { totals: Record<string, number> }).totals;
    assert.equal(q.depth.ready, 3);
    await waitFor(async () => (await cell(D, 'ready')) === '3', { what: 'the page shows 3 ready' });
    assert.equal(await cell(D, 'deferred'), String(q.depth.deferred));
    assert.equal(await cell(D, 'held'), String(q.depth.held));
    assert.equal(await cell(D, 'inflight'), String(q.depth.inflight));
    for (const k of ['queues', 'ready', 'deferred', 'held', 'inflight']) assert.equal(await text(`#t-${k}`), String(totals[k]), k);
    assert.match(await cell(D, 'relay'), /suspended \(operator\)/);
    await api(`/api/queues/${D}/resume`, { method: 'POST', body: JSON.stringify({ reason: 'compare done' }) });
    await waitFor(() => t.sink.messages.length >= 4, { what: 'the three delivered after resume' });
    assert.deepEqual(b.problems, []);
  });

  it("suspends and resumes a destination from its buttons, and the relay follows", async () => {
    await waitFor(async () => (await cell(D, 'relay')) === 'flowing', { what: 'flowing' });
    await page.click(`#dests button[data-act="suspend"][data-domain="${D}"]`);
    await waitFor(async () => ((await api('/api/suspended')) as { suspended: { domain: string; actor: string }[] }).suspended.some((s) => s.domain === D && s.actor === 'dashboard'), { what: 'suspended through the page' });
    const delivered = t.sink.messages.length;
    await send(`late@${D}`, 'while suspended');
    await waitFor(async () => (await cell(D, 'ready')) === '1' && /suspended \(operator\)/.test(await cell(D, 'relay')), { what: 'the page shows it waiting' });
    assert.equal(t.sink.messages.length, delivered, 'nothing delivered while suspended');
    await page.click(`#dests button[data-act="resume"][data-domain="${D}"]`);
    await waitFor(() => t.sink.messages.length === delivered + 1, { what: 'delivered after resume from the page' });
    await waitFor(async () => (await cell(D, 'relay')) === 'flowing', { what: 'flowing again' });
    assert.deepEqual(b.problems, []);
  });

  it('finds a message by recipient and shows its story; hold and release from the story', async () => {
    await api(`/api/queues/${D}/suspend`, { method: 'POST', body: JSON.stringify({ reason: 'story' }) });
    const info = await send(`carol@${D}`, 'story');
    const id = /queued as (\S+)/.exec(info.response)?.[1] ?? '';
    await page.$eval('#search', (el) => ((el as HTMLInputElement).value = ''));
    await page.type('#search', `carol@${D}`);
    await page.click('#search-go');
    await page.waitForSelector(`#results a[data-id="${id}"]`);
    await page.waitForFunction(() => !document.querySelector('#story')?.classList.contains('hidden'));
    assert.equal(await text('#story-title'), `${id} → ${D}`);
    assert.deepEqual(await page.$$eval('#story-events tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.kind)), ['accepted']);
    await page.click('#story button[data-verb="hold"]');
    await page.waitForFunction(() => /held/.test(document.querySelector('#story-live')?.textContent ?? ''));
    const story = (await api(`/api/queues/${D}/messages/${id}`)) as { live: { state: string } };
    assert.equal(story.live.state, 'held');
    await page.click('#story button[data-verb="release"]');
    await page.waitForFunction(() => document.querySelectorAll('#story-events tr[data-kind="released"]').length === 1);
    await api(`/api/queues/${D}/resume`, { method: 'POST', body: JSON.stringify({ reason: 'story done' }) });
    await waitFor(() => t.sink.messages.some((m) => m.raw.toString().includes('Subject: story')), { what: 'delivered' });
    // by id too, and the story now ends in its delivery
    await page.$eval('#search', (el) => ((el as HTMLInputElement).value = ''));
    await page.type('#search', id);
    await page.click('#search-go');
    await page.waitForFunction(() => document.querySelectorAll('#story-events tr[data-kind="delivered"]').length === 1);
    assert.deepEqual(await page.$$eval('#story-events tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.kind)), ['accepted', 'held', 'released', 'attempted', 'delivered']);
    assert.deepEqual(b.problems, []);
  });

  it('stays usable at 1,000 queues: draws the first 100 by the chosen order, the filter finds any', async () => {
    const later = Date.now() + 3_600_000; // not due for an hour: the relay leaves them be
    for (let i = 0; i < 1000; i++) await t.gw.queues.append({ id: `many${i}`, domain: `d${i}.many.test`, envelope: { from: 'a@src.test', to: [`x@d${i}.many.test`] }, raw: Buffer.from('Subject: many\r\n\r\nhi\r\n'), notBefore: later });
    await page.waitForFunction(() => Number(document.querySelector('#t-queues')?.textContent) >= 1001, { timeout: 30_000 });
    await waitFor(async () => /^showing 100 of 100[1-9]$/.test(await text('#shown')), { what: 'top 100 shown' });
    assert.equal(await page.$$eval('#dests tbody tr', (rows) => rows.length), 100);
    await page.type('#filter', 'd777.many');
    await waitFor(async () => (await page.$$eval('#dests tbody tr', (rows) => rows.length)) === 1, { what: 'filtered to one' });
    assert.equal(await cell('d777.many.test', 'deferred'), '1');
    // still live: the next frames keep coming
    const clock = await text('#clock');
    await waitFor(async () => (await text('#clock')) !== clock, { what: 'a later frame' });
    await page.$eval('#filter', (el) => ((el as HTMLInputElement).value = ''));
    assert.deepEqual(b.problems, []);
  });
});
