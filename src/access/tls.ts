// The gateway's one TLS key and certificate, for the SMTP listeners and POP3's STLS: the PEM files `tls.key` and `tls.cert` name,
// or else a self-signed pair generated once (npm `selfsigned`: RSA 2048, SHA-256, ten years,
// subject and SAN the gateway's hostname) into `${gateway.dataDir}/tls/` and reused after that.
// A self-signed certificate still gives opportunistic STARTTLS between MTAs (which rarely check
// certificates) and an encrypted submission channel for clients told to accept it.
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import type { Config } from '../config/schema.ts';
import type { Logger } from '../log.ts';

/** A PEM key and certificate. */
export interface TlsPair {
  key: Buffer;
  cert: Buffer;
}

/** The gateway's pair, and where it came from. */
export interface LoadedTls extends TlsPair {
  /** Where they came from: the configured files or the generated pair. */
  source: 'config' | 'generated' | 'created';
  keyPath: string;
  certPath: string;
}

const readIfThere = (path: string) => readFile(path).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));

export async function loadTls(config: Config, log: Logger): Promise<LoadedTls> {
  const { key: keyPath, cert: certPath } = config.tls;
  if (keyPath || certPath) {
    if (!keyPath || !certPath) throw new Error('tls: set both key and cert (PEM files), or neither for a generated self-signed pair');
    const [key, cert] = await Promise.all([readFile(keyPath), readFile(certPath)]);
    return { key, cert, source: 'config', keyPath, certPath };
  }
  const dir = join(config.gateway.dataDir, 'tls');
  const gkey = join(dir, 'key.pem');
  const gcert = join(dir, 'cert.pem');
  const [key, cert] = await Promise.all([readIfThere(gkey), readIfThere(gcert)]);
  if (key && cert) return { key, cert, source: 'generated', keyPath: gkey, certPath: gcert };

  const host = config.gateway.hostname;
  const notBeforeDate = new Date();
  const notAfterDate = new Date(notBeforeDate);
  notAfterDate.setFullYear(notAfterDate.getFullYear() + 10);
  const pems = await generate([{ name: 'commonName', value: host }], {
    keyType: 'rsa',
    keySize: 2048,
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: isIP(host) ? [{ type: 7, ip: host }] : [{ type: 2, value: host }] },
    ],
  });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  // Written under temporary names and renamed, so a concurrent start never reads half a file.
  const tmp = `.${process.pid}.${Date.now()}`;
  await writeFile(gkey + tmp, pems.private, { mode: 0o600 });
  await chmod(gkey + tmp, 0o600);
  await writeFile(gcert + tmp, pems.cert, { mode: 0o644 });
  await rename(gkey + tmp, gkey);
  await rename(gcert + tmp, gcert);
  log.warn({ cert: gcert, fingerprint: pems.fingerprint, host }, 'generated a self-signed TLS certificate; set tls.key and tls.cert for a real one');
  return { key: Buffer.from(pems.private), cert: Buffer.from(pems.cert), source: 'created', keyPath: gkey, certPath: gcert };
}
