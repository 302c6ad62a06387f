// The root pino logger. Components take child loggers ({component} → {session} → {queue, messageId});
// message text is a short fixed phrase and details go in fields. Bodies and secrets are redacted.
import { pino, type Logger } from 'pino';

export type { Logger };

// Exact paths only: pino's wildcard paths cost time on every line.
export const REDACT = [
  'password',
  'pass',
  'passwordHash',
  'auth.password',
  'auth.credentials',
  'raw',
  'body',
  'tokens',
  'authorization',
  'req.headers.authorization',
  'config.ops.tokens',
];

export interface LogOptions {
  level?: string;
  pretty?: 'auto' | 'always' | 'never';
  destination?: NodeJS.WritableStream;
}

export function createLogger(opts: LogOptions = {}): Logger {
  const pretty = opts.pretty === 'always' || (opts.pretty !== 'never' && !opts.destination && process.stdout.isTTY);
  const options = {
    level: opts.level ?? 'info',
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (pretty) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' } } });
  }
  return opts.destination ? pino(options, opts.destination as pino.DestinationStream) : pino(options);
}

/** A logger that writes nothing: for tests and library use. */
export const silentLogger: Logger = pino({ level: 'silent' });
