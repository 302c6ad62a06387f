// A validated configuration for tests: defaults, then the overrides a test gives.
import { validateConfig } from '../../src/config/load.ts';
import type { Config } from '../../src/config/schema.ts';

export function testConfig(overrides: Record<string, unknown> = {}): Config {
  return validateConfig({ log: { level: 'silent' }, ...overrides }, 'test');
}
