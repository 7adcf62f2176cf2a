// Validates AsyncAPI documents with the AsyncAPI initiative's own parser
// (@asyncapi/parser, installed by scripts/asyncapi-parser.sh).
//
//   node scripts/asyncapi-validate.mjs PARSER_DIR FILE...
//
// Prints one line per diagnostic of severity error (and a count of the others) and
// exits 1 when any file has errors, 2 when a file cannot be read or the parser
// cannot be loaded.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const [parserDir, ...files] = process.argv.slice(2);
if (!parserDir || files.length === 0) {
  console.error('usage: node asyncapi-validate.mjs PARSER_DIR FILE...');
  process.exit(2);
}
let Parser;
try {
  const require = createRequire(path.join(path.resolve(parserDir), 'node_modules', 'noop.js'));
  ({ Parser } = require('@asyncapi/parser'));
} catch (e) {
  console.error(`cannot load @asyncapi/parser from ${parserDir}: ${e.message}`);
  process.exit(2);
}

const parser = new Parser();
let failed = false;
for (const file of files) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    console.error(`${file}: cannot read: ${e.message}`);
    process.exit(2);
  }
  const { document, diagnostics } = await parser.parse(text);
  // Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of errors) {
    console.log(`${file}: error: ${d.code}: ${d.message} at /${d.path.join('/')}`);
  }
  const others = diagnostics.length - errors.length;
  if (errors.length > 0 || !document) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} error(s), ${others} other diagnostic(s))`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()} (${others} non-error diagnostic(s))`);
    for (const d of diagnostics.filter((d) => d.severity !== 0)) {
      console.log(`${file}: note: ${d.code}: ${d.message} at /${d.path.join('/')}`);
    }
  }
}
process.exit(failed ? 1 : 0);
