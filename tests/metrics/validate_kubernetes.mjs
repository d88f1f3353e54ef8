// Validates Kubernetes objects against the API's OpenAPI schemas, as compiled by the npm package
// kubernetes-models (installed into tools/node_modules by deploy/install_deps.sh).
//
//   node validate_kubernetes.mjs NODE_MODULES < objects.json
//
// stdin: a JSON array of objects. stdout: a JSON array with, per object, "" when it is valid,
// else what the schema rejects. Exit 0 unless the input cannot be read; an apiVersion/kind that
// the package has no model of is reported as an error for that object.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const object of objects) {
  const apiVersion = String(object.apiVersion ?? "");
  const kind = String(object.kind ?? "");
  // Core group objects live in v1/, the others in <group>/<version>/.
  const file = join(modules, "kubernetes-models", ...apiVersion.split("/"), `${kind}.js`);
  if (!/^[A-Za-z0-9.\/]+$/.test(apiVersion) || !/^[A-Za-z0-9]+$/.test(kind) || !existsSync(file)) {
    results.push(`no schema for apiVersion ${apiVersion} kind ${kind}`);
    continue;
  }
  const Model = (await import(pathToFileURL(file).href))[kind];
  try {
    new Model(object).validate();
    results.push("");
  } catch (error) {
    results.push(String(error.message ?? error));
  }
}
process.stdout.write(JSON.stringify(results));
