// Run in the console's page by test_snp.py: the page's SEV-SNP steps (WebCrypto + PKI.js) on the
// real reports, VCEKs and AMD KDS chains of ../shared/attestation-samples, one run per case.
async ({ cases, parse, extensions, bundles }) => {
  const m = await import("/console/assets/veil.js");
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const out = { cases: {}, parsed: {}, extensions: {}, bundles: {} };
  for (const [name, c] of Object.entries(cases)) {
    const steps = [], facts = {};
    const evidence = { vcek: c.vcek, cert_chain: c.chain };
    const signed = await m.checkSnp(bytes(c.report), evidence, steps, { at: new Date(c.at), pins: c.pins, facts, allowDebug: c.allowDebug });
    out.cases[name] = { steps, facts, reportData: signed && hex(signed) };
  }
  for (const [name, report] of Object.entries(parse)) {
    const r = m.parseSnpReport(bytes(report));
    out.parsed[name] = {
      version: r.version, guest_svn: r.guest_svn, policy: r.policy.toString(), vmpl: r.vmpl,
      signature_algo: r.signature_algo, signing_key: r.signing_key, report_data: r.report_data,
      measurement: r.measurement, host_data: r.host_data, chip_id: r.chip_id, product: r.product,
      reported_tcb: r.reported_tcb, current_tcb: r.current_tcb, committed_tcb: r.committed_tcb,
      launch_tcb: r.launch_tcb, signed: hex(r.signed), signature: r.signature && hex(r.signature),
    };
  }
  for (const [name, c] of Object.entries(extensions)) out.extensions[name] = m.vcekExtensionsProblem(bytes(c.report), bytes(c.vcek));
  // The whole evidence check of attest.ts on SNP bundles (what flow.ts runs on a lock's evidence).
  for (const [name, b] of Object.entries(bundles)) {
    const keys = { x25519: bytes(b.bundle.x25519_public_key), ed25519: bytes(b.bundle.ed25519_public_key), kem: null, nonce: bytes(b.bundle.nonce) };
    const options = { allowNoTee: false };
    if (b.hooks) {
      options.verifySnp = (q, ev, steps, facts) => m.checkSnp(q, ev, steps, { at: new Date(b.at), pins: b.pins, facts });
      options.verifyGpus = (g, nonce, steps, facts) => m.checkGpus(g, nonce, steps, { at: new Date(b.at), pins: b.pins, facts });
    }
    const r = await m.verifyEvidence(b.bundle, keys, options);
    out.bundles[name] = { ok: r.ok, steps: r.steps, facts: r.facts };
  }
  return out;
}
