// An adopted queue's past stays readable by its adopter: the events archived while the queue was
// its first gateway's are filed under that gateway's id, and the adopter's event log finds them by
// message id (the story) and by queue and time (time travel, replay), under the queue's full name.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { poolMembers } from '../../src/queue/takeover.ts';
import { readPlacement } from '../../src/queue/placement.ts';
import { EventPath, startEventLogServers, type EventLogServers } from '../helpers/eventPath.ts';
import { waitFor } from '../helpers/waitFor.ts';

describe('the story of a message in an adopted queue', () => {
  let servers: EventLogServers;
  const paths: EventPath[] = [];
  before(async () => {
    servers = await startEventLogServers('adopted');
  });
  after(async () => {
    for (const p of paths) await p.stop().catch(() => {});
    await servers?.stop();
  });

  it('is read by the adopter from the events archived under the first gateway', async () => {
    const config = servers.config({ gateway: { lease: '1s', adoption: { every: '1h' } } });
    const a = new EventPath(config, servers.events, 'adopted-events', { gatewayId: 'st-a' });
    await a.start();
    const raw = Buffer.from('Subject: kept\r\n\r\nkept\r\n');
    const ids = ['k0', 'k1', 'k2'];
    for (const id of ids) await a.qm.append({ id, domain: 'adopt.test', envelope: { from: 's@src.test', to: ['r@adopt.test'] }, raw });
    await a.archive.drain();
    await a.stop(); // holding messages: its queue is left for adoption
    const b = new EventPath(config, servers.events, 'adopted-events', { gatewayId: 'st-b' });
    paths.push(b);
    await b.start();
    const dead = await waitFor(async () => (await poolMembers(b.qm.nodes, 1000))?.find((m) => m.id === 'st-a' && !m.live), { what: 'st-a seen dead' });
    const rec = (await readPlacement(b.qm.nodes, 'st-a', 1000)).get('adopt.test')!;
    assert.equal(await b.qm.adopt(dead, 'adopt.test', rec), true);
    await b.archive.drain();

    const story = await b.archive.story('k1');
    assert.deepEqual(story.map((e) => [e.queue, e.kind]), [['st-a:adopt.test', 'accepted']], 'the accepted event archived by st-a');
    const archived: string[] = [];
    for await (const ev of b.archive.eventsOf('st-a:adopt.test', 0, Date.now() + 60_000)) archived.push(`${ev.kind} ${ev.messageId}`);
    assert.deepEqual(archived.filter((x) => x.startsWith('accepted')), ids.map((id) => `accepted ${id}`), 'the queue read by its full name');
    assert.ok(archived.includes('adopted '), `the adoption is in the same log: ${archived.join(', ')}`);
    // the adopter's own events of the queue (ids under st-a) leave its memory once archived
    const [m] = await b.qm.take('st-a:adopt.test', 1);
    await b.qm.settle('st-a:adopt.test', m!.id, 'delivered', { reply: '250 ok' });
    await b.archive.drain();
    assert.deepEqual((await b.archive.story(m!.id)).map((e) => e.kind), ['accepted', 'attempted', 'delivered']);
    assert.equal(b.archive.status().hot, 0, 'no archived event held in memory');
    assert.equal(b.archive.status().lagEvents, 0, 'the adopted queue: its events counted against its own cursor');
  });
});
