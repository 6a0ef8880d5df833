// Validates a CloudFormation template with cfn-lint (npm, the Node linter that checks every
// resource, property, type, reference and intrinsic function against AWS's CloudFormation
// resource specification).  Its bundled specification (2.29.0) predates two properties the
// cloister template needs, so they are added here exactly as AWS's current specification
// defines them (LaunchTemplateData.EnclaveOptions {Enabled: Boolean} and .MetadataOptions
// {HttpEndpoint, HttpProtocolIpv6, HttpTokens, InstanceMetadataTags: String;
// HttpPutResponseHopLimit: Integer}); nothing else is changed.
//   node validate_cfn.js TEMPLATE.yaml [Param=Value ...]    exit 0 valid, 1 invalid
"use strict";
const data = require("cfn-lint/lib/awsData");
const spec = data.awsResources;
const prop = (type, primitive) => Object.assign({Documentation: "", Required: false, UpdateType: "Mutable"},
                                               primitive ? {PrimitiveType: primitive} : {Type: type});
spec.PropertyTypes["AWS::EC2::LaunchTemplate.EnclaveOptions"] = {
    Documentation: "", Properties: {Enabled: prop(null, "Boolean")}};
spec.PropertyTypes["AWS::EC2::LaunchTemplate.MetadataOptions"] = {
    Documentation: "", Properties: {HttpEndpoint: prop(null, "String"), HttpProtocolIpv6: prop(null, "String"),
                                    HttpPutResponseHopLimit: prop(null, "Integer"), HttpTokens: prop(null, "String"),
                                    InstanceMetadataTags: prop(null, "String")}};
const ltd = spec.PropertyTypes["AWS::EC2::LaunchTemplate.LaunchTemplateData"].Properties;
ltd.EnclaveOptions = prop("EnclaveOptions");
ltd.MetadataOptions = prop("MetadataOptions");

const api = require("cfn-lint/lib/api");
const [file, ...params] = process.argv.slice(2);
const parameters = {};
for (const p of params) {
    const eq = p.indexOf("=");
    parameters[p.slice(0, eq)] = p.slice(eq + 1).includes(",") ? p.slice(eq + 1).split(",") : p.slice(eq + 1);
}
const result = api.validateFile(file, {parameters});
const show = (kind) => (result.errors[kind] || []).map((e) => `${kind}: ${e.resource}: ${e.message}`);
const lines = [...show("crit"), ...show("warn")];
console.log(lines.join("\n") || "no findings");
console.log(result.templateValid ? "template valid" : "template INVALID");
process.exit(result.templateValid ? 0 : 1);
