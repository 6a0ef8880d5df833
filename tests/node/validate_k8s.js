// Validates Kubernetes manifests (a JSON array of objects, as converted from YAML by the test)
// against the Kubernetes OpenAPI schemas compiled into kubernetes-models (npm): types, required
// fields, enums and formats of every field.  Those schemas allow unknown fields, so a second
// pass refuses any field name that no Kubernetes type declares (the names from the package's
// type declarations), which catches misspelt fields as `kubeconform --strict` would; the keys
// of labels, annotations, resources, ConfigMap data and selectors are free-form and skipped.
//   node validate_k8s.js MANIFESTS.json     exit 0 valid, 1 invalid
"use strict";
const fs = require("fs");
const path = require("path");
const root = path.dirname(require.resolve("kubernetes-models/package.json"));
const known = new Set();
const walk = (dir) => {
    for (const e of fs.readdirSync(dir, {withFileTypes: true})) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith(".d.ts"))
            for (const m of fs.readFileSync(p, "utf8").matchAll(/^\s*"?([A-Za-z_$][\w$-]*)"?\??\s*:/gm)) known.add(m[1]);
    }
};
walk(root);
walk(path.dirname(require.resolve("@kubernetes-models/apimachinery/package.json")));
const freeForm = new Set(["labels", "annotations", "limits", "requests", "data", "matchLabels", "selector", "nodeSelector"]);
const problems = [];
const checkNames = (obj, where) => {
    if (Array.isArray(obj)) return obj.forEach((v, i) => checkNames(v, `${where}/${i}`));
    if (!obj || typeof obj !== "object") return;
    for (const [k, v] of Object.entries(obj)) {
        if (!known.has(k)) problems.push(`${where}/${k}: no Kubernetes type has a field "${k}"`);
        if (!freeForm.has(k)) checkNames(v, `${where}/${k}`);
    }
};
const docs = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
for (const doc of docs) {
    const name = `${doc.kind}/${doc.metadata && doc.metadata.name}`;
    const group = doc.apiVersion.includes("/") ? doc.apiVersion : `v1`;
    let Model;
    try {
        Model = require(`kubernetes-models/${group === "v1" ? "v1" : group}/${doc.kind}`)[doc.kind];
    } catch (e) {
        problems.push(`${name}: unknown apiVersion/kind ${doc.apiVersion} ${doc.kind}`);
        continue;
    }
    try {
        new Model(doc).validate();
    } catch (e) {
        problems.push(`${name}: ${e.message}`);
    }
    checkNames(doc, name);
}
console.log(problems.join("\n") || `${docs.length} manifests valid`);
process.exit(problems.length ? 1 : 0);
