// After tsc: copies the non-TypeScript files of src/ (the dashboard page) into dist/.
import { cpSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
cpSync(join(root, 'src'), join(root, 'dist'), { recursive: true, filter: (src) => !/\.ts$/.test(src) });
