// The clinician web view: sign in with an app token, then the live vitals of
// the token's sites over MQTT over WebSocket. Every value from the broker is
// put into the page with textContent, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "vitalgate-token", SITES_KEY = "vitalgate-sites";
  const MAX_MESSAGE = 2 * 65536 + 4096;
  const MAX_POINTS = 240, MAX_EVENTS = 50, MAX_SEEN = 20000;
  // Bounds on what a stream of messages can make the page hold.
  const MAX_DEVICES = 1000, MAX_GATEWAYS = 200, MAX_OBS = 64;
  const $ = (id) => document.getElementById(id);

  let cfg = null, roots = [], byCode = new Map();
  let client = null, expiryTimer = null, session = 0;
  let devices = new Map(), gateways = new Map(), keys = new Map(), seen = new Set();

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  const SITE = /^[A-Za-z0-9._-]{1,64}$/;

  // siteList reads sites from a claim or the form: an array of names, or
  // names separated by spaces or commas.
  function siteList(v) {
    const list = Array.isArray(v) ? v : typeof v === "string" ? v.split(/[\s,]+/).filter((x) => x) : [];
    return list.every((s) => typeof s === "string" && SITE.test(s)) ? list.slice(0, 64) : [];
  }

  // claimsOf decodes the token's claims (the broker checks its signature;
  // the page reads only which sites to show, the role and the expiry).
  function claimsOf(token, siteField) {
    const parts = token.split(".");
    if (parts.length !== 3) throw new Error("this is not an app token (a JWT has three parts)");
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    let c;
    try {
      c = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0))));
    } catch (e) {
      throw new Error("this is not an app token (its claims do not decode)");
    }
    if (c === null || typeof c !== "object") throw new Error("this is not an app token");
    const sites = siteField ? siteList(siteField) : siteList(claimAt(c, cfg.sites_claim) ?? c.sites);
    if (sites.length === 0) {
      throw new Error(siteField ? "the sites are not site names" : "the token names no sites: enter the sites to show");
    }
    if (typeof c.exp !== "number") throw new Error("the token has no expiry");
    let role = claimAt(c, cfg.role_claim) ?? c.role;
    if (Array.isArray(role)) role = role.includes("operator") ? "operator" : "clinician";
    return { sub: String(c.sub || "app"), role: typeof role === "string" && role ? role : "clinician", exp: c.exp, sites };
  }

  // claimAt reads a claim by name, or, when no claim has that name and it
  // has dots, by its path into nested objects (an identity provider's
  // realm_access.roles), as the broker does.
  function claimAt(c, name) {
    if (Object.prototype.hasOwnProperty.call(c, name)) return c[name];
    let v = c;
    for (const k of name.split(".")) {
      if (v === null || typeof v !== "object" || !Object.prototype.hasOwnProperty.call(v, k)) return undefined;
      v = v[k];
    }
    return v;
  }

  async function loadConfig() {
    if (cfg) return;
    const r = await fetch("/config.json", { cache: "no-store" });
    if (!r.ok) throw new Error("the server's configuration did not load (" + r.status + ")");
    cfg = await r.json();
    roots = Verify.anchors(cfg.ca);
    for (const m of cfg.measurements) for (const code of m.codes) byCode.set(code, m);
  }

  // --- sign-in and sign-out ---

  function showSignIn(msg) {
    $("dash").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin").hidden = false;
    $("signin-msg").textContent = msg || "";
    $("token").value = "";
    $("sites").value = "";
    $("token").focus();
  }

  function signOut(msg) {
    session++;
    if (client) { client.end(true); client = null; }
    clearTimeout(expiryTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SITES_KEY);
    for (const d of devices.values()) {
      if (d.plot) d.plot.destroy();
      for (const w of d.waves || []) w.destroy();
    }
    devices = new Map(); gateways = new Map(); keys = new Map(); seen = new Set();
    for (const id of ["devices", "gateways", "events"]) $(id).replaceChildren();
    showSignIn(msg);
  }

  async function signIn(token, siteField) {
    let c;
    try {
      await loadConfig();
      c = claimsOf(token, siteField);
    } catch (e) {
      signOut("Sign-in failed: " + e.message + ".");
      return;
    }
    const left = c.exp * 1000 - Date.now();
    if (left <= 0) {
      signOut("That token has expired: ask for a new one.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(SITES_KEY, siteField || "");
    $("signin").hidden = true;
    $("dash").hidden = false;
    $("signout").hidden = false;
    $("who").textContent = c.sub + " · " + c.role + " · " + c.sites.join(", ");
    $("sec-note").textContent = "";
    armExpiry(c.exp);
    connect(token, c.sites);
  }

  // armExpiry signs out at exp (Unix seconds); a timer runs at most about
  // 24 days, so a longer wait is taken in steps.
  function armExpiry(exp) {
    const left = exp * 1000 - Date.now();
    if (left <= 0) {
      signOut("Your token expired: sign in with a new one.");
      return;
    }
    expiryTimer = setTimeout(() => armExpiry(exp), Math.min(left, 2147483647));
  }

  // --- MQTT ---

  function connect(token, sites) {
    const mine = ++session;
    const url = "wss://" + location.hostname + ":" + cfg.ws_port + "/";
    setStatus("Connecting to " + url + " …");
    const rnd = new Uint8Array(6);
    crypto.getRandomValues(rnd);
    client = mqtt.connect(url, {
      protocolVersion: 5, username: "app", password: token, clean: true,
      clientId: "web-" + Array.from(rnd, (b) => b.toString(16).padStart(2, "0")).join(""),
      reconnectPeriod: 5000, connectTimeout: 10000, resubscribe: false,
      timerVariant: "native", // worker timers would need a blob: worker, which the CSP forbids
    });
    const live = () => mine === session;
    client.on("connect", () => {
      if (!live()) return;
      setStatus("Connected.");
      subscribe(sites, live);
    });
    client.on("error", (err) => {
      if (!live()) return;
      const code = err && err.code;
      if (code === 134 || code === 135 || code === 4 || code === 5) {
        signOut("The broker refused the token (not authorized): sign in with a valid one.");
      } else {
        setStatus("Connection problem: " + (err && err.message ? err.message : "unknown") + "; retrying.");
      }
    });
    client.on("disconnect", (pk) => {
      if (!live()) return;
      if (pk && pk.reasonCode === 135) signOut("The broker ended the session: the token expired or was revoked.");
    });
    client.on("offline", () => { if (live()) setStatus("Connection lost; reconnecting …"); });
    client.on("message", (topic, payload) => { if (live()) onMessage(topic, payload); });
  }

  function subscribe(sites, live) {
    // The chains first, so that they come before the records they check.
    // The SUBACKs come back in order: security's, the last, sees the rest.
    const kinds = ["certs", "telemetry", "gateways", "security"];
    const refusedAll = [];
    for (const kind of kinds) {
      const filters = sites.map((s) => kind === "gateways" ? "gateways/" + s + "/+/status" : kind + "/" + s + "/#");
      client.subscribe(filters, { qos: 1 }, (err, granted) => {
        if (!live()) return;
        const refused = err ? filters : (granted || []).filter((g) => g.qos >= 128).map((g) => g.topic);
        if (kind === "security" && refused.length > 0 && refusedAll.length === 0) {
          $("sec-note").textContent = "Security events: operators only.";
          return;
        }
        refusedAll.push(...refused);
        if (refusedAll.length > 0) setStatus("Not authorized for " + refusedAll.join(", ") + ".");
      });
    }
  }

  function setStatus(s) { $("status").textContent = s; }

  function onMessage(topic, payload) {
    const lv = topic.split("/");
    if (payload.length > MAX_MESSAGE) return;
    try {
      if (lv[0] === "certs" && lv.length === 3) onChain(lv[1], lv[2], payload);
      else if (lv[0] === "telemetry" && lv.length === 4) onRecord(topic, lv, payload);
      else if (lv[0] === "gateways" && lv.length === 4 && lv[3] === "status") onGateway(lv[1], lv[2], payload);
      else if (lv[0] === "security" && lv.length === 3) onEvent(lv[1], payload);
    } catch (e) {
      setStatus("A message on " + topic + " could not be read: " + e.message);
    }
  }

  // --- device certificates and signatures ---

  function onChain(site, dev, payload) {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
    const id = site + "/" + dev;
    if (!keys.has(id) && keys.size >= MAX_DEVICES) return;
    const prev = keys.get(id);
    let k = Verify.deviceKey(text, dev, roots).then((key) => ({ key }), (e) => ({ err: e.message }));
    // A chain that does not check out does not replace one that did (as
    // the broker's watcher keeps its keys): garbage on certs/ must not
    // make the device's real records look forged.
    if (prev) k = Promise.all([prev, k]).then(([p, n]) => (n.err && !p.err ? p : n));
    keys.set(id, k);
    const d = devices.get(site + "/" + dev);
    if (d) for (const m of d.latest.values()) check(d, m); // re-check what arrived before the chain
  }

  // judge checks m's signature: "verified", "unverified" (with why) or
  // "nocert" (no chain of the device yet).
  async function judge(d, m) {
    const pending = keys.get(d.site + "/" + d.dev);
    if (!pending) return { state: "nocert", detail: "" };
    const k = await pending;
    if (k.err) return { state: "unverified", detail: "device certificate: " + k.err };
    try {
      const signed = await Verify.sign1(m.sig, d.dev, k.key);
      const rec = toPlain(CBOR.decode(signed));
      if (canon(rec) !== canon(m.rec)) return { state: "unverified", detail: "the record differs from what the device signed" };
      return { state: "verified", detail: "" };
    } catch (e) {
      return { state: "unverified", detail: e.message };
    }
  }

  // check judges m and shows the result if m is still its kind's latest.
  async function check(d, m) {
    const { state, detail } = await judge(d, m);
    m.state = state;
    const cur = d.latest.get(m.rec.kind);
    if (cur === m) showSig(d, m.rec.kind, state, detail);
    return state;
  }

  function toPlain(v) {
    if (v instanceof Map) {
      const o = Object.create(null);
      for (const [k, x] of v) o[String(k)] = toPlain(x);
      return o;
    }
    if (Array.isArray(v)) return v.map(toPlain);
    if (v instanceof CBOR.Tagged) throw new Error("unexpected tag");
    return v;
  }

  function canon(v) {
    if (Array.isArray(v)) return "[" + v.map(canon).join(",") + "]";
    if (v instanceof Uint8Array) return "h" + Array.from(v).join(".");
    if (v !== null && typeof v === "object") {
      return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canon(v[k])).join(",") + "}";
    }
    return JSON.stringify(v);
  }

  // --- records ---

  function decodeMessage(payload) {
    if (payload[0] === 0x7b) { // '{': JSON
      const m = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
      if (typeof m.sig !== "string") throw new Error("sig missing");
      m.sig = Uint8Array.from(atob(m.sig), (c) => c.charCodeAt(0));
      return m;
    }
    const m = toPlainShallow(CBOR.decode(payload));
    m.rec = toPlain(m.rec);
    return m;
  }

  function toPlainShallow(v) {
    if (!(v instanceof Map)) throw new Error("not a map");
    const o = Object.create(null);
    for (const [k, x] of v) o[String(k)] = x;
    return o;
  }

  function onRecord(topic, lv, payload) {
    const m = decodeMessage(payload);
    const r = m.rec;
    if (m.v !== 1 || typeof m.id !== "string" || !r || typeof r !== "object" || !Array.isArray(r.obs)) {
      throw new Error("not a version 1 message");
    }
    if (!(m.sig instanceof Uint8Array) || m.sig.length < 16) throw new Error("sig is not a signature");
    // A redelivery is the same bytes; a message that only claims a
    // record's id (anyone on the way can write one) must not make the
    // real record a duplicate: the key holds the signature's end too.
    const seenKey = m.id + " " + Array.from(m.sig.subarray(m.sig.length - 16)).join(".");
    if (seen.has(seenKey)) return;
    seen.add(seenKey);
    if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);
    const d = device(lv[1], lv[2]);
    if (!d) return;
    if (lv[1] !== m.site || lv[2] !== r.dev || lv[3] !== r.kind || m.id !== r.dev + ":" + r.seq) {
      showRecord(d, m, lv[3]);
      showSig(d, lv[3], "unverified", "the topic or id does not match the record");
      return;
    }
    // The latest record of a kind is shown; one found not verified does
    // not keep its place (a forged record with a huge seq would otherwise
    // hide the device's real ones).
    const cur = d.latest.get(r.kind);
    const latest = !cur || cur.rec.seq < r.seq || cur.state === "unverified";
    if (latest) {
      d.latest.set(r.kind, m);
      showRecord(d, m, r.kind);
      showSig(d, r.kind, "checking", "");
    }
    // Only records not found forged go into the trend.
    (latest ? check(d, m) : judge(d, m).then((j) => j.state)).then((state) => {
      if (state !== "unverified" && mine(d)) addPoints(d, r);
    });
  }

  // mine: d is still on the page (not a device of a signed-out session).
  function mine(d) { return devices.get(d.site + "/" + d.dev) === d; }

  function device(site, dev) {
    const key = site + "/" + dev;
    let d = devices.get(key);
    if (d) return d;
    if (devices.size >= MAX_DEVICES) {
      setStatus("Showing the first " + MAX_DEVICES + " devices only.");
      return null;
    }
    const card = el("article", "device");
    card.tabIndex = 0;
    card.dataset.dev = dev;
    card.dataset.site = site;
    const h = el("h3", "", dev);
    h.id = "dev-" + devices.size;
    card.setAttribute("aria-labelledby", h.id);
    const sub = el("p", "sub", site);
    const kinds = el("div", "kinds");
    const chart = el("div", "chart");
    chart.setAttribute("aria-hidden", "true");
    card.append(h, sub, kinds, chart);
    const after = Array.from(devices.keys()).filter((k) => k > key).sort()[0];
    $("devices").insertBefore(card, after ? devices.get(after).card : null); // in order of site and device
    d = { site, dev, card, kinds, chart, latest: new Map(), kindEls: new Map(), series: new Map(), plot: null };
    devices.set(key, d);
    return d;
  }

  function showRecord(d, m, kind) {
    let k = d.kindEls.get(kind);
    if (!k) {
      if (d.kindEls.size >= 8) return; // six kinds exist
      k = { box: el("section", "kind"), values: el("dl", "values"), meta: el("p", "meta"), sig: el("p", "sig") };
      k.box.dataset.kind = kind;
      k.box.append(el("h4", "", kind), k.values, k.meta, k.sig);
      d.kinds.append(k.box);
      d.kindEls.set(kind, k);
    }
    const r = m.rec;
    const rows = [], waves = [];
    for (const o of r.obs.slice(0, MAX_OBS)) {
      const meas = byCode.get(o.code);
      const label = meas ? meas.label : OTHER_LABELS.get(o.code) || String(o.code);
      const dt = el("dt", "", label);
      const dd = el("dd");
      dd.dataset.code = String(o.code);
      if (Array.isArray(o.val)) {
        dd.textContent = o.val.length + " samples, " + String(o.unit);
        waves.push(o);
      } else {
        const v = el("span", "num", fmt(o.val));
        dd.append(v, " ", el("span", "unit", meas ? meas.unit : String(o.unit)));
        const a = alertOf(meas, o.val);
        if (a) {
          dd.classList.add("alert");
          dd.dataset.alert = a;
          dd.append(" ", el("strong", "flag", a === "low" ? "LOW" : "HIGH"));
        }
      }
      rows.push(dt, dd);
    }
    k.values.replaceChildren(...rows);
    drawWave(d, k, waves[0]);
    const when = new Date(Number(r.ts));
    let meta = "#" + r.seq + " · " + (isNaN(when) ? "?" : when.toLocaleString()) + " · via " + String(m.gw);
    if (typeof r.bat === "number") meta += " · battery " + r.bat + " %";
    if (m.fw_below_min === true) meta += " · firmware below the site's minimum";
    k.meta.textContent = meta;
  }

  // drawWave draws a waveform's samples (an ECG strip) over their time.
  function drawWave(d, k, o) {
    if (!o || typeof uPlot === "undefined") return;
    const period = typeof o.period_ms === "number" && o.period_ms > 0 ? o.period_ms / 1000 : 0.004;
    const ys = o.val.map(Number);
    const xs = ys.map((_, i) => i * period);
    if (!k.wave) {
      k.wave = el("div", "wave");
      k.wave.setAttribute("aria-hidden", "true");
      k.box.insertBefore(k.wave, k.meta);
      k.wavePlot = new uPlot({
        width: chartWidth(d), height: 110, legend: { show: false }, cursor: { show: false },
        scales: { x: { time: false } },
        axes: [{ values: (u, v) => v.map((x) => x + " s") }, {}],
        series: [{}, { label: String(o.code), stroke: "#cf222e", width: 1.5, points: { show: false } }],
      }, [xs, ys], k.wave);
      d.waves = (d.waves || []).concat([k.wavePlot]);
    } else {
      k.wavePlot.setData([xs, ys]);
    }
  }

  // Labels of codes that take no alert thresholds.
  const OTHER_LABELS = new Map([["MDC_ECG_ELEC_POTL_II", "ECG lead II"]]);

  function fmt(v) {
    return typeof v === "number" ? String(Math.round(v * 100) / 100) : String(v);
  }

  function alertOf(meas, v) {
    if (!meas || typeof v !== "number") return "";
    if (typeof meas.low === "number" && v < meas.low) return "low";
    if (typeof meas.high === "number" && v > meas.high) return "high";
    return "";
  }

  const SIG_TEXT = {
    verified: "✔ signature verified",
    unverified: "✘ signature NOT verified",
    nocert: "? no device certificate yet",
    checking: "… checking signature",
  };

  function showSig(d, kind, state, detail) {
    const k = d.kindEls.get(kind);
    if (!k) return;
    k.sig.className = "sig " + state;
    k.sig.dataset.sig = state;
    k.sig.textContent = SIG_TEXT[state] + (detail ? ": " + detail : "");
  }

  // --- trend charts ---

  function addPoints(d, r) {
    const t = Number(r.ts) / 1000;
    for (const o of r.obs) {
      const meas = byCode.get(o.code);
      if (!meas || typeof o.val !== "number") continue;
      let s = d.series.get(meas.name);
      if (!s) { s = { meas, pts: [] }; d.series.set(meas.name, s); }
      s.pts.push([t, o.val]);
      if (s.pts.length > 1 && s.pts[s.pts.length - 2][0] > t) s.pts.sort((a, b) => a[0] - b[0]);
      if (s.pts.length > MAX_POINTS) s.pts.shift();
    }
    drawChart(d);
  }

  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf222e", "#57606a"];

  function drawChart(d) {
    if (d.series.size === 0 || typeof uPlot === "undefined") return;
    const names = Array.from(d.series.keys()).sort();
    const xs = Array.from(new Set([].concat(...names.map((n) => d.series.get(n).pts.map((p) => p[0]))))).sort((a, b) => a - b);
    const data = [xs];
    for (const n of names) {
      const m = new Map(d.series.get(n).pts);
      data.push(xs.map((x) => (m.has(x) ? m.get(x) : null)));
    }
    const key = names.join(",");
    if (!d.plot || d.plotKey !== key) {
      if (d.plot) d.plot.destroy();
      const series = [{}].concat(names.map((n, i) => ({
        label: d.series.get(n).meas.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: showPoints },
      })));
      d.plot = new uPlot({
        width: chartWidth(d), height: 140, series, legend: { live: false }, cursor: { show: false },
      }, data, d.chart);
      d.plotKey = key;
    } else {
      d.plot.setData(data);
    }
    const span = xs[xs.length - 1] - xs[0];
    if (span < 60) d.plot.setScale("x", { min: xs[0] - 60 + span / 2, max: xs[xs.length - 1] + 60 - span / 2 }); // not years around one point
  }

  // showPoints marks a series' values with points while they are few or
  // far apart. (uPlot's default judges by the spacing of all x values, so
  // two kinds' records a millisecond apart hid the only value of each.)
  function showPoints(u, si) {
    let n = 0;
    for (const y of u.data[si]) if (y != null) n++;
    return n <= 2 || u.bbox.width / (window.devicePixelRatio || 1) / n >= 8;
  }

  function chartWidth(d) { return Math.max(200, Math.min(560, d.card.clientWidth - 24)); }

  window.addEventListener("resize", () => {
    for (const d of devices.values()) {
      if (d.plot) d.plot.setSize({ width: chartWidth(d), height: 140 });
      for (const w of d.waves || []) w.setSize({ width: chartWidth(d), height: 110 });
    }
  });

  // --- gateways and security events ---

  function onGateway(site, gw, payload) {
    const state = new TextDecoder().decode(payload.subarray(0, 16)) === "online" ? "online" : "offline";
    const key = site + "/" + gw;
    let li = gateways.get(key);
    if (!li) {
      if (gateways.size >= MAX_GATEWAYS) return;
      li = el("li", "gw");
      li.dataset.gw = gw;
      gateways.set(key, li);
      $("gateways").append(li);
    }
    li.className = "gw " + state;
    li.dataset.state = state;
    li.textContent = gw + " (" + site + "): " + state;
  }

  function onEvent(site, payload) {
    if (payload.length > 8192) return;
    const e = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(payload));
    const li = el("li", "event");
    const when = new Date(Number(e.ts));
    li.append(
      el("time", "", isNaN(when) ? "?" : when.toLocaleTimeString()), " ",
      el("strong", "verdict", e.verdict), " ",
      el("span", "", (e.dev ? String(e.dev) + " " : "") + "at " + String(e.gw) + " (" + site + ")"), " ",
      el("span", "detail", e.detail === undefined ? "" : e.detail),
    );
    $("events").prepend(li);
    while ($("events").children.length > MAX_EVENTS) $("events").lastElementChild.remove();
  }

  // --- start ---

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      signIn($("token").value.trim(), $("sites").value.trim());
    });
    $("signout").addEventListener("click", () => signOut("Signed out."));
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) signIn(t, sessionStorage.getItem(SITES_KEY) || ""); else showSignIn("");
  });
})();
