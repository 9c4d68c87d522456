// Pushed updates for the metricbus dashboard: sinks/dashboard/push.py says why it works this way.
// The page's own poll (the "tick" store, guarded by window.metricbusPoll while one is in flight)
// still brings the points; this script makes it run as soon as the websocket sink has news,
// switches the 1 s clock off while the socket is up, and back on when it goes down.
(function () {
  "use strict";
  const cfg = window.metricbusPush;
  if (!cfg || !cfg.url) return;
  const url = cfg.url.replace("{host}", location.hostname);
  const KEEPALIVE_MS = cfg.keepalive_ms || 5000;   // header ages and "silent" runs still move
  // more polls shortly after news: the dashboard's own sink may store a point a moment after
  // the websocket sink has announced it (two processes; on a busy machine, tens of ms apart)
  const TRAILING_MS = [100, 400];
  const OVERDUE_MS = 10000;   // a poll unanswered this long is presumed lost, as the clock presumes
  let backoff = 500, wanted = false, trailing = [], live = false;
  window.metricbusPushPolls = 0;

  function state(s) {
    live = s === "live";
    if (document.body) document.body.dataset.push = s;
    setClock(!live);
  }

  function setClock(on) {
    try { window.dash_clientside.set_props("clock", {disabled: !on}); } catch (e) { /* page not drawn yet */ }
  }

  function poll() {
    // not before the first chart is painted (assets/dashboard.js): the page was served with it
    if (window.metricbusReady && !window.metricbusReady()) { wanted = true; return; }
    const started = window.metricbusPoll || 0;
    if (started && Date.now() - started < OVERDUE_MS) { wanted = true; return; }
    try {
      window.metricbusPoll = Date.now();
      window.dash_clientside.set_props("tick", {data: Date.now()});
      window.metricbusPushPolls += 1;
      wanted = false;
    } catch (e) {
      window.metricbusPoll = 0;   // the page is not drawn yet: ask again shortly
      wanted = true;
    }
  }

  function news() {
    poll();
    trailing.forEach(clearTimeout);
    trailing = TRAILING_MS.map((ms) => setTimeout(() => { wanted = true; }, ms));
  }

  function connect() {
    state("connecting");
    const socket = new WebSocket(url);
    socket.onopen = () => {
      backoff = 500;
      socket.send(JSON.stringify({type: "subscribe", topics: [""]}));
      state("live");
    };
    // only "something new arrived" matters here, so frames are not even parsed
    socket.onmessage = (e) => { if (typeof e.data === "string" && !e.data.startsWith('{"type":"error"')) news(); };
    socket.onclose = () => {
      state("down");
      setTimeout(connect, backoff * (0.75 + 0.5 * Math.random()));
      backoff = Math.min(backoff * 2, 30000);
    };
  }

  setInterval(() => { if (wanted) poll(); }, 20);
  setInterval(() => { if (live) wanted = true; }, KEEPALIVE_MS);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect); else connect();
})();
