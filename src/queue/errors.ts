// One error type for the queue, with stable codes; script return codes map through one table.
export type QueueErrorCode =
  | 'QUEUE_UNAVAILABLE' // not writable at the configured write concern (ingress: 451 4.3.0)
  | 'STORAGE_FULL' // a node above its memory high-water mark (ingress: 452 4.3.1)
  | 'QUEUE_FULL' // the queue at queue.maxLength (ingress: 452 4.3.1)
  | 'TOO_MANY_QUEUES' // a new destination queue would pass queue.maxQueues (ingress: 452 4.3.1)
  | 'NOT_FOUND' // no such live message
  | 'WRONG_STATE' // e.g. holding a message in flight, releasing one not held
  | 'DIVERGED' // a replica's transaction number differs: it is being resynced
  | 'BAD_INPUT'
  | 'NODE_POLICY' // a node whose maxmemory-policy is not noeviction
  | 'MEMBER_CONFLICT' // the gateway id is held by a live member of the pool
  | 'FENCED' // the queue belongs to a newer owner: this process no longer writes it
  | 'COPY_REFUSED' // a copy would overwrite a replica that went on without its source
  | 'COPY_MISMATCH' // a finished copy does not equal its source
  | 'COPY_ABANDONED'; // the source changed under a copy (left the write set, or a write of unknown outcome)

export class QueueError extends Error {
  override name = 'QueueError';
  readonly code: QueueErrorCode;
  /** An append that reached some replicas but not the write concern: the reply of those that took it. */
  partial?: unknown[];
  constructor(code: QueueErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

export const SCRIPT_CODES: Record<number, QueueErrorCode> = {
  [-1]: 'DIVERGED',
  [-2]: 'NOT_FOUND',
  [-3]: 'WRONG_STATE',
  [-4]: 'QUEUE_FULL',
  [-6]: 'FENCED',
};
