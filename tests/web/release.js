// Run in the console's page by test_release.py: signed releases verified in the page (release.ts:
// WebCrypto Ed25519 over the manifest's exact bytes) and their measurement sets used by the TDX,
// SNP and GPU steps (references.ts, tdx.ts, snp.ts, gpu.ts), on the real attestation samples.
async ({ signatures, tdx, snp, gpus, whole }) => {
  const m = await import("/console/assets/veil.js");
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const out = { signatures: {}, tdx: {}, snp: {}, gpus: {}, whole: null };
  for (const [name, c] of Object.entries(signatures)) {
    try {
      const v = await m.verifyRelease(bytes(c.manifest), bytes(c.signature), c.keys.map(bytes));
      out.signatures[name] = { ok: true, release: v.manifest.release, signer: v.signer, digest: v.digest, manifest: v.manifest };
    } catch (e) {
      out.signatures[name] = { ok: false, reason: e.reason ?? String(e) };
    }
  }
  // The release step as a lock runs it: the release loaded in the panel, or the one the node shows.
  const release = async (c, evidence, steps, facts) => {
    const loaded = c.shown ? null : c.manifest ? { manifest: bytes(c.manifest), signature: bytes(c.signature) } : null;
    const ev = { ...evidence };
    if (c.shown) ev.release = { manifest: c.manifest, signature: JSON.parse(atob(c.signature)) };
    return m.checkRelease(ev, { keys: c.keys.map(bytes), loaded }, steps, facts);
  };
  for (const [name, c] of Object.entries(tdx.cases)) {
    const steps = [], facts = {};
    const evidence = { collateral: tdx.collateral };
    const refs = await release(c, evidence, steps, facts);
    const signed = await m.checkTdx(bytes(tdx.quote), evidence, steps, { at: new Date(tdx.at), pins: c.pins, facts, release: refs });
    out.tdx[name] = { steps, facts, reportData: signed && hex(signed) };
  }
  for (const [name, c] of Object.entries(snp.cases)) {
    const steps = [], facts = {};
    const evidence = { vcek: snp.vcek, cert_chain: snp.chain };
    const refs = await release(c, evidence, steps, facts);
    const signed = await m.checkSnp(bytes(snp.report), evidence, steps, { at: new Date(snp.at), pins: c.pins, facts, release: refs });
    out.snp[name] = { steps, facts, reportData: signed && hex(signed) };
  }
  for (const [name, c] of Object.entries(gpus)) {
    const steps = [], facts = {};
    const refs = await release(c, {}, steps, facts);
    await m.checkGpus([], new Uint8Array(32), steps, { pins: c.pins, facts, release: refs });
    out.gpus[name] = { steps };
  }
  // The whole evidence check (attest.ts) with the release hook: "release" right after "format".
  const keys = { x25519: new Uint8Array(32), ed25519: new Uint8Array(32), kem: null, nonce: new Uint8Array(32) };
  const r = await m.verifyEvidence(whole.evidence, keys, {
    allowNoTee: false,
    checkRelease: (ev, steps, facts) => m.checkRelease(ev, { keys: whole.keys.map(bytes), loaded: { manifest: bytes(whole.manifest), signature: bytes(whole.signature) } }, steps, facts),
    verifyTdx: (q, ev, steps, facts, refs) => m.checkTdx(q, ev, steps, { at: new Date(tdx.at), pins: {}, facts, release: refs }),
  });
  out.whole = { ok: r.ok, steps: r.steps.map((s) => [s.name, s.ok]), facts: r.facts };
  return out;
}
