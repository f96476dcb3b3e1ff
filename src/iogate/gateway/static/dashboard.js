// iogate live dashboard: draws the server's recent history (/dashboard/history,
// the last five minutes sampled by the gateway) on open, then polls /stats and
// extends per-resource charts on canvases. Hand-written and dependency-free, so
// the gateway serves it as is (no build step, nothing fetched from elsewhere).
//
// Query parameters: ?interval=<ms between samples, default 1000>
//                   &history=<samples kept per chart, default 300>
//                   &window=<seconds a rate is averaged over, default 5>
// Each chart canvas carries data-points (samples drawn) and data-max (the
// largest value) so a headless browser can tell the charts got data; the body
// carries data-history (samples loaded from the server's history) and
// data-workers (rows of the workers table, shown with more than one worker).
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const INTERVAL_MS = Math.max(100, Number(params.get("interval")) || 1000);
  const HISTORY = Math.max(10, Number(params.get("history")) || 300);
  const WINDOW_S = Math.max(1, Number(params.get("window")) || 5);
  const KEY_STORAGE = "iogate-dashboard-key";
  const COLORS = {
    throughput: "#3b6fd8",
    mean: "#17803d",
    p95: "#b26a00",
    p99: "#c62828",
    inUse: "#3b6fd8",
    size: "#9db7ea",
  };

  const history = new Map(); // resource name -> samples and the previous counters
  let operations = {}; // named operation -> its latest snapshot
  let workers = []; // /stats "workers": each process's own snapshot (with --workers)
  let workersComplete = true;
  let samples = 0;
  let failures = 0;
  let historyLoaded = false;
  let apiKey = window.sessionStorage.getItem(KEY_STORAGE) || "";

  // -- fetching -----------------------------------------------------------------

  // The gateway's own samples of the last minutes, so a page opened cold is not
  // empty. Loaded once, before the first live sample (again after a key is given).
  async function loadHistory(headers) {
    const response = await fetch("dashboard/history", { headers: headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      askForKey(response.status);
      return;
    }
    if (!response.ok) {
      throw new Error("GET /dashboard/history answered " + response.status);
    }
    const body = await response.json();
    const loaded = (body.samples || []).slice(-HISTORY);
    for (const sample of loaded) {
      ingest(sample);
    }
    historyLoaded = true;
    document.body.dataset.history = String(loaded.length);
    if (loaded.length > 0) {
      render();
    }
  }

  async function poll() {
    const headers = apiKey ? { Authorization: "Bearer " + apiKey } : {};
    try {
      if (!historyLoaded) {
        await loadHistory(headers);
      }
      // Relative, so the page also works behind a path prefix.
      const response = await fetch("stats", { headers: headers, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        askForKey(response.status);
        return;
      }
      if (!response.ok) {
        throw new Error("GET /stats answered " + response.status);
      }
      const stats = await response.json();
      ingest(stats);
      // Only live answers list the workers; history samples are aggregates.
      workers = Array.isArray(stats.workers) ? stats.workers : [];
      workersComplete = stats.workers_complete !== false;
      samples += 1;
      document.body.dataset.samples = String(samples);
      render();
      setStatus("updated " + new Date().toLocaleTimeString() + " · " + samples + " samples", false);
    } catch (error) {
      failures += 1;
      document.body.dataset.errors = String(failures);
      setStatus(String(error.message || error), true);
    }
  }

  function schedule() {
    poll().finally(function () {
      window.setTimeout(schedule, INTERVAL_MS);
    });
  }

  function askForKey(status) {
    const form = document.getElementById("key-form");
    form.hidden = false;
    // /stats needs a key with the "observe" scope when keys are configured.
    const why = status === 403 ? "this key lacks the observe scope" : "a key is needed";
    setStatus("/stats answered " + status + ": " + why + "; enter a key with observe", true);
  }

  document.getElementById("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    apiKey = document.getElementById("key").value.trim();
    window.sessionStorage.setItem(KEY_STORAGE, apiKey);
    document.getElementById("key-form").hidden = true;
  });

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  // -- turning snapshots into series ------------------------------------------------

  function resourcesOf(stats) {
    const list = [];
    for (const [name, s] of Object.entries(stats.databases || {})) {
      list.push({ name: name, kind: "database", stats: s });
    }
    for (const [name, s] of Object.entries(stats.apis || {})) {
      list.push({ name: name, kind: "api", stats: s });
    }
    return list;
  }

  function push(series, value) {
    series.push(value);
    if (series.length > HISTORY) {
      series.shift();
    }
  }

  function ingest(stats) {
    // The server's clock, not the page's: a background tab or a headless
    // browser's virtual time would otherwise distort rates.
    const now = Number(stats.uptime_s);
    for (const resource of resourcesOf(stats)) {
      const s = resource.stats;
      let h = history.get(resource.name);
      if (!h) {
        h = {
          throughput: [],
          mean: [],
          p95: [],
          p99: [],
          inUse: [],
          size: [],
          recent: [], // {time, count, meanMs} over the last WINDOW_S
        };
        history.set(resource.name, h);
      }
      const count = Number(s.count || 0);
      const meanMs = s.latency_ms && s.latency_ms.mean != null ? Number(s.latency_ms.mean) : 0;
      // Rates over a sliding window of server time rather than between two
      // samples: two fetches close together would make a noisy spike.
      h.recent.push({ time: now, count: count, meanMs: meanMs });
      while (h.recent.length > 2 && h.recent[1].time <= now - WINDOW_S) {
        h.recent.shift();
      }
      const base = h.recent[0];
      if (base.time < now) {
        const done = count - base.count;
        push(h.throughput, Math.max(0, done / (now - base.time)));
        // Mean latency of just this window, from the running totals.
        push(h.mean, done > 0 ? (meanMs * count - base.meanMs * base.count) / done : null);
        push(h.p95, s.latency_ms ? s.latency_ms.p95 : null);
        push(h.p99, s.latency_ms ? s.latency_ms.p99 : null);
        const pool = s.pool || {};
        if (pool.max_size != null) {
          push(h.inUse, Number(pool.in_use || 0));
          push(h.size, Number(pool.size || 0));
        }
      }
      h.latest = resource;
    }
    operations = stats.operations || {};
  }

  // -- rendering ----------------------------------------------------------------------

  function fmt(value, digits) {
    if (value == null || Number.isNaN(value)) {
      return "–";
    }
    return Number(value).toFixed(digits);
  }

  function pct(rate) {
    return rate == null ? "–" : (rate * 100).toFixed(1) + " %";
  }

  function breakerOf(resource) {
    if (resource.kind !== "api") {
      return "n/a";
    }
    const circuit = resource.stats.circuit;
    return circuit ? circuit.state : "disabled";
  }

  function badge(text) {
    const span = document.createElement("span");
    span.className = "badge " + text;
    span.textContent = text;
    return span;
  }

  function cell(row, content) {
    const td = document.createElement("td");
    if (content instanceof Node) {
      td.appendChild(content);
    } else {
      td.textContent = content;
    }
    row.appendChild(td);
  }

  function renderSummary() {
    const body = document.querySelector("#summary tbody");
    body.replaceChildren();
    for (const [name, h] of history) {
      const s = h.latest.stats;
      const row = document.createElement("tr");
      row.dataset.resource = name;
      cell(row, name);
      cell(row, String(s.type || h.latest.kind));
      cell(row, badge(s.state === "open" ? "up" : String(s.state)));
      cell(row, badge(breakerOf(h.latest)));
      cell(row, String(s.count));
      cell(row, pct(s.success_rate));
      cell(row, fmt(s.throughput_per_s, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p50, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p95, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p99, 2));
      body.appendChild(row);
    }
  }

  function renderOperations() {
    const names = Object.keys(operations);
    document.getElementById("operations-section").hidden = names.length === 0;
    const body = document.querySelector("#operations tbody");
    body.replaceChildren();
    for (const name of names) {
      const s = operations[name];
      const row = document.createElement("tr");
      cell(row, name);
      cell(row, String(s.resource));
      cell(row, String(s.count));
      cell(row, pct(s.success_rate));
      cell(row, fmt(s.throughput_per_s, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p50, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p95, 2));
      cell(row, fmt(s.latency_ms && s.latency_ms.p99, 2));
      body.appendChild(row);
    }
  }

  // One worker's figures, summed over its databases and APIs.
  function workerTotals(worker) {
    const totals = { count: 0, errors: 0, throughput: 0, inUse: 0 };
    for (const group of [worker.databases || {}, worker.apis || {}]) {
      for (const s of Object.values(group)) {
        totals.count += Number(s.count || 0);
        totals.errors += Number(s.errors || 0);
        totals.throughput += Number(s.throughput_per_s || 0);
        totals.inUse += Number((s.pool && s.pool.in_use) || 0);
      }
    }
    return totals;
  }

  function renderWorkers() {
    // One worker: the summary above is its own, so no table.
    const shown = workers.length > 1 ? workers : [];
    document.getElementById("workers-section").hidden = shown.length === 0;
    document.getElementById("workers-incomplete").hidden = workersComplete;
    const body = document.querySelector("#workers tbody");
    body.replaceChildren();
    // Ages on the server's clock: the answering worker stamped itself last.
    const newest = Math.max.apply(null, shown.map(function (w) {
      return Number(w.published_at || 0);
    }));
    for (const worker of shown) {
      const totals = workerTotals(worker);
      const row = document.createElement("tr");
      row.dataset.worker = String(worker.id);
      row.dataset.pid = String(worker.pid);
      row.dataset.count = String(totals.count);
      cell(row, String(worker.id));
      cell(row, String(worker.host));
      cell(row, String(worker.pid));
      cell(row, fmt(worker.uptime_s, 0));
      cell(row, String(totals.count));
      cell(row, pct(totals.count > 0 ? (totals.count - totals.errors) / totals.count : null));
      cell(row, fmt(totals.throughput, 2));
      cell(row, String(totals.inUse));
      cell(row, fmt(newest - Number(worker.published_at || 0), 1));
      body.appendChild(row);
    }
    document.body.dataset.workers = String(shown.length);
  }

  function card(name) {
    const id = "card-" + name;
    let element = document.getElementById(id);
    if (element) {
      return element;
    }
    element = document.createElement("article");
    element.className = "card";
    element.id = id;
    element.dataset.resource = name;
    const title = document.createElement("h3");
    element.appendChild(title);
    for (const [chart, label] of [
      ["throughput", "throughput (ops/s, sliding window)"],
      ["latency", "latency (ms): window mean; p95, p99 since start"],
      ["pool", "pool connections: in use, open"],
    ]) {
      const caption = document.createElement("div");
      caption.className = "chart-title";
      caption.textContent = label;
      caption.dataset.for = chart;
      const canvas = document.createElement("canvas");
      canvas.className = "chart";
      canvas.dataset.chart = chart;
      canvas.dataset.points = "0";
      element.append(caption, canvas);
    }
    const pool = document.createElement("div");
    pool.className = "pool";
    element.appendChild(pool);
    document.getElementById("cards").appendChild(element);
    return element;
  }

  function renderCard(name, h) {
    const element = card(name);
    const s = h.latest.stats;
    const title = element.querySelector("h3");
    title.replaceChildren(document.createTextNode(name));
    const type = document.createElement("span");
    type.className = "type";
    type.textContent = String(s.type || h.latest.kind);
    title.appendChild(type);
    if (h.latest.kind === "api") {
      title.appendChild(badge(breakerOf(h.latest)));
    }

    drawChart(element.querySelector('[data-chart="throughput"]'), [
      { label: "ops/s", values: h.throughput, color: COLORS.throughput },
    ]);
    drawChart(element.querySelector('[data-chart="latency"]'), [
      { label: "mean", values: h.mean, color: COLORS.mean },
      { label: "p95", values: h.p95, color: COLORS.p95 },
      { label: "p99", values: h.p99, color: COLORS.p99 },
    ]);
    const hasPool = h.inUse.length > 0;
    const poolCanvas = element.querySelector('[data-chart="pool"]');
    poolCanvas.hidden = !hasPool;
    element.querySelector('[data-for="pool"]').hidden = !hasPool;
    if (hasPool) {
      drawChart(poolCanvas, [
        { label: "in use", values: h.inUse, color: COLORS.inUse },
        { label: "open", values: h.size, color: COLORS.size },
      ]);
    }
    renderPool(element.querySelector(".pool"), s.pool || {});
  }

  function renderPool(element, pool) {
    element.replaceChildren();
    if (pool.max_size != null) {
      const bar = document.createElement("div");
      bar.className = "bar";
      const inUse = document.createElement("div");
      inUse.className = "in-use";
      const idle = document.createElement("div");
      idle.className = "idle";
      const max = Math.max(1, Number(pool.max_size));
      inUse.style.width = (100 * Number(pool.in_use || 0)) / max + "%";
      idle.style.left = inUse.style.width;
      idle.style.width = (100 * Number(pool.idle || 0)) / max + "%";
      bar.append(inUse, idle);
      element.appendChild(bar);
    }
    const text = document.createElement("div");
    text.textContent = Object.entries(pool)
      .map(function (entry) {
        return entry[0].replace(/_/g, " ") + " " + entry[1];
      })
      .join(" · ");
    element.appendChild(text);
  }

  function render() {
    renderSummary();
    renderOperations();
    renderWorkers();
    for (const [name, h] of history) {
      renderCard(name, h);
    }
  }

  // -- a small line chart ----------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) {
      return 1;
    }
    const magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 4, 8, 10]) {  // quarter ticks stay round
      if (value <= step * magnitude) {
        return step * magnitude;
      }
    }
    return 10 * magnitude;
  }

  function label(value) {
    if (value >= 1000) {
      return (value / 1000).toFixed(1) + "k";
    }
    return value >= 10 || value === 0 ? String(Math.round(value)) : value.toFixed(1);
  }

  function drawChart(canvas, seriesList) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 400;
    const height = canvas.clientHeight || 120;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const pad = { left: 40, right: 8, top: 16, bottom: 6 };
    const plotWidth = width - pad.left - pad.right;
    const plotHeight = height - pad.top - pad.bottom;
    let largest = 0;
    let points = 0;
    for (const series of seriesList) {
      points = Math.max(points, series.values.length);
      for (const value of series.values) {
        if (value != null && value > largest) {
          largest = value;
        }
      }
    }
    const top = niceMax(largest * 1.05);

    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#e3e6eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const y = pad.top + plotHeight - (plotHeight * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.left, Math.round(y) + 0.5);
      ctx.lineTo(pad.left + plotWidth, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(label((top * i) / 4), pad.left - 4, y);
    }

    // Newest sample at the right edge; the history scrolls left.
    const step = plotWidth / Math.max(1, HISTORY - 1);
    for (const series of seriesList) {
      const values = series.values;
      const offset = HISTORY - values.length;
      ctx.strokeStyle = series.color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      let drawing = false;
      values.forEach(function (value, index) {
        if (value == null) {
          drawing = false;
          return;
        }
        const x = pad.left + (offset + index) * step;
        const y = pad.top + plotHeight - (plotHeight * value) / top;
        if (drawing) {
          ctx.lineTo(x, y);
        } else {
          ctx.moveTo(x, y);
          drawing = true;
        }
      });
      ctx.stroke();
    }

    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let x = pad.left;
    for (const series of seriesList) {
      const last = series.values.length ? series.values[series.values.length - 1] : null;
      const text = series.label + " " + (last == null ? "–" : label(last));
      ctx.fillStyle = series.color;
      ctx.fillRect(x, 4, 8, 8);
      ctx.fillStyle = "#1d2430";
      ctx.fillText(text, x + 11, 2);
      x += ctx.measureText(text).width + 24;
    }

    canvas.dataset.points = String(points);
    canvas.dataset.max = String(largest);
  }

  schedule();
})();
