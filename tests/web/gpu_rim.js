// Run in the console's page by test_gpu_rim.py and test_gpu_ocsp.py: the page's RIM (xmldsigjs) and OCSP (PKI.js)
// checks on NVIDIA's real RIMs and recorded OCSP replies, tampered copies, and stand-in ones.
async ({ cases, direct, bundle }) => {
  const m = await import("/console/assets/veil.js");
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const named = (list) => list.map(([name, b64]) => [name, bytes(b64)]);
  const out = { cases: {}, direct: {}, bundle: null };
  for (const [name, c] of Object.entries(cases)) {
    const steps = [];
    const facts = await m.checkGpu(bytes(c.report), c.chain, steps, {
      at: new Date(c.at), expectedNonce: bytes(c.nonce), rims: named(c.rims), ocsp: named(c.ocsp),
      drivers: c.drivers, vbios: c.vbios, rimRoots: c.rimRoots ?? undefined,
    });
    out.cases[name] = { steps, facts };
  }
  // check_ocsp on one reply, certificate and issuer: "ok" or the error's message
  for (const [name, d] of Object.entries(direct)) {
    try {
      const reply = m.loadReply(name, bytes(d.reply));
      await m.checkOcsp(reply, m.parseDer(bytes(d.cert)), m.parseDer(bytes(d.issuer)), new Date(d.at));
      out.direct[name] = "ok";
    } catch (e) {
      out.direct[name] = e.message;
    }
  }
  // a bundle's GPU entry carries its RIMs and replies as base64 lists ("RIM 1", "reply 1", ...)
  if (bundle) {
    const steps = [];
    await m.checkGpus(bundle.gpus, bytes(bundle.nonce), steps, { at: new Date(bundle.at), pins: bundle.pins });
    out.bundle = steps;
  }
  return out;
}
