// Waits for an outcome instead of sleeping a guessed time.
import { setTimeout as sleep } from 'node:timers/promises';

export async function waitFor<T>(check: () => T | Promise<T>, opts: { timeout?: number; every?: number; what?: string } = {}): Promise<NonNullable<T>> {
  const timeout = opts.timeout ?? 10_000;
  const deadline = Date.now() + timeout;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`waitFor: ${opts.what ?? 'condition'} not met within ${timeout} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    }
    await sleep(opts.every ?? 20);
  }
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
