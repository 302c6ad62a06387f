// The configured submission users (users.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigUserDirectory } from '../../src/ingress/smtp/users.ts';
import { hashPassword } from '../../src/message/password.ts';

describe('configured users', () => {
  it('checks configured users without regard to case and says no for unknown ones', async () => {
    const u = new ConfigUserDirectory([{ address: 'Ann@X.test', passwordHash: await hashPassword('s3cret-pw') }]);
    assert.equal(await u.exists('ann@x.test'), true);
    assert.equal(await u.exists('bob@x.test'), false);
    assert.equal(await u.verify('ANN@x.test', 's3cret-pw'), true);
    assert.equal(await u.verify('ann@x.test', 'wrong'), false);
    assert.equal(await u.verify('bob@x.test', 's3cret-pw'), false);
  });
});
