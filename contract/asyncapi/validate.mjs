// Validates an AsyncAPI document with the AsyncAPI project's parser (protobuf schemas through
// its protobuf schema parser) and prints what it read, as JSON, for the test that compares it
// with the topics the gateway creates:
//
//   node validate.mjs DOCUMENT.json
//
// Exit 0: valid, no diagnostic of severity error. Exit 1: the errors are on stderr.
import fs from 'node:fs';
import { Parser } from '@asyncapi/parser';
import { ProtoBuffSchemaParser } from '@asyncapi/protobuf-schema-parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate.mjs DOCUMENT.json');
  process.exit(2);
}
const parser = new Parser();
parser.registerSchemaParser(ProtoBuffSchemaParser());
const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'));
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length > 0) {
  for (const e of errors) console.error(`${e.path.join('.')}: ${e.message}`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => {
  const kafka = c.bindings().get('kafka');
  const config = kafka ? kafka.value().topicConfiguration ?? {} : {};
  return {
    id: c.id(),
    address: c.address(),
    protocols: c.servers().all().map((s) => s.protocol()),
    cleanupPolicy: config['cleanup.policy'] ?? null,
    retentionMs: config['retention.ms'] ?? null,
    messages: c.messages().all().map((m) => ({
      name: m.name(),
      schemaFormat: m.payload() ? m.payload().schemaFormat?.() ?? null : null,
      headers: m.hasHeaders() ? Object.keys(m.headers().properties()) : [],
    })),
  };
});
console.log(
  JSON.stringify({ warnings: diagnostics.filter((d) => d.severity === 1).length, channels }, null, 2),
);
