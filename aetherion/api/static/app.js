// AETHERION dashboard: REST for the starting picture, then the three WebSocket streams.
// Plain browser JavaScript; the one library is TradingView's Lightweight Charts (vendored).
// Every value from the server reaches the page through textContent, a chart or a canvas,
// never as HTML.
"use strict";

(() => {
  const LC = window.LightweightCharts;
  const KEY_STORE = "aetherion.apiKey";
  const MAX_CANDLES = 500;
  const MAX_FEED = 8;
  const MAX_TRANSITIONS = 6;
  const TIMELINE_ROWS = 5000; // fused rows loaded for the band: the API's page limit
  const BOOK_LEVELS = 20;
  const PNL_EVERY_MS = 5000; // the P&L reads the run's bars and decisions: not too often
  const MAX_DP = 8;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  const COLORS = {
    up: "#26a69a", down: "#ef5350", grid: "#2a3140", text: "#8b95a7", last: "#e0b44c",
    buyVol: "rgba(38, 166, 154, 0.75)", sellVol: "rgba(239, 83, 80, 0.55)",
    vol: "rgba(139, 149, 167, 0.5)", none: "#232a36",
  };
  const REGIME_COLORS = {
    bull: "#26a69a", bear: "#ef5350", sideways: "#e0b44c", crisis: "#ff7ab6", unknown: "#4a5366",
  };
  const REGIMES = ["bull", "bear", "sideways", "crisis"];
  const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

  const cards = new Map(); // market id -> card (DOM nodes, chart and the market's live state)
  const dirty = new Set(); // cards to redraw on the next animation frame
  let timeframes = [];
  let timeframe = null;
  let askedForKey = false;
  let keyPrompt = null;
  let badMessages = 0;

  class AuthError extends Error {}

  const $ = (sel, root = document) => root.querySelector(sel);
  const tfMs = (tf) => parseInt(tf, 10) * UNIT_MS[tf.slice(-1)];

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

  // ---- formatting: per-market price precision, the user's locale and time zone ------------
  const formats = new Map();
  function num(x, digits) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    if (!formats.has(digits)) {
      formats.set(digits, new Intl.NumberFormat(undefined,
        { minimumFractionDigits: digits, maximumFractionDigits: digits }));
    }
    return formats.get(digits).format(x);
  }
  const COMPACT = new Intl.NumberFormat(undefined,
    { notation: "compact", maximumSignificantDigits: 3 });
  const vol = (x) => (Number.isFinite(x) ? COMPACT.format(x) : "–");
  const price = (card, x) => num(x, card.dp);
  const signed = (x, digits = 2) => (Number.isFinite(x) && x > 0 ? "+" : "") + num(x, digits);
  const pct0 = (x) => Math.round(x * 100); // a fraction in whole percent
  const pct = (x) => (Number.isFinite(x) ? `${signed(x * 100)}%` : "–");
  const prob = (p) => (!Number.isFinite(p) ? "–"
    : p > 0.999 && p < 1 ? ">99.9%" : `${num(p * 100, 1)}%`);

  // Decimals of a price as the venue wrote it: 12 significant digits drop binary float noise
  // (167.39209999999997 -> 167.3921 -> 4).
  function decimalsOf(x) {
    const s = String(Number(Math.abs(x).toPrecision(12)));
    if (s.includes("e")) return MAX_DP;
    const dot = s.indexOf(".");
    return dot < 0 ? 0 : Math.min(s.length - dot - 1, MAX_DP);
  }

  function seePrice(card, x) {
    if (card.fixedDp || !Number.isFinite(x)) return; // the venue's tick size decides
    const d = decimalsOf(x);
    if (d <= card.dp && card.dpSeen) return;
    card.dp = card.dpSeen ? Math.max(card.dp, d) : d;
    card.dpSeen = true;
    card.candleSeries.applyOptions({ priceFormat: priceFormat(card) });
    dirty.add(card);
  }

  const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const CLOCK = new Intl.DateTimeFormat(undefined,
    { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  const HM = new Intl.DateTimeFormat(undefined,
    { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const DATETIME = new Intl.DateTimeFormat(undefined, {
    weekday: "short", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23",
  });
  const DAY = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  const utc = (ms) => `${new Date(ms).toISOString().slice(0, 19).replace("T", " ")} UTC`;

  function timeEl(ms, format = CLOCK) { // local time, UTC on hover
    const el = document.createElement("time");
    el.dateTime = new Date(ms).toISOString();
    el.textContent = format.format(ms);
    el.title = utc(ms);
    return el;
  }

  function tickLabel(t, type) { // the chart's time axis, in local time
    const ms = t * 1000;
    if (type <= 2) return DAY.format(ms);
    return (type === 4 ? CLOCK : HM).format(ms);
  }

  function notice(text) {
    const el = $("#notice");
    el.textContent = text || "";
    el.hidden = !text;
  }

  function setText(card, sel, value) {
    $(sel, card.node).textContent = value;
  }

  function canvas2d(cv) { // a crisp 2D context the size of the canvas on screen
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth;
    const h = cv.clientHeight;
    if (!w || !h) return {};
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const ctx = cv.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px ui-monospace, monospace";
    ctx.textBaseline = "middle";
    return { ctx, w, h };
  }

  // ---- cards -----------------------------------------------------------------------------
  function addCard(m) {
    const node = $("#market-card").content.firstElementChild.cloneNode(true);
    node.dataset.market = m.id;
    node.dataset.testid = `market-${m.id}`;
    for (const el of node.querySelectorAll("[data-testid]")) {
      el.dataset.testid = `${el.dataset.testid}-${m.id}`;
    }
    $(".id", node).textContent = m.id;
    $(".venue", node).textContent = m.venue;
    $(".symbol", node).textContent = m.symbol;
    $("#markets").append(node);
    const tick = Number(m.tick_size ?? m.price_increment);
    const card = {
      id: m.id, node, candles: [], drawnLast: null, changedFrom: null, price: null,
      dp: tick > 0 ? decimalsOf(tick) : 2, fixedDp: tick > 0, dpSeen: false,
      seen: new Set(), feedTop: null, regimes: [], fusedAt: -Infinity, rows: new Map(),
      book: null, marks: new Map(), position: null, entryLine: null, hover: null,
    };
    makeChart(card);
    for (const tf of [...timeframes, "fused"]) addRegimeRow(card, tf);
    cards.set(m.id, card);
    setState(card, m);
    return card;
  }

  function setState(card, m) { // connector state, and the venue's session when it is closed
    const el = $(".state", card.node);
    el.replaceChildren(m.state || "");
    el.dataset.state = m.state || "";
    if (m.session === "closed" && Number.isFinite(m.next_open_ms)) {
      el.append(" · session closed, opens ", timeEl(m.next_open_ms, DATETIME));
    }
    setError(card, m);
  }

  function setError(card, m) { // red while not live; once live again, dim as the last one
    const el = $(".error", card.node);
    el.hidden = !m.last_error;
    if (!m.last_error) return;
    const label = m.state === "live" ? "last error" : "error";
    const tries = m.reconnects ? ` · ${m.reconnects} reconnect${m.reconnects > 1 ? "s" : ""}` : "";
    el.replaceChildren(label);
    if (Number.isFinite(m.last_error_at)) el.append(" ", timeEl(m.last_error_at));
    el.append(`${tries}: ${m.last_error}`);
    el.title = el.textContent;
    el.dataset.current = String(m.state !== "live");
  }

  function setPrice(card, p) {
    if (p === null || p === undefined) return;
    seePrice(card, p);
    const el = $(".price", card.node);
    if (card.price !== null && p !== card.price) el.dataset.move = p > card.price ? "up" : "down";
    card.price = p;
    dirty.add(card);
  }

  function setQuote(card, bid, ask) {
    seePrice(card, bid);
    seePrice(card, ask);
    setText(card, ".bid", price(card, bid));
    setText(card, ".ask", price(card, ask));
    setText(card, ".spread", Number.isFinite(bid) && Number.isFinite(ask)
      ? price(card, ask - bid) : "–");
  }

  function applySnapshot(card, s) {
    setPrice(card, s.price);
    setQuote(card, s.bid, s.ask);
    const bar = s.bars && s.bars[timeframe];
    if (bar) upsertCandle(card, bar);
  }

  // ---- chart: candles, a volume pane (buy over sell), decision markers ---------------------
  function makeChart(card) {
    const el = $(".chart", card.node);
    const chart = LC.createChart(el, {
      autoSize: true,
      layout: {
        background: { color: "transparent" }, textColor: COLORS.text, fontSize: 11,
        attributionLogo: false, // the page's footer credits TradingView (their NOTICE)
        panes: { separatorColor: COLORS.grid },
      },
      grid: { vertLines: { color: COLORS.grid }, horzLines: { color: COLORS.grid } },
      rightPriceScale: { borderColor: COLORS.grid, minimumWidth: 76 },
      timeScale: {
        borderColor: COLORS.grid, timeVisible: true, secondsVisible: true,
        tickMarkFormatter: tickLabel, rightOffset: 3,
      },
      localization: { timeFormatter: (t) => DATETIME.format(t * 1000) },
      crosshair: { mode: LC.CrosshairMode.Normal },
    });
    card.chart = chart;
    card.candleSeries = chart.addSeries(LC.CandlestickSeries, {
      upColor: COLORS.up, downColor: COLORS.down, wickUpColor: COLORS.up,
      wickDownColor: COLORS.down, borderVisible: false, priceFormat: priceFormat(card),
    });
    const volume = { priceFormat: { type: "volume" }, priceLineVisible: false,
      lastValueVisible: false };
    card.volSeries = chart.addSeries(LC.HistogramSeries, volume, 1);
    card.buySeries = chart.addSeries(LC.HistogramSeries, { ...volume, color: COLORS.buyVol }, 1);
    chart.panes()[0].setStretchFactor(4);
    chart.panes()[1].setStretchFactor(1);
    card.markerApi = LC.createSeriesMarkers(card.candleSeries, []);
    chart.timeScale().subscribeVisibleLogicalRangeChange(() => dirty.add(card));
    chart.subscribeCrosshairMove((param) => {
      card.hover = param.time === undefined ? null : param.time * 1000;
      dirty.add(card);
    });
  }

  const priceFormat = (card) => ({ type: "custom", minMove: 10 ** -card.dp,
    formatter: (p) => price(card, p) });
  const toSec = (ms) => ms / 1000;
  const candlePoint = (c) => ({ time: toSec(c.open_time), open: c.open, high: c.high,
    low: c.low, close: c.close });
  const sided = (c) => c.buy_volume !== null && c.buy_volume !== undefined;
  // Sell volume shows as the part of the bar above the buy volume drawn over it.
  const volPoint = (c) => ({ time: toSec(c.open_time), value: c.volume,
    color: sided(c) ? COLORS.sellVol : COLORS.vol });
  const buyPoint = (c) => (sided(c) ? { time: toSec(c.open_time), value: c.buy_volume }
    : { time: toSec(c.open_time) });

  function upsertCandle(card, bar) {
    if (bar.timeframe !== timeframe) return;
    const cs = card.candles;
    const last = cs[cs.length - 1];
    if (!last || bar.open_time > last.open_time) {
      cs.push(bar); // a new interval
      if (cs.length > 2 * MAX_CANDLES) { // now and then, not on every bar: redrawn in full
        cs.splice(0, cs.length - MAX_CANDLES);
        card.drawnLast = null;
      }
    } else {
      const i = cs.findIndex((c) => c.open_time === bar.open_time);
      if (i < 0 || (bar.revision ?? 0) < (cs[i].revision ?? 0)) return;
      cs[i] = bar; // an update of the open bar, or a revision
    }
    card.changedFrom = Math.min(card.changedFrom ?? Infinity, bar.open_time);
    for (const p of [bar.open, bar.high, bar.low, bar.close]) seePrice(card, p);
    dirty.add(card);
  }

  function drawCandles(card) {
    const cs = card.candles;
    if (card.changedFrom === null) return;
    if (card.drawnLast === null || card.changedFrom < card.drawnLast) { // whole series again
      card.candleSeries.setData(cs.map(candlePoint));
      card.volSeries.setData(cs.map(volPoint));
      card.buySeries.setData(cs.map(buyPoint));
      card.marksDirty = true;
    } else {
      for (const c of cs.filter((x) => x.open_time >= card.changedFrom)) {
        card.candleSeries.update(candlePoint(c));
        card.volSeries.update(volPoint(c));
        card.buySeries.update(buyPoint(c));
      }
    }
    card.changedFrom = null;
    card.drawnLast = cs.length ? cs[cs.length - 1].open_time : null;
    const el = $(".chart", card.node);
    el.dataset.timeframe = timeframe;
    el.dataset.candles = String(cs.length);
    el.dataset.lastOpen = card.drawnLast === null ? "" : String(card.drawnLast);
  }

  function candleAt(card, ms) {
    return card.candles.find((c) => c.open_time === ms) || card.candles[card.candles.length - 1];
  }

  function drawLegends(card) { // the hovered bar's numbers, else the newest bar's
    const c = card.hover === null ? card.candles[card.candles.length - 1]
      : candleAt(card, card.hover);
    const ohlc = $(".ohlc", card.node);
    const volume = $(".volume", card.node);
    if (!c) return;
    ohlc.textContent = `O ${price(card, c.open)}  H ${price(card, c.high)}  ` +
      `L ${price(card, c.low)}  C ${price(card, c.close)}`;
    let text = `Vol ${vol(c.volume)}`;
    if (sided(c) && c.volume > 0) {
      text += `  buy ${vol(c.buy_volume)} (${pct0(c.buy_volume / c.volume)}%)` +
        `  sell ${vol(c.sell_volume)}`;
    } else if (!sided(c)) text += "  (sides unknown)";
    volume.textContent = text;
    volume.dataset.openTime = String(c.open_time);
    volume.style.top = `${card.chart.paneSize(0).height + 4}px`;
  }

  function addMark(card, d) {
    if (d.suppressed || (d.action !== "BUY" && d.action !== "SELL")) return;
    card.marks.set(d.bar_time, d.action);
    card.marksDirty = true;
    dirty.add(card);
  }

  function drawMarks(card) {
    if (!card.marksDirty) return;
    card.marksDirty = false;
    const step = tfMs(timeframe);
    const first = card.candles.length ? card.candles[0].open_time : Infinity;
    const marks = [...card.marks].filter(([t]) => t >= first).sort((a, b) => a[0] - b[0])
      .map(([t, action]) => ({
        time: toSec(Math.floor(t / step) * step), text: action[0],
        position: action === "BUY" ? "belowBar" : "aboveBar",
        shape: action === "BUY" ? "arrowUp" : "arrowDown",
        color: action === "BUY" ? COLORS.up : COLORS.down,
      }));
    card.markerApi.setMarkers(marks);
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
    for (const c of card.candles.slice(-20)) seePrice(card, c.close);
    card.drawnLast = null;
    card.changedFrom = -Infinity;
    dirty.add(card);
  }

  // ---- regimes: a row per timeframe and the fused one; the timeline band -----------------
  function addRegimeRow(card, tf) {
    const tr = document.createElement("tr");
    tr.dataset.testid = `regime-${card.id}-${tf}`;
    tr.dataset.timeframe = tf;
    tr.dataset.regime = "unknown";
    for (const cls of ["tf", "label", "p", "probs", "weight"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.append(td);
    }
    tr.cells[0].textContent = tf;
    tr.cells[1].textContent = "–";
    tr.cells[2].textContent = "first bar pending";
    for (const r of REGIMES) {
      const i = document.createElement("i");
      i.dataset.regime = r;
      tr.cells[3].append(i);
    }
    $(".regimes tbody", card.node).append(tr);
    card.rows.set(tf, tr);
  }

  function setRegimeRow(card, u) {
    const tr = card.rows.get(u.timeframe);
    if (!tr) return;
    const modelled = u.regime !== "unknown" || u.model_version !== null;
    tr.dataset.regime = u.regime;
    tr.dataset.openTime = String(u.open_time);
    tr.cells[1].textContent = u.regime;
    tr.cells[2].textContent = !modelled ? "no model yet" : u.regime === "unknown" ? "–"
      : prob(u.confidence);
    if (modelled && u.regime_raw !== u.regime) { // the stability rule has not followed yet
      const raw = document.createElement("span");
      raw.className = "raw";
      raw.textContent = ` now ${u.regime_raw} ${pct0(u.confidence_raw)}%`;
      tr.cells[2].append(raw);
    }
    for (const i of tr.cells[3].children) {
      i.style.width = `${100 * (u.probs?.[i.dataset.regime] ?? 0)}%`;
    }
    const probs = REGIMES.map((r) => `${r} ${prob(u.probs?.[r])}`).join(", ");
    tr.title = `${u.timeframe} at ${utc(u.open_time)}: ${u.regime} ${prob(u.confidence)}` +
      ` (raw ${u.regime_raw} ${prob(u.confidence_raw)}); ${probs};` +
      ` model v${u.model_version ?? "–"}`;
    if (u.timeframe !== "fused") return;
    setText(card, ".strategy", u.strategy || "none");
    for (const [tf, c] of Object.entries(u.contributions || {})) {
      const row = card.rows.get(tf);
      if (row) row.cells[4].textContent = Number.isFinite(c.weight) ? `${pct0(c.weight)}%` : "–";
    }
  }

  async function loadRegimes(card) { // the newest row of each timeframe
    const id = encodeURIComponent(card.id);
    const got = await Promise.all(timeframes.map(
      (tf) => api(`/api/regime/${id}?timeframe=${encodeURIComponent(tf)}&limit=1`)));
    for (const r of got) if (r.regimes.length) setRegimeRow(card, r.regimes[0]);
  }

  function addFused(card, u) { // the band keeps the change points of the fused regime
    if (u.open_time <= card.fusedAt) return; // the newest row seen is newer
    card.fusedAt = u.open_time;
    const rs = card.regimes;
    const last = rs[rs.length - 1];
    if (!last || last.regime !== u.regime) rs.push({ t: u.open_time, regime: u.regime });
    dirty.add(card);
  }

  function regimeAt(card, t) {
    const rs = card.regimes;
    let lo = 0;
    let hi = rs.length - 1;
    let found = null;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (rs[mid].t <= t) { found = rs[mid]; lo = mid + 1; } else hi = mid - 1;
    }
    return found ? found.regime : null;
  }

  function drawTimeline(card) {
    const cv = $(".timeline", card.node);
    const { ctx, w, h } = canvas2d(cv);
    if (!ctx) return;
    const ts = card.chart.timeScale();
    const plot = ts.width();
    ctx.fillStyle = COLORS.none;
    ctx.fillRect(0, 0, plot, h);
    const range = ts.getVisibleLogicalRange();
    const cs = card.candles;
    const step = tfMs(timeframe);
    const x0 = ts.logicalToCoordinate(0);
    const width = Math.max(1, (ts.logicalToCoordinate(1) ?? 1) - (x0 ?? 0));
    let shown = 0;
    if (range && cs.length) {
      const last = Math.min(cs.length - 1, Math.ceil(range.to));
      for (let i = Math.max(0, Math.floor(range.from)); i <= last; i++) {
        const regime = regimeAt(card, cs[i].open_time + step - 1); // as of the bar's close
        const x = ts.logicalToCoordinate(i);
        if (!regime || x === null) continue;
        ctx.fillStyle = REGIME_COLORS[regime] || REGIME_COLORS.unknown;
        ctx.fillRect(Math.floor(x - width / 2), 0, Math.ceil(width) + 1, h);
        shown++;
      }
    }
    const now = card.regimes[card.regimes.length - 1];
    ctx.fillStyle = COLORS.text;
    if (now) ctx.fillText(now.regime, plot + 6, h / 2);
    else ctx.fillText("no regime yet", 4, h / 2);
    cv.dataset.from = card.regimes.length ? String(card.regimes[0].t) : "";
    cv.dataset.regime = now ? now.regime : "";
    cv.dataset.changes = String(card.regimes.length);
    cv.dataset.bars = String(shown);
  }

  async function loadTimeline(card) { // fused rows over the chart's period
    const id = encodeURIComponent(card.id);
    const since = card.candles.length ? card.candles[0].open_time : Date.now() - 3_600_000;
    const got = await api(`/api/regime/${id}?timeframe=fused&limit=${TIMELINE_ROWS}` +
      `&since=${since}`);
    const rows = [...got.regimes].reverse();
    const live = card.regimes; // change points that came while the rows were on their way
    card.regimes = [];
    card.fusedAt = -Infinity;
    for (const r of rows) addFused(card, r);
    for (const r of live) addFused(card, { open_time: r.t, regime: r.regime });
    const list = $(".transitions", card.node);
    list.replaceChildren();
    for (const t of transitionsFrom(rows)) addTransition(card, t);
    if (rows.length) setRegimeRow(card, rows[rows.length - 1]);
  }

  function transitionsFrom(rows) { // rows oldest first
    const out = [];
    for (let i = 1; i < rows.length; i++) {
      if (rows[i].regime !== rows[i - 1].regime) {
        out.push({ open_time: rows[i].open_time, from_regime: rows[i - 1].regime,
          to_regime: rows[i].regime, confidence: rows[i].confidence,
          to_strategy: rows[i].strategy });
      }
    }
    return out.slice(-MAX_TRANSITIONS);
  }

  function prepend(list, li, max) {
    list.prepend(li);
    while (list.children.length > max) list.lastElementChild.remove();
  }

  function addTransition(card, t) {
    const li = document.createElement("li");
    li.dataset.regime = t.to_regime;
    li.dataset.openTime = String(t.open_time);
    const to = document.createElement("b");
    to.textContent = t.to_regime;
    li.append(timeEl(t.open_time), ` ${t.from_regime} → `, to,
      t.to_regime !== "unknown" && Number.isFinite(t.confidence) ? ` ${prob(t.confidence)}` : "",
      t.to_strategy ? `  ${t.to_strategy}` : "");
    if (t.cause) li.title = t.cause;
    prepend($(".transitions", card.node), li, MAX_TRANSITIONS);
  }

  // ---- decisions: the feed with reasons, the position ------------------------------------
  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function feedItem(d) { // time, action, price, [suppressed], reason, count
    const li = document.createElement("li");
    li.dataset.action = d.action;
    if (d.suppressed) li.dataset.suppressed = "true";
    const action = document.createElement("b");
    action.textContent = d.action;
    li.append(document.createElement("time"), " ", action, span("px", ""));
    if (d.suppressed) {
      const tag = document.createElement("i");
      tag.className = "sup";
      tag.textContent = "suppressed";
      li.append(tag, " ");
    }
    const reason = span("reason", "");
    reason.dataset.testid = "decision-reason";
    li.append(reason, span("count", ""));
    return li;
  }

  function showDecision(card, li, d, source, count) {
    li.dataset.id = d.id;
    li.dataset.source = source;
    $("time", li).replaceWith(timeEl(d.bar_time));
    $(".px", li).textContent = ` ${price(card, d.price)} `;
    $(".reason", li).textContent = d.reason || d.rule;
    $(".count", li).textContent = count > 1 ? ` ×${count}` : "";
    li.title = [d.reason, `rule ${d.rule}`, `regime ${d.regime} ${prob(d.confidence)}`,
      `strategy ${d.strategy ?? "–"}`,
      `${d.position_before} → ${d.position_after}, exposure ${num(d.exposure, 2)}`].join("\n");
  }

  function addDecision(card, d, source) {
    if (card.seen.has(d.id)) return;
    card.seen.add(d.id);
    if (card.seen.size > 5000) card.seen = new Set([...card.seen].slice(-1000));
    addMark(card, d);
    if (!card.position || d.bar_time >= card.position.bar_time) setPosition(card, d);
    // The same decision again (its reason may differ in a number): one line, counted, newest
    const key = [d.action, d.rule, d.suppressed, d.position_after, d.exposure].join("|");
    let top = card.feedTop;
    if (top && top.key === key && top.li.isConnected && d.bar_time > top.last) {
      top.count++;
      top.last = d.bar_time;
    } else {
      top = card.feedTop = { key, li: feedItem(d), count: 1, last: d.bar_time };
      prepend($(".feed", card.node), top.li, MAX_FEED);
    }
    showDecision(card, top.li, d, source, top.count);
  }

  function setPosition(card, d) {
    card.position = d;
    const pos = $(".position", card.node);
    const size = pct0(Math.abs(d.exposure ?? 0));
    pos.textContent = d.position_after === "flat" ? "flat" : `${d.position_after} ${size}%`;
    pos.dataset.position = d.position_after;
    showPending(card);
  }

  function showPending(card) { // decided on the last close, filled at the next open
    const held = card.perf?.position?.held;
    const decided = card.position?.exposure;
    const pending = Number.isFinite(held) && Number.isFinite(decided) && held !== decided;
    setText(card, ".pending", pending ? `(holds ${pct0(held)}% until the next open)`
      : "");
  }

  async function loadHistory(card) {
    const got = await api(`/api/decision/history?market=${encodeURIComponent(card.id)}&limit=200`);
    for (const d of [...got.decisions].reverse()) addDecision(card, d, "rest");
  }

  // ---- P&L: the position's entry and open return, decisions against buy-and-hold -----------
  function setSigned(el, x, text) {
    el.textContent = text;
    el.dataset.sign = !Number.isFinite(x) || x === 0 ? "0" : x > 0 ? "+" : "-";
  }

  function setPnl(card, p) {
    card.perf = p;
    const box = $(".pnl", card.node);
    const pos = p.position;
    const entry = $(".entry", box);
    entry.replaceChildren();
    if (Number.isFinite(pos.entry_price)) {
      entry.append(`${price(card, pos.entry_price)} · `, timeEl(pos.entry_time));
    } else entry.textContent = "–";
    setSigned($(".open", box), pos.open_return, pct(pos.open_return));
    const since = $(".since", box);
    since.replaceChildren("since ", timeEl(p.since, HM));
    since.title = `since the run started, ${utc(p.since)}; fills at the next bar's open` +
      ` after each decision, ${p.performance.fee_bps ?? "–"} bps fee + ` +
      `${p.performance.slippage_bps ?? "–"} bps slippage (as the replay report)`;
    const dec = p.performance.decisions || {};
    const hold = p.performance.buy_and_hold || {};
    setSigned($(".decisions", box), dec.total_return, pct(dec.total_return));
    setSigned($(".hold", box), hold.total_return, pct(hold.total_return));
    const trips = $(".trips", box);
    trips.textContent = dec.round_trips === undefined ? `${p.bars} bars`
      : `${dec.round_trips}` +
        (Number.isFinite(dec.hit_rate) ? ` · ${pct0(dec.hit_rate)}% won` : "") +
        ` · max DD ${num(100 * dec.max_drawdown, 2)}%`;
    trips.title = "round trips of the decisions, the share that gained after costs, and " +
      `their largest drawdown; over ${p.bars} ${p.timeframe ?? ""} bars`;
    box.dataset.bars = String(p.bars);
    box.dataset.lastBar = String(p.last_bar ?? "");
    showPending(card);
    setEntryLine(card, pos.entry_price);
  }

  function setEntryLine(card, entry) {
    if (card.entryLine) card.candleSeries.removePriceLine(card.entryLine);
    card.entryLine = !Number.isFinite(entry) ? null : card.candleSeries.createPriceLine({
      price: entry, color: COLORS.last, lineStyle: LC.LineStyle.Dashed, lineWidth: 1,
      axisLabelVisible: true, title: "entry",
    });
  }

  async function loadPnl(card) {
    card.pnlAt = Date.now();
    setPnl(card, await api(`/api/decision/performance/${encodeURIComponent(card.id)}`));
  }

  function pnlSoon(card) { // it changes with each decision: reloaded after one, now and then
    if (card.pnlTimer) return;
    card.pnlTimer = setTimeout(() => {
      card.pnlTimer = null;
      soft(loadPnl)(card).catch(report);
    }, Math.max(0, (card.pnlAt ?? 0) + PNL_EVERY_MS - Date.now()));
  }

  const soft = (load) => async (card) => { // a panel that fails to load waits for the next try
    try {
      await load(card);
    } catch (e) {
      if (e instanceof AuthError) throw e;
      console.warn(load.name, card.id, e.message);
    }
  };

  // ---- depth: cumulative bid and ask size around the mid price ----------------------------
  function cumulative(levels) {
    let sum = 0;
    return levels.slice(0, BOOK_LEVELS).map(([p, q]) => [p, (sum += q)]);
  }

  function setBook(card, b) {
    card.book = b;
    setQuote(card, b.bids[0]?.[0], b.asks[0]?.[0]);
    dirty.add(card);
  }

  function drawSide(ctx, pts, x, y, edge, color) { // a stepped area from the mid outwards
    if (!pts.length) return;
    ctx.beginPath();
    ctx.moveTo(x(pts[0][0]), y(0));
    let q = 0;
    for (const [p, cum] of pts) { ctx.lineTo(x(p), y(q)); ctx.lineTo(x(p), y(cum)); q = cum; }
    ctx.lineTo(edge, y(q));
    ctx.lineTo(edge, y(0));
    ctx.closePath();
    ctx.globalAlpha = 0.25;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
    ctx.strokeStyle = color;
    ctx.stroke();
  }

  function drawDepth(card) {
    const cv = $(".depth", card.node);
    const { ctx, w, h } = canvas2d(cv);
    const b = card.book;
    if (!ctx) return;
    ctx.fillStyle = COLORS.text;
    if (!b || !b.bids.length || !b.asks.length) {
      ctx.fillText(b ? `book ${b.state}: empty` : "no order book yet", 6, h / 2);
      return;
    }
    const bids = cumulative(b.bids);
    const asks = cumulative(b.asks);
    const mid = (b.bids[0][0] + b.asks[0][0]) / 2;
    const reach = Math.max(mid - bids[bids.length - 1][0], asks[asks.length - 1][0] - mid) || 1;
    const top = Math.max(bids[bids.length - 1][1], asks[asks.length - 1][1]);
    const x = (p) => w / 2 + ((p - mid) / reach) * (w / 2 - 2);
    const y = (q) => h - 16 - (q / top) * (h - 30);
    drawSide(ctx, bids, x, y, 0, COLORS.up);
    drawSide(ctx, asks, x, y, w, COLORS.down);
    ctx.fillStyle = COLORS.grid;
    ctx.fillRect(Math.round(w / 2), 12, 1, h - 28);
    const [sb, sa] = [bids[bids.length - 1][1], asks[asks.length - 1][1]];
    const labels = [
      [`bids ${vol(sb)}`, 2, 6, "left"], [`asks ${vol(sa)}`, w - 2, 6, "right"],
      [`imbalance ${signed((100 * (sb - sa)) / (sb + sa), 0)}%`, w / 2, 6, "center"],
      [price(card, mid - reach), 2, h - 6, "left"],
      [price(card, mid + reach), w - 2, h - 6, "right"],
      [`mid ${num(mid, Math.max(card.dp, decimalsOf(mid)))}`, w / 2, h - 6, "center"],
    ];
    ctx.fillStyle = COLORS.text;
    for (const [text, lx, ly, align] of labels) {
      ctx.textAlign = align;
      ctx.fillText(text, lx, ly);
    }
    ctx.textAlign = "left";
    cv.dataset.ts = String(b.ts);
    cv.dataset.state = b.state;
    cv.title = `order book at ${utc(b.ts)} (${b.state}), ${bids.length}+${asks.length} levels`;
  }

  async function loadBook(card) { // 503 before the first book: the stream brings it
    const id = encodeURIComponent(card.id);
    setBook(card, await api(`/api/market/orderbook/${id}?depth=${BOOK_LEVELS}`));
  }

  // ---- drawing ---------------------------------------------------------------------------
  function frame() {
    for (const card of dirty) {
      try {
        setText(card, ".price", price(card, card.price));
        drawCandles(card);
        drawMarks(card);
        drawLegends(card);
        drawTimeline(card);
        drawDepth(card);
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
    book: (card, m) => setBook(card, m),
    features: () => {},
    regime: (card, m) => {
      setRegimeRow(card, m);
      if (m.timeframe === "fused") addFused(card, m);
    },
    transition: (card, m) => { if (m.timeframe === "fused") addTransition(card, m); },
    decision: (card, m) => {
      addDecision(card, m, "ws");
      pnlSoon(card);
    },
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

  function connect(stream, onReopen) {
    const el = $(`#streams [data-stream="${stream}"]`);
    let delay = BACKOFF_MIN_MS;
    let opens = 0;
    const open = () => {
      el.dataset.state = "connecting";
      const ws = new WebSocket(wsUrl(stream));
      let opened = false;
      ws.onopen = () => {
        opened = true;
        el.dataset.state = "open";
        el.title = "";
        updateNotice();
        if (opens++ && onReopen) onReopen(); // what was stored meanwhile fills the gap
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
  const each = (load) => Promise.all([...cards.values()].map(load)).catch(report);
  const chartAndBand = async (card) => { await loadCandles(card); await loadTimeline(card); };

  function fillTimeframes(tfs) {
    const select = $("#timeframe");
    select.replaceChildren(...tfs.map((tf) => new Option(tf, tf)));
    timeframes = tfs;
    timeframe = tfs[0]; // the finest: the most candles soonest
    select.value = timeframe;
    select.onchange = () => {
      timeframe = select.value;
      for (const card of cards.values()) {
        card.candles = [];
        card.drawnLast = null; // the other timeframe's bars are drawn anew
        card.changedFrom = -Infinity;
        card.marksDirty = true;
      }
      each(chartAndBand);
    };
  }

  async function poll() {
    try {
      const status = await api("/api/market/status");
      for (const m of status.markets) if (cards.has(m.id)) setState(cards.get(m.id), m);
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
    await Promise.all([...cards.values()].flatMap((c) => [
      chartAndBand(c), loadHistory(c), soft(loadRegimes)(c), soft(loadBook)(c),
      soft(loadPnl)(c)]));
    connect("market", () => each(loadCandles));
    connect("regime", () => each(async (c) => { await loadTimeline(c); await loadRegimes(c); }));
    connect("decision", () => each(loadHistory));
    setInterval(poll, 2000);
  }

  async function boot(delay = BACKOFF_MIN_MS) {
    try {
      await start();
      notice("");
    } catch (e) {
      report(e);
      for (const card of cards.values()) card.chart.remove();
      cards.clear();
      $("#markets").replaceChildren();
      if (e instanceof AuthError) return; // waits for the key button
      setTimeout(() => boot(Math.min(delay * 2, BACKOFF_MAX_MS)), delay * (0.5 + Math.random()));
    }
  }

  $("#key").onclick = async () => {
    if (await askKey(true)) location.reload();
  };
  $("#tz").textContent = TZ === "UTC" || TZ === "Etc/UTC" ? "times: UTC"
    : `times: ${TZ} (hover for UTC)`;
  window.aetherion = { cards, get badMessages() { return badMessages; } };
  requestAnimationFrame(frame);
  boot();
})();
