// Validates AsyncAPI documents with the official parser, @asyncapi/parser.
//
//   node scripts/asyncapi/validate.mjs FILE...
//
// Prints one line per diagnostic ("error", "warning", "info" or "hint", the rule, where, what)
// and exits with 1 if any document has an error-level diagnostic or does not parse, else 0.
// Only local `$ref`s are followed: nothing is fetched.
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';

const severities = ['error', 'warning', 'info', 'hint'];
const parser = new Parser();
let failed = false;

for (const file of process.argv.slice(2)) {
  const text = await readFile(file, 'utf8');
  const { document, diagnostics } = await parser.parse(text, { source: file });
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const where = d.path && d.path.length ? d.path.join('/') : '(document)';
    console.log(`${file}: ${severities[d.severity] ?? d.severity} ${d.code} at ${where}: ${d.message}`);
  }
  if (!document || errors.length > 0) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} error(s))`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed ? 1 : 0);
