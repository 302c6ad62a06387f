// The Prometheus configuration beside the gateways (compose/prometheus/): promtool accepts the
// scrape configuration and the alert rules, and every alert has unit tests (promtool test rules)
// that pass: each fires when its condition holds long enough and not before.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { PROMETHEUS_DIR, alertRules } from '../helpers/prom.ts';

const promtool = (...args: string[]) => {
  const r = spawnSync('promtool', args, { cwd: PROMETHEUS_DIR, encoding: 'utf8' });
  if (r.error) assert.fail(`promtool not runnable: ${r.error.message} (apt-get install prometheus)`);
  return r;
};

describe('Prometheus alert rules', () => {
  it('promtool check config and check rules accept them', () => {
    const c = promtool('check', 'config', 'prometheus.yml');
    assert.equal(c.status, 0, c.stdout + c.stderr);
    const r = promtool('check', 'rules', 'alerts.yml');
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  it('has the alerts the operators need, each with a firing and a quiet unit test', () => {
    const names = alertRules().map((r) => r.alert).sort();
    assert.deepEqual(names, ['StreamgateDeadDestination', 'StreamgateDoorClosed', 'StreamgateEventsArchiveLag', 'StreamgateEventsPublisherLag', 'StreamgateNodeMemoryHigh', 'StreamgateOldestMessageTooOld', 'StreamgateReplicaNotInSync']);
    const tests = parse(readFileSync(join(PROMETHEUS_DIR, 'alerts.test.yml'), 'utf8')) as { tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[] };
    const cases = tests.tests.flatMap((t) => t.alert_rule_test);
    for (const n of names) {
      assert.ok(cases.some((c) => c.alertname === n && c.exp_alerts.length > 0), `${n} fires in a test`);
      assert.ok(cases.some((c) => c.alertname === n && c.exp_alerts.length === 0), `${n} stays quiet in a test`);
    }
  });

  it('promtool test rules passes every case', () => {
    const r = promtool('test', 'rules', 'alerts.test.yml');
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /SUCCESS/);
  });
});
