// A small, strict CBOR (RFC 8949) decoder for the cloud messages and COSE
// envelopes, and the one encoder the signature check needs. Maps decode to
// Map (any key type, no prototype tricks), byte strings to Uint8Array, tag
// 18 to a Tagged value. Bounded: nesting depth, item counts and lengths are
// checked against the bytes that remain, integers beyond 2^53 are refused,
// indefinite lengths are refused.
"use strict";

const CBOR = (() => {
  const MAX_DEPTH = 16;

  class Tagged {
    constructor(tag, value) { this.tag = tag; this.value = value; }
  }

  function fail(msg, at) { throw new Error("CBOR: " + msg + " at byte " + at); }

  function decode(bytes) {
    if (!(bytes instanceof Uint8Array)) throw new Error("CBOR: not bytes");
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 0;
    const utf8 = new TextDecoder("utf-8", { fatal: true });

    function need(n) {
      if (n > bytes.length - pos) fail("truncated", pos);
    }
    function arg(info) {
      if (info < 24) return info;
      let v;
      switch (info) {
        case 24: need(1); v = bytes[pos]; pos += 1; return v;
        case 25: need(2); v = dv.getUint16(pos); pos += 2; return v;
        case 26: need(4); v = dv.getUint32(pos); pos += 4; return v;
        case 27: {
          need(8);
          const hi = dv.getUint32(pos), lo = dv.getUint32(pos + 4);
          pos += 8;
          if (hi > 0x1fffff) fail("integer too large", pos - 8);
          return hi * 0x100000000 + lo;
        }
        default: fail("indefinite or reserved length", pos - 1);
      }
    }
    function item(depth) {
      if (depth > MAX_DEPTH) fail("nested too deep", pos);
      need(1);
      const start = pos;
      const ib = bytes[pos++];
      const major = ib >> 5, info = ib & 31;
      if (major === 7) {
        switch (info) {
          case 20: return false;
          case 21: return true;
          case 22: return null;
          case 25: { need(2); const v = half(dv.getUint16(pos)); pos += 2; return v; }
          case 26: { need(4); const v = dv.getFloat32(pos); pos += 4; return v; }
          case 27: { need(8); const v = dv.getFloat64(pos); pos += 8; return v; }
          default: fail("unsupported simple value", start);
        }
      }
      const n = arg(info);
      switch (major) {
        case 0: return n;
        case 1: return -1 - n;
        case 2: { need(n); const b = bytes.slice(pos, pos + n); pos += n; return b; }
        case 3: { need(n); const s = utf8.decode(bytes.subarray(pos, pos + n)); pos += n; return s; }
        case 4: {
          need(n); // every item takes at least one byte
          const a = [];
          for (let i = 0; i < n; i++) a.push(item(depth + 1));
          return a;
        }
        case 5: {
          need(2 * n);
          const m = new Map();
          for (let i = 0; i < n; i++) {
            const at = pos;
            const k = item(depth + 1);
            if (typeof k === "object" && k !== null) fail("map key not a number or text", at);
            if (m.has(k)) fail("duplicate map key", at);
            m.set(k, item(depth + 1));
          }
          return m;
        }
        case 6: return new Tagged(n, item(depth + 1));
      }
      fail("bad item", start);
    }
    const v = item(0);
    if (pos !== bytes.length) fail("trailing bytes", pos);
    return v;
  }

  function half(h) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * Math.pow(2, e - 15) * (1 + f / 1024);
  }

  function head(major, n) {
    if (n < 24) return [(major << 5) | n];
    if (n < 0x100) return [(major << 5) | 24, n];
    if (n < 0x10000) return [(major << 5) | 25, n >> 8, n & 0xff];
    return [(major << 5) | 26, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
  }

  // sigStructure encodes ["Signature1", protected, h'', payload], the bytes
  // a COSE_Sign1 signs (RFC 9052 section 4.4).
  function sigStructure(protectedBytes, payload) {
    const ctx = new TextEncoder().encode("Signature1");
    const parts = [
      head(4, 4), head(3, ctx.length), ctx,
      head(2, protectedBytes.length), protectedBytes,
      head(2, 0),
      head(2, payload.length), payload,
    ];
    let len = 0;
    for (const p of parts) len += p.length;
    const out = new Uint8Array(len);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  return { decode, sigStructure, Tagged };
})();
