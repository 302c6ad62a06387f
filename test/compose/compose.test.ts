import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
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

  it('describes two gateways, three Redis nodes, an events Redis, three Cassandra nodes, Prometheus and Grafana with health checks and volumes', () => {
    const r = spawnSync('docker-compose', ['-f', join(DIR, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const doc = parse(r.stdout) as { services: Record<string, { healthcheck?: unknown; volumes?: unknown[]; environment?: Record<string, string> }> };
    const names = Object.keys(doc.services).sort();
    assert.deepEqual(names, ['cassandra-1', 'cassandra-2', 'cassandra-3', 'gateway-1', 'gateway-2', 'grafana', 'prometheus', 'redis-a', 'redis-b', 'redis-c', 'redis-events']);
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
    assert.ok(config.ops.open.includes('metrics'), 'Prometheus scrapes /metrics without a token');
  });

  it('Prometheus scrapes both gateways on the ops port, and Grafana reads that Prometheus with the dashboard provisioned', () => {
    const prom = parse(readFileSync(join(DIR, 'prometheus', 'prometheus.yml'), 'utf8')) as { scrape_configs: { metrics_path: string; static_configs: { targets: string[] }[] }[] };
    const { config } = loadConfig({ path: join(DIR, 'streamgate.yaml'), env: { STREAMGATE_GATEWAY__ID: 'gw1' } });
    assert.deepEqual(prom.scrape_configs[0]!.static_configs[0]!.targets, [`gateway-1:${config.ops.listen.port}`, `gateway-2:${config.ops.listen.port}`]);
    assert.equal(prom.scrape_configs[0]!.metrics_path, '/metrics');
    const ds = parse(readFileSync(join(DIR, 'grafana', 'provisioning', 'datasources', 'prometheus.yml'), 'utf8')) as { datasources: { uid: string; url: string }[] };
    assert.equal(ds.datasources[0]!.url, 'http://prometheus:9090');
    const dash = JSON.parse(readFileSync(join(DIR, 'grafana', 'dashboards', 'streamgate.json'), 'utf8')) as { panels: { type: string; datasource?: { uid: string }; targets?: { expr: string }[] }[] };
    const panels = dash.panels.filter((p) => p.type !== 'row');
    assert.ok(panels.length >= 10);
    for (const p of panels) assert.equal(p.datasource?.uid, ds.datasources[0]!.uid);
  });
});
