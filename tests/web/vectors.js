// Run in the console's page by test_vectors.py: the page's own protocol module (assets/veil.js)
// against tests/vectors/veil-v3.json. The node's side (opening the request, sealing the answer)
// is done here with the same module's key schedule and WebCrypto, to reproduce every byte.
async ({ vector }) => {
  const m = await import("/console/assets/veil.js");
  const hex = (h) => Uint8Array.from(h.match(/../g) ?? [], (x) => parseInt(x, 16));
  const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const toB64 = (b) => btoa(String.fromCharCode(...b));
  const sha256 = async (b) => new Uint8Array(await crypto.subtle.digest("SHA-256", b));
  const out = {};
  const env = vector.request_envelope;
  const fields = {
    kem: env.kem, keyId: env.key_id, endpoint: vector.endpoint, modelName: env.model_name,
    stackSmallId: env.stack_small_id, numComputeUnits: env.num_compute_units, stream: env.stream,
    requestId: b64(env.request_id), timestamp: env.timestamp, reservationId: env.reservation_id,
  };
  const info = m.requestInfo(fields);
  out.info = toHex(info);
  out.key_id = m.keyId(hex(vector.node_public_key));
  // The node's side of the request: open the Python-sealed envelope with the seed's key.
  const suite = m.suiteOf(env.kem);
  out.kem_id = suite.kem.id;
  const sealedBytes = b64(env.ciphertext);
  const enc = sealedBytes.slice(0, suite.kem.encSize);
  const sk = await suite.kem.importKey("raw", hex(vector.node_key_seed).buffer, false);
  const opened = new Uint8Array(await suite.open({ recipientKey: sk, enc: enc.buffer, info: info.buffer }, sealedBytes.slice(suite.kem.encSize).buffer));
  out.opened_secret = toHex(opened.slice(0, 32));
  out.opened_body = new TextDecoder().decode(opened.slice(32));
  // The page's seal, with the vector's fixed request id, secret and clock: Python opens it.
  const signingSeed = hex(vector.node_signing_seed);
  const pkcs8 = new Uint8Array([...hex("302e020100300506032b657004220420"), ...signingSeed]);
  const signer = await crypto.subtle.importKey("pkcs8", pkcs8, "Ed25519", true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", signer);
  const signingPublic = Uint8Array.from(atob(jwk.x.replace(/-/g, "+").replace(/_/g, "/") + "="), (c) => c.charCodeAt(0));
  const { envelope } = await m.sealRequest({
    ...fields, nodePublicKey: hex(vector.node_public_key), signingKey: signingPublic,
    body: new TextEncoder().encode(vector.body), requestId: fields.requestId,
    responseSecret: hex(vector.response_secret), now: env.timestamp,
  });
  out.envelope = envelope;
  // The answer, sealed with the page's key schedule: must equal the vector's chunks byte for byte.
  const secret = hex(vector.response_secret);
  const cipher = await m.AnswerCipher.derive(secret, fields.requestId, hex(vector.response_nonce), await sha256(info));
  out.chunks = [];
  const n = vector.response_chunks.length;
  for (let i = 0; i < n; i++) {
    const final = i === n - 1;
    const ct = await cipher.seal(i, final, new TextEncoder().encode(vector.response_chunks[i].plaintext));
    const hash = await cipher.chain(i, final, ct);
    cipher.hash = hash;
    const usage = final ? vector.usage : null;
    const signature = final ? new Uint8Array(await crypto.subtle.sign("Ed25519", signer, m.signedMessage(hash, usage))) : null;
    out.chunks.push({
      ciphertext: toB64(ct), nonce: toB64(cipher.nonce(i)), response_hash: toB64(hash),
      signature: signature && toB64(signature), usage, response_nonce: vector.response_nonce && toB64(hex(vector.response_nonce)),
      index: i, final,
    });
  }
  // The page's opener over the vector's chunks, then over tampered copies of them.
  const signingKey = await m.importSigningKey(signingPublic);
  const fresh = async () => new m.ClientSession(secret, fields.requestId, env.timestamp, await sha256(info), signingKey);
  const reader = await fresh();
  out.plaintexts = [];
  for (const c of vector.response_chunks) out.plaintexts.push(new TextDecoder().decode(await reader.open(c.response)));
  reader.finish();
  out.usage = reader.usage;
  const failure = async (chunks, finish = false) => {
    const s = await fresh();
    try {
      for (const c of chunks) await s.open(c);
      if (finish) s.finish();
      return "accepted";
    } catch (e) {
      return e instanceof m.IntegrityError ? e.check : `other: ${e}`;
    }
  };
  const rs = vector.response_chunks.map((c) => c.response);
  const flip = (c) => { const b = b64(c.ciphertext); b[0] ^= 1; return { ...c, ciphertext: toB64(b) }; };
  const badSig = (c) => { const b = b64(c.signature); b[5] ^= 1; return { ...c, signature: toB64(b) }; };
  out.tampered = {
    flipped: await failure([rs[0], flip(rs[1]), rs[2]]),
    dropped: await failure([rs[0], rs[2]]),
    truncated: await failure([rs[0], rs[1]], true),
    reordered: await failure([rs[1], rs[0], rs[2]]),
    signature: await failure([rs[0], rs[1], badSig(rs[2])]),
    usage: await failure([rs[0], rs[1], { ...rs[2], usage: { ...rs[2].usage, completion_tokens: 1 } }]),
    hash: await failure([rs[0], { ...rs[1], response_hash: rs[0].response_hash }]),
    duplicated: await failure([rs[0], rs[0]]),
    whole: await failure(rs, true),
  };
  return out;
}
