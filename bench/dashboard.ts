/// <reference lib="dom" />
// npm run bench:dashboard — the dashboard page under load: the whole gateway (`streamgate start`
// in a process of its own, no Cassandra) takes a steady SMTP load over many destination domains,
// all routed to one SMTP sink that defers the recipients of some domains (451) and refuses a few
// (550), while the page is open in Debian's chromium (puppeteer-core). It prints what the page did
// (frames shown, long tasks of its main thread over 50 ms and their total, the JS heap) and what
// the gateway took, and writes a screenshot of the page to docs/dashboard.png (BENCH_SCREENSHOT).
//
// Knobs (environment):
//   BENCH_RATE (200)        messages offered per second
//   BENCH_DOMAINS (1000)    destination domains (one queue each)
//   BENCH_SECONDS (40)      load time with the page open
//   BENCH_SCREENSHOT (docs/dashboard.png)  where the screenshot goes ("" for none)
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import nodemailer from 'nodemailer';
import { startBrowser } from '../test/helpers/browser.ts';
import { startRedis, startRedisPool } from '../test/helpers/redis.ts';
import { startSmtpSink } from '../test/helpers/smtpSink.ts';
import { startGatewayProcess } from './lib/gatewayProcess.ts';

const ROOT = join(import.meta.dirname, '..');
const env = (k: string, d: string) => process.env[k] ?? d;
const RATE = Number(env('BENCH_RATE', '200'));
const DOMAINS = Number(env('BENCH_DOMAINS', '1000'));
const SECONDS = Number(env('BENCH_SECONDS', '40'));
const SCREENSHOT = env('BENCH_SCREENSHOT', join(ROOT, 'docs', 'dashboard.png'));
const TOKEN = 'dashboard-bench-token-0123456789';

const [pool, events, sink] = await Promise.all([startRedisPool(3, { maxmemory: '256mb' }), startRedis({ maxmemory: '64mb' }), startSmtpSink()]);
// every 7th domain defers its recipients, every 50th refuses them
const domain = (i: number) => `d${String(i).padStart(4, '0')}.dash.test`;
for (let i = 0; i < DOMAINS; i++) {
  if (i % 50 === 3) sink.answer(`user@${domain(i)}`, { code: 550, text: '5.1.1 no such user' });
  else if (i % 7 === 0) sink.answer(`user@${domain(i)}`, { code: 451, text: '4.7.1 greylisted, try later' });
}
const gateway = await startGatewayProcess('dash', {
  poolUrls: pool.map((r) => r.url),
  eventsUrl: events.url,
  token: TOKEN,
  config: {
    routes: { '*.dash.test': `smtp://127.0.0.1:${sink.port}` },
    relay: { limits: { default: { connections: 2, messagesPerConnection: 100 } }, idleTimeout: '1s', retry: { schedule: ['20s', '1m'] } },
  },
});
const { smtpPort, opsPort } = gateway;
const browser = await startBrowser();
try {
  const page = await browser.page(1500, 1700);
  await page.evaluateOnNewDocument((token: string) => {
    sessionStorage.setItem('streamgate-token', token);
    const w = window as unknown as { longTasks: number[] };
    w.longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) w.longTasks.push(e.duration);
    }).observe({ type: 'longtask', buffered: true });
  }, TOKEN);
  await page.goto(`http://127.0.0.1:${opsPort}/`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('#health') !== null);

  const transport = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, ignoreTLS: true, pool: true, maxConnections: 16, maxMessages: 1000 });
  let acked = 0;
  let refused = 0;
  let frames = 0;
  const clock = async () => page.$eval('#clock', (e) => e.textContent ?? '');
  let lastClock = '';
  console.log(`dashboard: ${RATE} msg/s offered over ${DOMAINS} domains for ${SECONDS} s, the page open in chromium`);
  const t0 = Date.now();
  let n = 0;
  while (Date.now() - t0 < SECONDS * 1000) {
    const second = Date.now();
    for (let i = 0; i < RATE; i++, n++) {
      // a few busy domains, a long tail: domain k gets about 1/(k+1) of the mail
      const k = Math.floor(Math.exp(Math.random() * Math.log(DOMAINS + 1))) - 1;
      void transport.sendMail({ envelope: { from: 'load@src.test', to: [`user@${domain(k)}`] }, raw: `Subject: load ${n}\r\n\r\n${'x'.repeat(600)}\r\n` }).then(() => acked++, () => refused++);
    }
    const c = await clock();
    if (c !== lastClock) frames++;
    lastClock = c;
    await sleep(Math.max(0, 1000 - (Date.now() - second)));
  }
  transport.close();
  const stats = await page.evaluate(() => {
    const w = window as unknown as { longTasks: number[] };
    const mem = (performance as unknown as { memory?: { usedJSHeapSize: number } }).memory;
    return { long: w.longTasks.length, longMs: w.longTasks.reduce((a, b) => a + b, 0), longMax: Math.max(0, ...w.longTasks), heap: mem ? mem.usedJSHeapSize : 0, rows: document.querySelectorAll('#dests tbody tr').length, shown: document.querySelector('#shown')?.textContent ?? '' };
  });
  const queues = ((await (await fetch(`http://127.0.0.1:${opsPort}/api/queues`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { totals: { queues: number } }).totals.queues;
  console.log(`gateway: ${acked} acknowledged, ${refused} refused, ${sink.messages.length} delivered to the sink, ${queues} queues`);
  console.log(`page: ${frames} of ${SECONDS} one-second samples saw a new frame; ${stats.rows} destination rows drawn (${stats.shown}); long tasks over 50 ms: ${stats.long}, ${Math.round(stats.longMs)} ms in all, the longest ${Math.round(stats.longMax)} ms; JS heap ${(stats.heap / 1048576).toFixed(1)} MB; console errors: ${browser.problems.length}`);
  for (const p of browser.problems.slice(0, 5)) console.log(`  ${p}`);
  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT as `${string}.png`, fullPage: false });
    console.log(`screenshot: ${SCREENSHOT}`);
  }
} finally {
  await browser.close();
  await gateway.stop();
  await Promise.all([...pool, events].map((r) => r.stop()));
  await sink.close();
}
