// The page's protocol code as one module (assets/veil.js), the same code the console runs: what
// tests/web drives against tests/vectors/veil-v3.json, and what a reviewer can import to check.
export * from "./v3";
export { keyId } from "./keyid";
export { canonicalJson } from "./canonical";
export { expectedReportData, verifyEvidence } from "./attest";
export { checkTdx } from "./tdx";
export { checkSnp, parseSnpReport, vcekExtensionsProblem } from "./snp";
export { checkGpu, checkGpus, gpuNonce, parseGpuReport } from "./gpu";
export { loadRim } from "./rim";
export { checkOcsp, loadReply } from "./ocsp";
export { parseDer, parsePem } from "./x509";
export { renderMarkdown } from "./markdown";
export { parseManifest, verifyEd25519, verifyRelease, parseKeys } from "./release";
export { checkRelease } from "./references";
