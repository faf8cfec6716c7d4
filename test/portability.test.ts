/**
 * The project must run from any checkout: no tracked file may name the absolute path of the
 * working copy it was cloned into (CI clones into another folder).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');

describe('portability', () => {
  it('no tracked file names the absolute path of this checkout', () => {
    const files = execFileSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
    expect(files.length).toBeGreaterThan(10);
    const offenders = files.filter((file) => {
      try {
        return readFileSync(join(ROOT, file), 'utf8').includes(ROOT);
      } catch {
        return false; // deleted in the work tree but still in the index
      }
    });
    expect(offenders).toEqual([]);
  });
});
