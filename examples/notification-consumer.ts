// A notification service follows streamgate's lifecycle events and tells senders what became of
// their mail: delivered, bounced, or given up after the maximum lifetime.
//
//   STREAMGATE_REDIS=redis://127.0.0.1:6379 node examples/notification-consumer.ts [--count N]
//
// Prints one JSON line per notification and, with --count, stops after N of them. Events come at
// least once: a notification is sent once per event id (kept here in memory; a real service keeps
// the ids it handled with the notification, in one transaction). STREAMGATE_REDIS is the gateway's
// events.redis; STREAMGATE_EVENTS_QUEUE its events.queue (default streamgate-events).
import { connect, type EventOfKind } from '../src/client/index.ts';

export type Final = EventOfKind<'delivered' | 'bounced' | 'expired'>;

export interface Notification {
  event: string;
  messageId: string;
  outcome: Final['kind'];
  recipients: { rcpt: string; status: string; reply: string | null }[];
}

/** What one final event tells the sender. */
export function notificationOf(ev: Final): Notification {
  return {
    event: ev.id,
    messageId: ev.messageId,
    outcome: ev.kind,
    recipients: ev.details.recipients.map((r) => ({ rcpt: r.rcpt, status: r.status, reply: r.text })),
  };
}

export function follow(redis: string, notify: (n: Notification) => void | Promise<void>, eventsQueue?: string) {
  const client = connect({ connection: redis, ...(eventsQueue ? { eventsQueue } : {}) });
  const seen = new Set<string>();
  client.onEvent(
    async (ev) => {
      if (seen.has(ev.id)) return; // sent again after a crash: already notified
      await notify(notificationOf(ev));
      seen.add(ev.id);
    },
    { kinds: ['delivered', 'bounced', 'expired'] },
  );
  return client;
}

if (import.meta.main) {
  const i = process.argv.indexOf('--count');
  const count = i > 0 ? Number(process.argv[i + 1]) : Infinity;
  let n = 0;
  const client = follow(process.env.STREAMGATE_REDIS ?? 'redis://127.0.0.1:6379', (note) => {
    console.log(JSON.stringify(note));
    if (++n >= count) void client.close();
  }, process.env.STREAMGATE_EVENTS_QUEUE);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void client.close());
}
