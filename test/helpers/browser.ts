// Debian's chromium (/usr/bin/chromium, installed by `npm test`'s ensureTools), headless, driven by
// puppeteer-core, in a profile of its own that is removed afterwards. Every console error, page
// error and failed request of a page is kept in `problems`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';

export const CHROMIUM = process.env.STREAMGATE_CHROMIUM ?? '/usr/bin/chromium';

export interface TestBrowser {
  browser: Browser;
  /** A new page whose console errors, page errors and failed requests are pushed to `problems`. */
  page(width?: number, height?: number): Promise<Page>;
  problems: string[];
  close(): Promise<void>;
}

export async function startBrowser(): Promise<TestBrowser> {
  const profile = mkdtempSync(join(tmpdir(), 'sg-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', `--user-data-dir=${profile}`],
  });
  const problems: string[] = [];
  return {
    browser,
    problems,
    async page(width = 1400, height = 1000) {
      const page = await browser.newPage();
      await page.setViewport({ width, height });
      page.on('console', (m) => {
        if (m.type() === 'error') problems.push(`console: ${m.text()}`);
      });
      page.on('pageerror', (err) => problems.push(`page error: ${(err as Error).message}`));
      page.on('requestfailed', (r) => {
        // a live stream cut by the page's own navigation or close is not a failure of the page
        if (!r.url().endsWith('/api/live')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`);
      });
      return page;
    },
    async close() {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
