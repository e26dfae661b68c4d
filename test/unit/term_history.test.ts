import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ProtocolViolationError } from '../../src/errors.js';
import type { TermHistory } from '../../src/acceptor/state.js';
import { findHighestCommonPoint, historyProblem, isValidHistory, lastLogTerm, termStartLsn, truncateHistory } from '../../src/acceptor/term_history.js';
import { AssertionError } from '../../src/sync/assert.js';

const history = (...entries: [number, number][]): TermHistory => entries.map(([term, lsn]) => ({ term: BigInt(term), lsn: BigInt(lsn) }));

describe('findHighestCommonPoint (Neon test_find_highest_common_point_*)', () => {
  test('none: no shared term gives null (caller streams from the proposer first entry)', () => {
    assert.equal(findHighestCommonPoint(history([0, 1]), history([1, 1], [2, 2]), 3n), null);
  });

  test('middle: the local history diverged after the last common term', () => {
    const proposer = history([1, 10], [2, 20], [4, 40]);
    const local = history([1, 10], [2, 20], [3, 30]);
    assert.deepEqual(findHighestCommonPoint(proposer, local, 40n), { term: 2n, lsn: 30n });
  });

  test('sk end: the local WAL ends inside the last common term', () => {
    const proposer = history([1, 10], [2, 20], [4, 40]);
    assert.deepEqual(findHighestCommonPoint(proposer, history([1, 10], [2, 20]), 32n), { term: 2n, lsn: 32n });
  });

  test('walprop: equal histories give the local flush position', () => {
    const both = history([1, 10], [2, 20]);
    assert.deepEqual(findHighestCommonPoint(both, both, 32n), { term: 2n, lsn: 32n });
  });

  test('proposer ahead: the local WAL ran past where the proposer switched terms', () => {
    // Local term 2 WAL reaches 50 but the proposer's term 2 ended at 40: the tail from 40 is truncated.
    assert.deepEqual(findHighestCommonPoint(history([1, 10], [2, 20], [5, 40]), history([1, 10], [2, 20]), 50n), { term: 2n, lsn: 40n });
  });

  test('local ahead: the local history has more terms than the proposer knows', () => {
    const proposer = history([1, 10]);
    assert.deepEqual(findHighestCommonPoint(proposer, history([1, 10], [3, 30]), 45n), { term: 1n, lsn: 45n });
  });

  test('empty local history has no common point', () => {
    assert.equal(findHighestCommonPoint(history([1, 10]), [], 0n), null);
    assert.equal(findHighestCommonPoint([], [], 0n), null);
  });

  test('a shared term with different start LSNs is a protocol violation, not a crash', () => {
    assert.throws(() => findHighestCommonPoint(history([1, 10], [2, 25]), history([1, 10], [2, 20]), 30n), ProtocolViolationError);
  });

  test('a local history reaching past the local flush position is our bug', () => {
    assert.throws(() => findHighestCommonPoint(history([1, 10]), history([1, 10], [2, 40]), 30n), AssertionError);
  });
});

describe('history helpers', () => {
  test('truncateHistory removes entries starting after flush_lsn', () => {
    const full = history([1, 10], [2, 20], [3, 30]);
    assert.deepEqual(truncateHistory(full, 25n), history([1, 10], [2, 20]));
    assert.deepEqual(truncateHistory(full, 20n), history([1, 10], [2, 20]), 'an entry starting exactly at flush stays');
    assert.deepEqual(truncateHistory(full, 5n), []);
    assert.deepEqual(full, history([1, 10], [2, 20], [3, 30]), 'input unchanged');
  });

  test('lastLogTerm switches only when flush reaches the next term start (Neon test_last_log_term_switch)', () => {
    const full = history([1, 1], [2, 3]);
    assert.equal(lastLogTerm(full, 0n), 0n);
    assert.equal(lastLogTerm(full, 2n), 1n);
    assert.equal(lastLogTerm(full, 3n), 2n);
  });

  test('termStartLsn is the last entry start', () => {
    assert.equal(termStartLsn(history([1, 1], [2, 3])), 3n);
    assert.throws(() => termStartLsn([]), AssertionError);
  });

  test('validation: terms strictly ascending, LSNs non-decreasing', () => {
    assert.equal(isValidHistory([]), true);
    assert.equal(isValidHistory(history([1, 10], [2, 10], [5, 30])), true, 'a term that wrote nothing shares its start LSN');
    assert.match(historyProblem(history([1, 10], [1, 20])) ?? '', /terms not ascending/);
    assert.match(historyProblem(history([2, 10], [1, 20])) ?? '', /terms not ascending/);
    assert.match(historyProblem(history([1, 20], [2, 10])) ?? '', /LSNs decreasing/);
  });
});
