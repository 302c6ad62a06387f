import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config/load.ts';

const DIR = join(import.meta.dirname, '..', '..', 'compose');

describe('compose deployment', () => {
  it('docker-compose config -q accepts it', () => {
    const r = spawnSync('docker-compose', ['-f', join(DIR, 'docker-compose.yml'), 'config', '-q'], { encoding: 'utf8' });
    if (r.error) assert.fail(`docker-compose not runnable: ${r.error.message} (apt-get install docker-compose)`);
    assert.equal(r.status, 0, r.stderr);
  });

  it('describes two gateways, three Redis nodes, an events Redis and three Cassandra nodes with health checks and volumes', () => {
    const r = spawnSync('docker-compose', ['-f', join(DIR, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const doc = parse(r.stdout) as { services: Record<string, { healthcheck?: unknown; volumes?: unknown[]; environment?: Record<string, string> }> };
    const names = Object.keys(doc.services).sort();
    assert.deepEqual(names, ['cassandra-1', 'cassandra-2', 'cassandra-3', 'gateway-1', 'gateway-2', 'redis-a', 'redis-b', 'redis-c', 'redis-events']);
    for (const [name, s] of Object.entries(doc.services)) {
      assert.ok(s.healthcheck, `${name} has a health check`);
      assert.ok(s.volumes?.length, `${name} has a volume`);
    }
    assert.notEqual(doc.services['gateway-1']!.environment!.STREAMGATE_GATEWAY__ID, doc.services['gateway-2']!.environment!.STREAMGATE_GATEWAY__ID);
  });

  it('the mounted configuration is valid', () => {
    const { config } = loadConfig({ path: join(DIR, 'streamgate.yaml'), env: { STREAMGATE_GATEWAY__ID: 'gw1' } });
    assert.equal(config.redis.nodes.length, 3);
    assert.equal(config.cassandra.contactPoints.length, 3);
  });
});
