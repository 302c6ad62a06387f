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

  it('describes two gateways behind HAProxy, three Redis nodes, an events Redis, three Cassandra nodes, Prometheus and Grafana with health checks and volumes', () => {
    const r = spawnSync('docker-compose', ['-f', join(DIR, 'docker-compose.yml'), 'config'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const doc = parse(r.stdout) as { services: Record<string, { healthcheck?: unknown; volumes?: unknown[]; environment?: Record<string, string> }> };
    const names = Object.keys(doc.services).sort();
    assert.deepEqual(names, ['cassandra-1', 'cassandra-2', 'cassandra-3', 'gateway-1', 'gateway-2', 'grafana', 'haproxy', 'prometheus', 'redis-a', 'redis-b', 'redis-c', 'redis-events']);
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

  it('haproxy -c accepts the balancer, which sends SMTP and submission to every gateway with a PROXY header and checks each on /health', () => {
    const file = join(DIR, 'haproxy', 'haproxy.cfg');
    const r = spawnSync('haproxy', ['-c', '-f', file], { encoding: 'utf8' });
    if (r.error) assert.fail(`haproxy not runnable: ${r.error.message} (apt-get install haproxy)`);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout + r.stderr, /Configuration file is valid/);

    const compose = parse(spawnSync('docker-compose', ['-f', join(DIR, 'docker-compose.yml'), 'config'], { encoding: 'utf8' }).stdout) as {
      services: Record<string, { ports?: ({ target: number; published: string | number } | string)[]; networks?: Record<string, { ipv4_address?: string } | null> }>;
    };
    // docker-compose prints a port as { published, target } or as "host-ip:published:target/tcp"
    const published = (s: string) => (compose.services[s]!.ports ?? []).map((p) => (typeof p === 'string' ? (/(\d+):(\d+)(\/\w+)?$/.exec(p) ?? []).slice(1, 3).map(Number) : [Number(p.published), p.target]));
    const gateways = Object.keys(compose.services).filter((n) => n.startsWith('gateway-')).sort();
    const { config } = loadConfig({ path: join(DIR, 'streamgate.yaml'), env: { STREAMGATE_GATEWAY__ID: 'gw1' } });
    // one backend per balanced listener, a server per gateway on that listener's port
    const cfg = readFileSync(file, 'utf8');
    const backend = (name: string) => cfg.split(/\n(?=\S)/).find((b) => b.startsWith(`backend ${name}\n`)) ?? assert.fail(`backend ${name}`);
    for (const [name, port] of [['gateways-smtp', config.smtp.listen.port], ['gateways-submission', config.submission.listen.port]] as const) {
      const b = backend(name);
      assert.deepEqual([...b.matchAll(/^\s+server (\S+) (\S+)$/gm)].map((m) => [m[1], m[2]]), gateways.map((g) => [g, `${g}:${port}`]), `${name} has every gateway`);
      assert.match(b, /^\s+option httpchk$/m);
      assert.match(b, /^\s+http-check send meth GET uri \/health ver HTTP\/1\.1 hdr Host localhost$/m);
      assert.match(b, /^\s+http-check expect status 200$/m);
      assert.match(b, new RegExp(`^\\s+default-server send-proxy check port ${config.ops.listen.port} `, 'm'));
    }
    // the gateways take the PROXY header from the balancer's address only, and SMTP reaches them through it
    const balancer = compose.services.haproxy!;
    assert.deepEqual(config.smtp.proxyProtocol, [balancer.networks!.default!.ipv4_address]);
    assert.deepEqual(published('haproxy'), [[25, 2525], [587, 2587], [8404, 8404]]);
    for (const g of gateways) {
      const targets = published(g).map((p) => p[1]);
      assert.ok(!targets.includes(config.smtp.listen.port) && !targets.includes(config.submission.listen.port), `${g} publishes no SMTP port of its own`);
    }
  });
});
