// End-to-end checks in the browser, with WebCrypto: a device's published
// certificate chain (certs/{site}/{dev}, PEM) against the deployment's
// ca.crt, and a record's COSE_Sign1 against the device's key. Keys are
// ECDSA P-256 (signatures ES256, raw r||s in COSE, DER in certificates) or
// Ed25519.
"use strict";

const Verify = (() => {
  const OID = {
    ecPublicKey: "1.2.840.10045.2.1",
    p256: "1.2.840.10045.3.1.7",
    ed25519: "1.3.101.112",
    ecdsaSHA256: "1.2.840.10045.4.3.2",
    commonName: "2.5.4.3",
    basicConstraints: "2.5.29.19",
  };
  const MAX_CHAIN_TEXT = 16384, MAX_CERTS = 4;

  // der reads one TLV at off: {tag, start (of the value), end, next}.
  function der(b, off) {
    if (off + 2 > b.length) throw new Error("DER truncated");
    const tag = b[off];
    let len = b[off + 1], p = off + 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 3) throw new Error("DER length");
      len = 0;
      for (let i = 0; i < n; i++) {
        if (p >= b.length) throw new Error("DER truncated");
        len = len * 256 + b[p++];
      }
    }
    if (p + len > b.length) throw new Error("DER truncated");
    return { tag, off, start: p, end: p + len, next: p + len };
  }
  function children(b, t) {
    const out = [];
    for (let p = t.start; p < t.end;) {
      const c = der(b, p);
      out.push(c);
      p = c.next;
      if (out.length > 64) throw new Error("DER: too many items");
    }
    return out;
  }
  function oid(b, t) {
    const v = b.subarray(t.start, t.end);
    const parts = [Math.floor(v[0] / 40), v[0] % 40];
    let n = 0;
    for (let i = 1; i < v.length; i++) {
      n = n * 128 + (v[i] & 0x7f);
      if (!(v[i] & 0x80)) { parts.push(n); n = 0; }
    }
    return parts.join(".");
  }
  function eq(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  function time(b, t) {
    const s = new TextDecoder().decode(b.subarray(t.start, t.end));
    const m = /^(\d{2}|\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s);
    if (!m) throw new Error("certificate time");
    let y = Number(m[1]);
    if (m[1].length === 2) y += y < 50 ? 2000 : 1900;
    return Date.UTC(y, m[2] - 1, m[3], m[4], m[5], m[6]);
  }

  // parseCert picks out of a DER certificate what the checks need.
  function parseCert(b) {
    const top = der(b, 0);
    const [tbs, sigAlg, sigVal] = children(b, top);
    let f = children(b, tbs);
    if (f[0].tag === 0xa0) f = f.slice(1); // version
    const [, , issuer, validity, subject, spki] = f;
    const exts = f.find((x) => x.tag === 0xa3);
    const [nb, na] = children(b, validity);
    const c = {
      tbs: b.subarray(tbs.off, tbs.end),
      sigAlg: oid(b, children(b, sigAlg)[0]),
      sig: b.subarray(sigVal.start + 1, sigVal.end),
      issuer: b.subarray(issuer.off, issuer.end),
      subject: b.subarray(subject.off, subject.end),
      spki: b.subarray(spki.off, spki.end),
      notBefore: time(b, nb), notAfter: time(b, na),
      cn: "", isCA: false,
    };
    const alg = children(b, children(b, spki)[0]);
    c.keyAlg = oid(b, alg[0]);
    if (c.keyAlg === OID.ecPublicKey && (alg.length < 2 || oid(b, alg[1]) !== OID.p256)) c.keyAlg = "unsupported curve";
    for (const rdn of children(b, subject)) {
      for (const atv of children(b, rdn)) {
        const [t, v] = children(b, atv);
        if (oid(b, t) === OID.commonName) c.cn = new TextDecoder("utf-8", { fatal: true }).decode(b.subarray(v.start, v.end));
      }
    }
    if (exts) {
      for (const e of children(b, children(b, exts)[0])) {
        const parts = children(b, e);
        if (oid(b, parts[0]) !== OID.basicConstraints) continue;
        const val = parts[parts.length - 1];
        const bc = children(b, der(b, val.start));
        c.isCA = bc.length > 0 && bc[0].tag === 0x01 && b[bc[0].start] !== 0;
      }
    }
    return c;
  }

  function importKey(c) {
    if (c.keyAlg === OID.ecPublicKey) {
      return crypto.subtle.importKey("spki", c.spki, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"])
        .then((k) => ({ key: k, alg: -7 }));
    }
    if (c.keyAlg === OID.ed25519) {
      return crypto.subtle.importKey("spki", c.spki, { name: "Ed25519" }, false, ["verify"])
        .then((k) => ({ key: k, alg: -8 }));
    }
    return Promise.reject(new Error("unsupported key"));
  }

  // rawECDSA turns a DER ECDSA-Sig-Value into r||s, 32 bytes each.
  function rawECDSA(sig) {
    const [r, s] = children(sig, der(sig, 0));
    const out = new Uint8Array(64);
    for (const [i, t] of [[0, r], [1, s]]) {
      let v = sig.subarray(t.start, t.end);
      while (v.length > 32 && v[0] === 0) v = v.subarray(1);
      if (v.length > 32) throw new Error("ECDSA integer too long");
      out.set(v, i * 32 + 32 - v.length);
    }
    return out;
  }

  async function checkSignedBy(c, issuer) {
    const k = await importKey(issuer);
    let ok;
    if (c.sigAlg === OID.ecdsaSHA256 && k.alg === -7) {
      ok = await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, k.key, rawECDSA(c.sig), c.tbs);
    } else if (c.sigAlg === OID.ed25519 && k.alg === -8) {
      ok = await crypto.subtle.verify({ name: "Ed25519" }, k.key, c.sig, c.tbs);
    } else {
      throw new Error("unsupported certificate signature");
    }
    if (!ok || !eq(c.issuer, issuer.subject)) throw new Error("certificate not signed by its issuer");
  }

  function pemBlocks(text) {
    const out = [];
    const re = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/g;
    let m;
    while ((m = re.exec(text)) !== null) {
      const bin = atob(m[1].replace(/\s+/g, ""));
      const b = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
      out.push(b);
      if (out.length > MAX_CERTS) throw new Error("more than " + MAX_CERTS + " certificates");
    }
    return out;
  }

  // anchors parses ca.crt (PEM) into the certificates a chain may end at.
  function anchors(pem) { return pemBlocks(pem).map(parseCert); }

  // deviceKey checks a published chain (PEM text) against the anchors: each
  // certificate signed by the next, the last by an anchor, the issuers CAs,
  // all within their validity, the first one's common name the device ID.
  // It resolves to {key, alg} or rejects with the reason.
  async function deviceKey(pem, dev, roots) {
    if (pem.length > MAX_CHAIN_TEXT) throw new Error("chain too large");
    const certs = pemBlocks(pem).map(parseCert);
    if (certs.length === 0) throw new Error("no certificate in the chain");
    const now = Date.now();
    for (const c of certs) {
      if (now < c.notBefore || now > c.notAfter) throw new Error("certificate outside its validity");
    }
    if (certs[0].cn !== dev) throw new Error("certificate is not the device's");
    for (let i = 0; i + 1 < certs.length; i++) {
      if (!certs[i + 1].isCA) throw new Error("issuer is not a CA");
      await checkSignedBy(certs[i], certs[i + 1]);
    }
    const last = certs[certs.length - 1];
    let anchored = false;
    for (const r of roots) {
      try { await checkSignedBy(last, r); anchored = true; break; } catch (e) { /* next anchor */ }
    }
    if (!anchored) throw new Error("chain does not lead to ca.crt");
    return importKey(certs[0]);
  }

  // sign1 verifies a COSE_Sign1 (bytes) with a device key from deviceKey
  // and resolves to the signed payload, or rejects with the reason.
  async function sign1(msg, dev, k) {
    let v = CBOR.decode(msg);
    if (v instanceof CBOR.Tagged) {
      if (v.tag !== 18) throw new Error("not a COSE_Sign1");
      v = v.value;
    }
    if (!Array.isArray(v) || v.length !== 4) throw new Error("not a COSE_Sign1");
    const [prot, unprot, payload, sig] = v;
    if (!(prot instanceof Uint8Array) || !(unprot instanceof Map) || !(payload instanceof Uint8Array) || !(sig instanceof Uint8Array)) {
      throw new Error("malformed COSE_Sign1");
    }
    const ph = prot.length ? CBOR.decode(prot) : new Map();
    if (!(ph instanceof Map)) throw new Error("malformed protected header");
    if (ph.get(1) !== k.alg) throw new Error("algorithm does not match the device key");
    const kid = ph.has(4) ? ph.get(4) : unprot.get(4);
    if (kid !== undefined && !(kid instanceof Uint8Array && eq(kid, new TextEncoder().encode(dev)))) {
      throw new Error("kid is not the device");
    }
    const tbs = CBOR.sigStructure(prot, payload);
    const params = k.alg === -7 ? { name: "ECDSA", hash: "SHA-256" } : { name: "Ed25519" };
    if (!(await crypto.subtle.verify(params, k.key, sig, tbs))) throw new Error("signature does not verify");
    return payload;
  }

  return { anchors, deviceKey, sign1 };
})();
