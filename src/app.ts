// The composition root: creates the clients, wires the parts and owns their lifecycle. Parts are
// started in order and stopped in reverse; a failure while starting stops what was started.
import type { Config } from './config/schema.ts';
import type { Logger } from './log.ts';
import { QueueManager } from './queue/manager.ts';

export interface Gateway {
  queues: QueueManager;
  stop(): Promise<void>;
}

export interface Part {
  name: string;
  stop(): Promise<void>;
}

export async function startGateway(config: Config, log: Logger): Promise<Gateway> {
  const parts: Part[] = [];
  const stopAll = async () => {
    for (const p of parts.reverse()) {
      await p.stop().catch((err: unknown) => log.error({ err, part: p.name }, 'stop failed'));
    }
  };
  try {
    const queues = new QueueManager(config, log);
    await queues.start();
    parts.push({ name: 'queue', stop: () => queues.stop() });
    log.info({ gateway: config.gateway.id, nodes: queues.nodes.map((n) => n.id), queues: queues.queues.size }, 'queues ready');

    // -- mailbox (src/mailbox, src/pop3) is wired here --

    // -- relay (src/relay) is wired here --

    // -- SMTP ingress (src/ingress) is wired here --

    return { queues, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
