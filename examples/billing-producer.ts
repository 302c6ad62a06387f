// A billing service hands invoices to streamgate: one producer job per invoice, the invoice number
// as the job id (the idempotency key), so that a retry after a crash never mails an invoice twice.
//
//   node examples/billing-producer.ts INVOICE:EMAIL...
//   STREAMGATE_REDIS=redis://127.0.0.1:6379 node examples/billing-producer.ts 1001:anne@example.com
//
// Prints one JSON line per invoice: the queued copies, or the failure and whether it was refused
// (refused: fix the job; not refused: send the same id again later). Exits 1 when one failed.
// STREAMGATE_REDIS is the gateway's events.redis (default its first redis.nodes entry);
// STREAMGATE_SUBMIT_QUEUE its events.producerQueue (default streamgate-submit).
import { connect, SubmitError, type JobResult, type ProducerJob } from '../src/client/index.ts';

export interface Invoice {
  number: string;
  email: string;
  totalCents: number;
}

/** The job for one invoice: the gateway composes the message from these parts. */
export function invoiceJob(invoice: Invoice, from = 'billing@example.com'): ProducerJob {
  return {
    from,
    to: [invoice.email],
    message: {
      subject: `Invoice ${invoice.number}`,
      text: `Your invoice ${invoice.number} totals ${(invoice.totalCents / 100).toFixed(2)} EUR.\n`,
      headers: { 'X-Invoice': invoice.number },
    },
  };
}

export type Outcome = { invoice: string; queued: JobResult['queued'] } | { invoice: string; error: string; refused: boolean };

export async function sendInvoices(redis: string, invoices: Invoice[], submitQueue?: string): Promise<Outcome[]> {
  const client = connect({ connection: redis, ...(submitQueue ? { submitQueue } : {}) });
  try {
    return await Promise.all(
      invoices.map(async (inv): Promise<Outcome> => {
        try {
          const { queued } = await client.submit(invoiceJob(inv), { id: `invoice-${inv.number}`, name: 'invoice' });
          return { invoice: inv.number, queued };
        } catch (err) {
          if (!(err instanceof SubmitError)) throw err;
          return { invoice: inv.number, error: err.reason, refused: err.refused };
        }
      }),
    );
  } finally {
    await client.close();
  }
}

if (import.meta.main) {
  const invoices = process.argv.slice(2).map((arg, i) => {
    const [number, email] = arg.split(':');
    return { number: number!, email: email ?? '', totalCents: 1000 * (i + 1) };
  });
  const outcomes = await sendInvoices(process.env.STREAMGATE_REDIS ?? 'redis://127.0.0.1:6379', invoices, process.env.STREAMGATE_SUBMIT_QUEUE);
  for (const o of outcomes) console.log(JSON.stringify(o));
  process.exitCode = outcomes.every((o) => 'queued' in o) ? 0 : 1;
}
