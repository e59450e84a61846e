// Run in the console's page by test_gpu.py: the page's NVIDIA GPU steps (WebCrypto + PKI.js) on
// NVIDIA's real Hopper sample report and device chain, and on a live H100 report, one run per case.
async ({ cases, parse, many, bundle }) => {
  const m = await import("/console/assets/veil.js");
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const out = { cases: {}, parsed: {}, many: null, bundle: null };
  for (const [name, c] of Object.entries(cases)) {
    const steps = [];
    const facts = await m.checkGpu(bytes(c.report), c.chain, steps, {
      at: new Date(c.at), expectedNonce: bytes(c.nonce), rims: c.rims, ocsp: c.ocsp,
      drivers: c.drivers, vbios: c.vbios,
    });
    out.cases[name] = { steps, facts };
  }
  for (const [name, report] of Object.entries(parse)) {
    const r = m.parseGpuReport(bytes(report));
    out.parsed[name] = {
      nonce: hex(r.nonce), driver: r.driver, vbios: r.vbios, fwid: r.fwid && hex(r.fwid),
      signed: hex(r.signed), signature: hex(r.signature),
      measurements: Object.fromEntries([...r.measurements].map(([i, v]) => [i, hex(v)])),
    };
  }
  // Several GPUs in one bundle: steps suffixed with the GPU's index, nonce = gpu_nonce.
  const steps = [], facts = {};
  const k = many.keys;
  const nonce = await m.gpuNonce(bytes(k.x25519), bytes(k.ed25519), bytes(k.nonce));
  await m.checkGpus(many.gpus, nonce, steps, { at: new Date(many.at), pins: many.pins, facts });
  out.many = { steps, facts, gpuNonce: hex(nonce) };
  const none = [];
  await m.checkGpus([], nonce, none, { pins: many.pins });
  out.none = none;
  // attest.ts's whole check on an SNP bundle with a GPU: SNP steps, GPU steps, then the binding.
  const b = bundle.bundle;
  const keys = { x25519: bytes(b.x25519_public_key), ed25519: bytes(b.ed25519_public_key), kem: null, nonce: bytes(b.nonce) };
  const at = new Date(bundle.at);
  const r = await m.verifyEvidence(b, keys, {
    allowNoTee: false,
    verifySnp: (q, ev, s, f) => m.checkSnp(q, ev, s, { at, pins: bundle.pins, facts: f, allowDebug: true }),
    verifyGpus: (g, n, s, f) => m.checkGpus(g, n, s, { at, pins: bundle.pins, facts: f }),
  });
  const bare = await m.verifyEvidence(b, keys, { allowNoTee: false, verifySnp: (q, ev, s, f) => m.checkSnp(q, ev, s, { at, pins: bundle.pins, facts: f, allowDebug: true }) });
  out.bundle = { ok: r.ok, steps: r.steps, facts: r.facts, bare: bare.steps };
  return out;
}
