// Per-chart tools (log scale, full width, CSV of the shown series, PNG), handled in the
// browser: they change only what is drawn, so the server is not asked.
(function () {
  "use strict";

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    const text = String(value);
    return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  // Long format, one row per drawn point: what the chart shows (after downsampling and
  // smoothing), not the server's whole buffer.
  function chartCsv(gd) {
    const lines = ["series,role,x,y"];
    for (const trace of gd.data || []) {
      if (trace.visible === "legendonly" || !trace.x || !trace.y) continue;
      const role = (trace.meta && trace.meta.role) || "";
      const name = (trace.meta && trace.meta.series) || trace.name || "";
      if (trace.z) {   // a heatmap: one row per cell, named by its row (a core)
        trace.z.forEach((row, i) => row.forEach((z, j) => {
          lines.push([name + " " + trace.y[i], role, trace.x[j], z].map(csvCell).join(","));
        }));
        continue;
      }
      const n = Math.min(trace.x.length, trace.y.length);
      for (let i = 0; i < n; i++) {
        lines.push([name, role, trace.x[i], trace.y[i]].map(csvCell).join(","));
      }
    }
    return lines.join("\n") + "\n";
  }

  function download(name, text) {
    const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function fileName(chartId) {
    return chartId.replace(/[^A-Za-z0-9_.-]+/g, "_");
  }

  // Which charts are on screen or within a screen of it: a poll sends points only to those
  // (sinks/dashboard/updates.py), whoever starts it (the clock or a pushed update).
  let lastVisible = null;
  function reportVisible() {
    const clientside = window.dash_clientside;
    if (!clientside || !clientside.set_props) return;
    const h = window.innerHeight, visible = [];
    for (const el of document.querySelectorAll("[data-chart]")) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && r.bottom > -h && r.top < 2 * h) visible.push(el.dataset.chart);
    }
    const key = visible.join("\n");
    if (key === lastVisible) return;
    try {
      clientside.set_props("visible-charts", { data: visible });
      lastVisible = key;
    } catch (e) { /* the page is not drawn yet */ }
  }
  setInterval(reportVisible, 300);

  // A page is served with its first charts drawn in (sinks/dashboard/app.py): polls (and with
  // them the runs table and the node overview, the page's largest answers) start once one of
  // them is painted, so nothing competes with the first paint. A page served without a chart
  // starts at once; one whose chart never paints, after FIRST_WAIT_MS.
  const FIRST_WAIT_MS = 8000;
  let ready = false;
  window.metricbusReady = function () {
    if (ready) return true;
    if (!document.getElementById("health")) return false;   // the layout is not rendered yet
    const served = document.querySelectorAll('[data-served="true"]');
    ready = !served.length || performance.now() > FIRST_WAIT_MS ||
      Array.from(served).some((card) => {
        const gd = card.querySelector(".js-plotly-plot");
        return gd && gd._fullLayout && gd.querySelector(".main-svg");
      });
    return ready;
  };
  // the first poll as soon as the page is ready, not at the clock's next tick
  const kick = setInterval(function () {
    const clientside = window.dash_clientside;
    if (!clientside || !clientside.set_props || !window.metricbusReady()) return;
    clearInterval(kick);
    if (window.metricbusPoll) return;
    try {
      window.metricbusPoll = Date.now();
      clientside.set_props("tick", { data: Date.now() });
    } catch (e) { window.metricbusPoll = 0; }
  }, 50);

  // The server draws a chart whole again on a control change, and lays cards out again when
  // the set of charts changes: it must know which are log-scaled or wide.
  function remember() {
    const clientside = window.dash_clientside;
    if (!clientside || !clientside.set_props) return;
    const marked = (attr) =>
      Array.from(document.querySelectorAll(`[data-chart][data-${attr}="true"]`)).map((el) => el.dataset.chart);
    clientside.set_props("chart-options", { data: { log: marked("log"), wide: marked("wide") } });
  }

  // The node overview is plain HTML (one component, not thousands): its links change the
  // URL as dcc.Link does, without reloading the page, and dcc.Location passes it on.
  document.addEventListener("click", function (event) {
    const link = event.target.closest("a.node-link");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    window.history.pushState({}, "", link.getAttribute("href"));
    window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-action]");
    if (!button) return;
    const card = button.closest("[data-chart]");
    const gd = card && card.querySelector(".js-plotly-plot");
    if (!gd || !window.Plotly || !window.Plotly.relayout) return;
    const chartId = card.dataset.chart;
    const action = button.dataset.action;
    if (action === "log") {
      const log = !card.classList.contains("log");
      card.classList.toggle("log", log);
      card.dataset.log = String(log);
      window.Plotly.relayout(gd, { "yaxis.type": log ? "log" : "linear" });
      remember();
    } else if (action === "wide") {
      card.classList.toggle("wide");
      card.dataset.wide = String(card.classList.contains("wide"));
      window.Plotly.Plots.resize(gd);
      remember();
    } else if (action === "csv") {
      download(fileName(chartId) + ".csv", chartCsv(gd));
    } else if (action === "png") {
      window.Plotly.downloadImage(gd, { format: "png", filename: fileName(chartId), width: 1200, height: 500 });
    }
  });
})();
