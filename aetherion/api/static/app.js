// AETHERION dashboard: REST for the starting picture, then the three WebSocket streams.
// Plain browser JavaScript, no dependencies. Every value from the server reaches the page through
// textContent or the canvas, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "aetherion.apiKey";
  const MAX_CANDLES = 240;
  const MAX_FEED = 12;
  const MAX_TRANSITIONS = 6;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const COLORS = {
    up: "#26a69a", down: "#ef5350", grid: "#2a3140", text: "#8b95a7", last: "#e0b44c",
  };

  const cards = new Map(); // market id -> card (DOM nodes and the market's live state)
  const dirty = new Set(); // cards to redraw on the next animation frame
  let timeframe = null;
  let askedForKey = false;
  let keyPrompt = null;
  let badMessages = 0;

  class AuthError extends Error {}

  const $ = (sel, root = document) => root.querySelector(sel);

  // ---- access: ask for the API key once, keep it for the tab's session --------------------
  function apiKey() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  function askKey(force) {
    if (keyPrompt) return keyPrompt;
    if (askedForKey && !force) return Promise.resolve(false);
    askedForKey = true;
    keyPrompt = new Promise((resolve) => {
      setTimeout(() => { // out of the fetch or socket callback: prompt() blocks the page
        const typed = (window.prompt("This AETHERION server needs its API key:", "") || "").trim();
        keyPrompt = null;
        if (typed) sessionStorage.setItem(KEY_STORE, typed);
        $("#key").hidden = Boolean(typed);
        if (!typed) notice("An API key is needed to see this server's data.");
        resolve(Boolean(typed));
      }, 0);
    });
    return keyPrompt;
  }

  async function api(path) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const key = apiKey();
      const r = await fetch(path, { headers: key ? { "X-API-Key": key } : {}, cache: "no-store" });
      if (r.status === 401) {
        if (apiKey() !== key) continue; // a key was entered meanwhile
        if (key) sessionStorage.removeItem(KEY_STORE); // refused: don't keep sending it
        if (await askKey(false)) continue;
        $("#key").hidden = false;
        throw new AuthError(key ? "the API key was refused" : "an API key is needed");
      }
      if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
      return r.json();
    }
    throw new AuthError("the API key was refused");
  }

  function wsUrl(stream) {
    const u = new URL(`/ws/${stream}`, location.href);
    u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey();
    if (key) u.searchParams.set("token", key);
    return u.href;
  }

  // ---- formatting ----------------------------------------------------------------------
  function fmt(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    const digits = Math.abs(x) >= 1000 ? 2 : Math.abs(x) >= 1 ? 3 : 5;
    return x.toLocaleString("en-US",
      { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function hms(ms) {
    return new Date(ms).toISOString().slice(11, 19);
  }

  function notice(text) {
    const el = $("#notice");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ---- cards -----------------------------------------------------------------------------
  function addCard(m) {
    const node = $("#market-card").content.firstElementChild.cloneNode(true);
    node.dataset.market = m.id;
    $(".id", node).textContent = m.id;
    $(".venue", node).textContent = m.venue;
    $(".symbol", node).textContent = m.symbol;
    const error = document.createElement("p"); // the connector's last error, when it had one
    error.className = "error";
    error.hidden = true;
    $(".head", node).after(error);
    $("#markets").append(node);
    const card = {
      id: m.id, node, canvas: $(".chart", node), candles: [], price: null, seen: new Set(),
    };
    cards.set(m.id, card);
    setState(card, m);
    return card;
  }

  function setState(card, m) { // connector state, and the venue's session when it is closed
    const el = $(".state", card.node);
    const closed = m.session === "closed" && Number.isFinite(m.next_open_ms);
    const opens = closed ? new Date(m.next_open_ms).toISOString().slice(0, 16).replace("T", " ")
      : "";
    el.textContent = (m.state || "") + (closed ? ` · session closed, opens ${opens} UTC` : "");
    el.dataset.state = m.state || "";
    setError(card, m);
  }

  function setError(card, m) { // red while not live; once live again, dim as the last one
    const el = $(".error", card.node);
    el.hidden = !m.last_error;
    if (!m.last_error) return;
    const when = Number.isFinite(m.last_error_at) ? ` ${hms(m.last_error_at)}` : "";
    const tries = m.reconnects ? ` · ${m.reconnects} reconnect${m.reconnects > 1 ? "s" : ""}` : "";
    const label = m.state === "live" ? "last error" : "error";
    el.textContent = `${label}${when}${tries}: ${m.last_error}`;
    el.title = el.textContent;
    el.dataset.current = String(m.state !== "live");
  }

  function setText(card, sel, value) {
    $(sel, card.node).textContent = value;
  }

  function setPrice(card, price) {
    if (price === null || price === undefined) return;
    const el = $(".price", card.node);
    if (card.price !== null && price !== card.price) {
      el.dataset.move = price > card.price ? "up" : "down";
    }
    card.price = price;
    dirty.add(card);
  }

  function setRegime(card, regime, confidence, strategy) {
    const el = $(".regime", card.node);
    el.textContent = regime || "unknown";
    el.dataset.regime = regime || "unknown";
    const c = Number.isFinite(confidence) ? confidence : 0;
    setText(card, ".confidence", `${Math.round(c * 100)}%`);
    $(".conf-bar i", card.node).style.width = `${Math.round(c * 100)}%`;
    setText(card, ".strategy", strategy || "–");
  }

  function applySnapshot(card, s) {
    setPrice(card, s.price);
    setText(card, ".bid", fmt(s.bid));
    setText(card, ".ask", fmt(s.ask));
    setRegime(card, s.regime, s.confidence, s.strategy);
    const bar = s.bars && s.bars[timeframe];
    if (bar) upsertCandle(card, bar);
  }

  function prepend(list, li, max) {
    list.prepend(li);
    while (list.children.length > max) list.lastElementChild.remove();
  }

  function addTransition(card, t) {
    const li = document.createElement("li");
    li.textContent = `${hms(t.open_time)}  ${t.from_regime} → ${t.to_regime}` +
      (Number.isFinite(t.confidence) ? ` (${Math.round(t.confidence * 100)}%)` : "") +
      (t.to_strategy ? `  ${t.to_strategy}` : "");
    if (t.cause) li.title = t.cause;
    li.dataset.regime = t.to_regime;
    prepend($(".transitions", card.node), li, MAX_TRANSITIONS);
  }

  function addDecision(card, d, source) {
    if (card.seen.has(d.id)) return;
    card.seen.add(d.id);
    if (card.seen.size > 1000) card.seen = new Set([...card.seen].slice(-MAX_FEED));
    const li = document.createElement("li");
    li.dataset.id = d.id;
    li.dataset.action = d.action;
    li.dataset.source = source;
    if (d.suppressed) li.dataset.suppressed = "true";
    const action = document.createElement("b");
    action.textContent = d.action;
    li.append(`${hms(d.bar_time)} `, action, ` ${fmt(d.price)}  ${d.rule}`);
    li.title = [d.reason, `regime ${d.regime} ${d.confidence ?? ""}`, `strategy ${d.strategy}`,
      `${d.position_before} → ${d.position_after}`].filter(Boolean).join("\n");
    prepend($(".feed", card.node), li, MAX_FEED);
    const pos = $(".position", card.node);
    pos.textContent = d.position_after;
    pos.dataset.position = d.position_after;
  }

  // ---- candles ---------------------------------------------------------------------------
  function upsertCandle(card, bar) {
    if (bar.timeframe !== timeframe) return;
    const cs = card.candles;
    const last = cs[cs.length - 1];
    if (!last || bar.open_time > last.open_time) {
      cs.push(bar); // a new interval
      if (cs.length > MAX_CANDLES) cs.splice(0, cs.length - MAX_CANDLES);
    } else {
      const i = cs.findIndex((c) => c.open_time === bar.open_time);
      if (i >= 0 && (bar.revision ?? 0) >= (cs[i].revision ?? 0)) cs[i] = bar; // update or revision
    }
    dirty.add(card);
  }

  async function loadCandles(card) {
    const tf = timeframe;
    const q = new URLSearchParams({ timeframe: tf, limit: String(MAX_CANDLES) });
    const got = await api(`/api/market/candles/${encodeURIComponent(card.id)}?${q}`);
    if (tf !== timeframe) return;
    const merged = new Map(got.candles.map((c) => [c.open_time, c]));
    for (const c of card.candles) { // live bars received while the request was out
      const stored = merged.get(c.open_time);
      if (!stored || (c.revision ?? 0) > (stored.revision ?? 0)) merged.set(c.open_time, c);
    }
    card.candles = [...merged.values()].sort((a, b) => a.open_time - b.open_time)
      .slice(-MAX_CANDLES);
    dirty.add(card);
  }

  function niceStep(range, ticks) {
    const raw = range / ticks;
    const p = 10 ** Math.floor(Math.log10(raw));
    const m = raw / p;
    return (m >= 5 ? 10 : m >= 2 ? 5 : m >= 1 ? 2 : 1) * p;
  }

  function drawChart(card) {
    const cv = card.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth;
    const h = cv.clientHeight;
    if (!w || !h) return;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const axis = 72;
    const slot = 7;
    const top = 8;
    const bottom = h - 18;
    const cs = card.candles.slice(-Math.max(1, Math.floor((w - axis - 4) / slot)));
    cv.dataset.timeframe = timeframe;
    cv.dataset.candles = String(cs.length);
    cv.dataset.lastOpen = cs.length ? String(cs[cs.length - 1].open_time) : "";
    if (!cs.length) return;
    let lo = Math.min(...cs.map((c) => c.low));
    let hi = Math.max(...cs.map((c) => c.high));
    if (card.price !== null) { lo = Math.min(lo, card.price); hi = Math.max(hi, card.price); }
    const pad = (hi - lo || Math.abs(hi) * 1e-4 || 1) * 0.08;
    lo -= pad;
    hi += pad;
    const y = (v) => top + ((hi - v) / (hi - lo)) * (bottom - top);
    ctx.font = "11px ui-monospace, monospace";
    ctx.textBaseline = "middle";
    const step = niceStep(hi - lo, 4);
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) {
      ctx.fillStyle = COLORS.grid;
      ctx.fillRect(0, Math.round(y(v)), w - axis, 1);
      ctx.fillStyle = COLORS.text;
      if (card.price === null || Math.abs(y(v) - y(card.price)) > 12) {
        ctx.fillText(fmt(v), w - axis + 6, y(v)); // the last price's label wins
      }
    }
    cs.forEach((c, i) => {
      const x = 2 + i * slot;
      ctx.fillStyle = c.close >= c.open ? COLORS.up : COLORS.down;
      ctx.globalAlpha = c.closed ? 1 : 0.6;
      ctx.fillRect(x + Math.floor(slot / 2) - 0.5, y(c.high), 1, Math.max(1, y(c.low) - y(c.high)));
      const bodyTop = y(Math.max(c.open, c.close));
      ctx.fillRect(x + 1, bodyTop, slot - 2, Math.max(1, y(Math.min(c.open, c.close)) - bodyTop));
    });
    ctx.globalAlpha = 1;
    ctx.fillStyle = COLORS.text;
    ctx.textBaseline = "alphabetic";
    for (let i = 0; i < cs.length; i += 20) ctx.fillText(hms(cs[i].open_time), 2 + i * slot, h - 4);
    if (card.price !== null) {
      ctx.fillStyle = COLORS.last;
      ctx.fillRect(0, Math.round(y(card.price)), w - axis, 1);
      ctx.textBaseline = "middle";
      ctx.fillText(fmt(card.price), w - axis + 6, y(card.price));
    }
  }

  function frame() {
    for (const card of dirty) {
      try {
        setText(card, ".price", fmt(card.price));
        drawChart(card);
      } catch (e) {
        console.warn("draw failed", card.id, e);
      }
    }
    dirty.clear();
    requestAnimationFrame(frame);
  }

  // ---- streams ---------------------------------------------------------------------------
  const handlers = {
    snapshot: (card, m) => applySnapshot(card, m),
    tick: (card, m) => setPrice(card, m.price),
    ticks: (card, m) => setPrice(card, m.ticks[m.ticks.length - 1].price),
    bar: (card, m) => upsertCandle(card, m),
    features: () => {},
    regime: (card, m) => {
      if (m.timeframe === "fused") setRegime(card, m.regime, m.confidence, m.strategy);
    },
    transition: (card, m) => addTransition(card, m),
    decision: (card, m) => addDecision(card, m, "ws"),
  };

  function onMessage(ev) {
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      badMessages++;
      return;
    }
    const card = cards.get(m && m.market);
    const handle = handlers[m && m.type];
    if (!card || !handle) return; // another market, or a type this page does not show
    try {
      handle(card, m);
    } catch (e) {
      badMessages++;
      console.warn("message skipped", m.type, e);
    }
  }

  function connect(stream, onOpen) {
    const el = $(`#streams [data-stream="${stream}"]`);
    let delay = BACKOFF_MIN_MS;
    const open = () => {
      el.dataset.state = "connecting";
      const ws = new WebSocket(wsUrl(stream));
      let opened = false;
      ws.onopen = () => {
        opened = true;
        el.dataset.state = "open";
        el.title = "";
        updateNotice();
        if (onOpen) onOpen();
      };
      ws.onmessage = (ev) => {
        delay = BACKOFF_MIN_MS; // a working connection resets the back-off
        onMessage(ev);
      };
      ws.onclose = async (ev) => {
        el.dataset.state = "down";
        updateNotice();
        if (ev.code === 1008 || !opened) { // refused: a 401 on a REST probe asks for the key
          try { await api("/api/market/status"); } catch { /* still down, or no key */ }
        }
        const wait = delay * (0.5 + Math.random()); // capped, jittered back-off
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
        el.title = `reconnecting in ${(wait / 1000).toFixed(1)} s`;
        setTimeout(open, wait);
      };
    };
    open();
  }

  function updateNotice() {
    const states = [...document.querySelectorAll("#streams li")].map((li) => li.dataset.state);
    if (states.every((s) => s === "open")) notice("");
    else if (states.every((s) => s === "down")) notice("Server unreachable: reconnecting…");
  }

  // ---- start -----------------------------------------------------------------------------
  function transitionsFrom(rows) {
    const out = [];
    const asc = [...rows].reverse();
    for (let i = 1; i < asc.length; i++) {
      if (asc[i].regime !== asc[i - 1].regime) {
        out.push({ open_time: asc[i].open_time, from_regime: asc[i - 1].regime,
          to_regime: asc[i].regime, confidence: asc[i].confidence, to_strategy: asc[i].strategy });
      }
    }
    return out;
  }

  async function loadHistory(card) {
    const id = encodeURIComponent(card.id);
    const [decisions, regimes] = await Promise.all([
      api(`/api/decision/history?market=${id}&limit=${MAX_FEED}`),
      api(`/api/regime/${id}?timeframe=fused&limit=500`),
    ]);
    for (const t of transitionsFrom(regimes.regimes)) addTransition(card, t);
    for (const d of [...decisions.decisions].reverse()) addDecision(card, d, "rest");
  }

  function fillTimeframes(tfs) {
    const select = $("#timeframe");
    select.replaceChildren(...tfs.map((tf) => new Option(tf, tf)));
    timeframe = tfs[0]; // the finest: the most candles soonest
    select.value = timeframe;
    select.onchange = async () => {
      timeframe = select.value;
      for (const card of cards.values()) card.candles = [];
      await Promise.all([...cards.values()].map(loadCandles)).catch(report);
    };
  }

  async function poll() {
    try {
      const status = await api("/api/market/status");
      for (const m of status.markets) if (cards.has(m.id)) setState(cards.get(m.id), m);
      const snaps = await Promise.all([...cards.keys()].map(
        (id) => api(`/api/market/snapshot/${encodeURIComponent(id)}`)));
      for (const s of snaps) {
        const card = cards.get(s.market);
        setText(card, ".bid", fmt(s.bid));
        setText(card, ".ask", fmt(s.ask));
      }
    } catch { /* the streams report the outage */ }
  }

  function report(e) {
    notice(e instanceof AuthError ? `Access refused: ${e.message}.` : `Error: ${e.message}`);
  }

  async function start() {
    const status = await api("/api/market/status");
    const snaps = await Promise.all(status.markets.map(
      (m) => api(`/api/market/snapshot/${encodeURIComponent(m.id)}`)));
    fillTimeframes(Object.keys(snaps[0]?.bars || {}));
    status.markets.forEach((m, i) => applySnapshot(addCard(m), snaps[i]));
    await Promise.all([...cards.values()].flatMap((c) => [loadCandles(c), loadHistory(c)]));
    // Reconnecting after a restart: the candles stored meanwhile fill the gap.
    connect("market", () => Promise.all([...cards.values()].map(loadCandles)).catch(report));
    connect("regime");
    connect("decision");
    setInterval(poll, 2000);
  }

  async function boot(delay = BACKOFF_MIN_MS) {
    try {
      await start();
      notice("");
    } catch (e) {
      report(e);
      cards.clear();
      $("#markets").replaceChildren();
      if (e instanceof AuthError) return; // waits for the key button
      setTimeout(() => boot(Math.min(delay * 2, BACKOFF_MAX_MS)), delay * (0.5 + Math.random()));
    }
  }

  $("#key").onclick = async () => {
    if (await askKey(true)) location.reload();
  };
  window.aetherion = { cards, get badMessages() { return badMessages; } };
  requestAnimationFrame(frame);
  boot();
})();
