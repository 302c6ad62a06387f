// A time limit on one reply from a node that a stall of this process cannot trip. After the event
// loop was blocked (a long GC, a synchronous burst), timers run before the sockets are read, so a
// plain timer would call a reply late that is already waiting in the socket, and a node that had
// no chance to be heard would be called dead. So: a timer that fires late (this process was
// stalled) starts the node's time again; one that fires on time gives its verdict only in the next
// check phase, after the poll phase has read every socket that has data; a reply found there wins.
// The client's own command timeout (a multiple of this limit) stays as the backstop.
export class DeadlineError extends Error {
  override name = 'DeadlineError';
}

/** How late a timer may fire before it counts as a stall of this process, not of the node. */
const STALL_SLACK_MS = 50;

export function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let done = false;
    let timer: NodeJS.Timeout;
    const arm = () => {
      const due = performance.now() + ms;
      timer = setTimeout(() => {
        if (performance.now() - due > Math.max(STALL_SLACK_MS, ms / 4)) return arm(); // we were stalled: the node gets its time again
        setImmediate(() => {
          if (done) return;
          done = true;
          reject(new DeadlineError(`${what}: no reply within ${ms} ms`));
        });
      }, ms);
    };
    arm();
    work.then(
      (v) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}
