// Reads the Prometheus text format as a scraper does, and the alert rules of compose/prometheus/.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';

export const PROMETHEUS_DIR = join(import.meta.dirname, '..', '..', 'compose', 'prometheus');

/** The alert rules: name and expression. */
export function alertRules(): { alert: string; expr: string }[] {
  const doc = parse(readFileSync(join(PROMETHEUS_DIR, 'alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

/** The value of the first series of `name` whose labels include `labels`, or undefined. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

/** Every query of the provisioned Grafana dashboard (compose/grafana/dashboards). */
export function grafanaExprs(): string[] {
  const dash = JSON.parse(readFileSync(join(PROMETHEUS_DIR, '..', 'grafana', 'dashboards', 'streamgate.json'), 'utf8')) as { panels: { targets?: { expr: string }[] }[] };
  return dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
}
