// A queue manager in a process of its own, driven over IPC by a test: { op: 'append' | 'take' |
// 'settle', ... } in, { ok, value } or { ok: false, code, message } out. Its configuration comes
// in STREAMGATE_TEST_CONFIG (JSON), its gateway id in STREAMGATE_TEST_GATEWAY.
import { silentLogger } from '../../src/log.ts';
import { QueueManager } from '../../src/queue/manager.ts';
import { testConfig } from './config.ts';

const qm = new QueueManager(testConfig(JSON.parse(process.env.STREAMGATE_TEST_CONFIG!) as Record<string, unknown>), silentLogger, { gatewayId: process.env.STREAMGATE_TEST_GATEWAY! });
let fenced: string | undefined;
qm.on('fenced', (reason: string) => (fenced = reason));

type Req = { n: number; op: 'append'; domain: string; id: string } | { n: number; op: 'take'; domain: string; max: number } | { n: number; op: 'settle'; domain: string; id: string } | { n: number; op: 'fenced' };

process.on('message', (req: Req) => {
  const run = async (): Promise<unknown> => {
    switch (req.op) {
      case 'append':
        return qm.append({ id: req.id, domain: req.domain, envelope: { from: 'a@src.test', to: [`b@${req.domain}`] }, raw: Buffer.from(`Subject: ${req.id}\r\n\r\nx\r\n`) });
      case 'take':
        return (await qm.take(req.domain, req.max)).map((m) => m.id);
      case 'settle':
        return qm.settle(req.domain, req.id, 'delivered');
      case 'fenced':
        return fenced ?? null;
    }
  };
  run().then(
    (value) => process.send!({ n: req.n, ok: true, value }),
    (err: { code?: string; message?: string }) => process.send!({ n: req.n, ok: false, code: err.code, message: err.message }),
  );
});

try {
  await qm.start();
  process.send!({ n: 0, ok: true, value: 'started' });
} catch (err) {
  process.send!({ n: 0, ok: false, code: (err as { code?: string }).code, message: (err as Error).message });
  process.exit(1);
}
