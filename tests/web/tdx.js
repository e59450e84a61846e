// Run in the console's page by test_tdx.py: the page's TDX steps (dcap-qvl in WebAssembly) on
// the real sample quote and collateral of ../shared/attestation-samples.
async ({ quote, collateral, at, pins, expect }) => {
  const m = await import("/console/assets/veil.js");
  const bytes = Uint8Array.from(atob(quote), (c) => c.charCodeAt(0));
  const run = async (q, when, p) => {
    const steps = [];
    const reportData = await m.checkTdx(q, { collateral }, steps, { at: new Date(when), pins: p });
    return { steps, reportData: reportData && Array.from(reportData, (x) => x.toString(16).padStart(2, "0")).join("") };
  };
  const flipped = bytes.slice();
  flipped[100] ^= 1;
  // The whole evidence check on a genuine quote whose report_data binds other keys: refused.
  const hex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  const keys = { x25519: new Uint8Array(32), ed25519: new Uint8Array(32), kem: null, nonce: new Uint8Array(32) };
  const b64 = (b) => btoa(String.fromCharCode(...b));
  const evidence = {
    format: "tdx", quote, collateral, report_data: b64(hex(expect)), nonce: b64(keys.nonce),
    x25519_public_key: b64(keys.x25519), ed25519_public_key: b64(keys.ed25519),
  };
  const whole = await m.verifyEvidence(evidence, keys, {
    allowNoTee: false,
    verifyTdx: (q, ev, steps) => m.checkTdx(q, ev, steps, { at: new Date(at), pins }),
  });
  return {
    genuine: await run(bytes, at, pins),
    unpinned: await run(bytes, at, {}),
    wrongPin: await run(bytes, at, { mr_td: "00".repeat(48) }),
    tampered: await run(flipped, at, pins),
    today: await run(bytes, Date.now(), pins),
    whole: { ok: whole.ok, steps: whole.steps.map((s) => [s.name, s.ok]) },
  };
}
