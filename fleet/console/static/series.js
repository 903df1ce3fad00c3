/* Time-series panels for /console/series: fetch series.json, draw each panel with uPlot. */
(function () {
  "use strict";
  var STYLE = {
    requests: { label: "requests", stroke: "#3b5bdb", width: 2 },
    errors: { label: "errors", stroke: "#e03131", width: 2, dash: [6, 4] },
    p50_ms: { label: "p50 ms", stroke: "#3b5bdb", width: 2 },
    p99_ms: { label: "p99 ms", stroke: "#f08c00", width: 2, dash: [6, 4] },
    error_rate: { label: "error rate", stroke: "#e03131", width: 2 },
    max_psi: { label: "max PSI", stroke: "#862e9c", width: 2 },
    accuracy: { label: "online accuracy", stroke: "#2b8a3e", width: 2 },
    accuracy_low: { label: "95% low", stroke: "#8ce99a", width: 1, dash: [3, 3] },
    accuracy_high: { label: "95% high", stroke: "#8ce99a", width: 1, dash: [3, 3] },
    accuracy_estimate: { label: "estimate (CBPE)", stroke: "#f08c00", width: 2, dash: [6, 4] },
    low_confidence_rate: { label: "low-confidence rate", stroke: "#c2255c", width: 2 }
  };
  var PALETTE = ["#3b5bdb", "#e03131", "#2b8a3e", "#f08c00", "#862e9c", "#0c8599", "#5c940d", "#c2255c"];
  var form = document.getElementById("series-form");   // absent on the device page
  function toLocal(unix) { return new Date(unix * 1000).toISOString().slice(0, 16); }
  function toUnix(v) { return v ? Math.floor(Date.parse(v + ":00Z") / 1000) : ""; }
  if (form) { ["since", "until"].forEach(function (k) {
    var el = document.getElementById("f-" + k);
    if (el.dataset.unix) { el.value = toLocal(+el.dataset.unix); }
  });
  form.addEventListener("submit", function () {
    document.getElementById("h-since").value = toUnix(document.getElementById("f-since").value);
    document.getElementById("h-until").value = toUnix(document.getElementById("f-until").value);
    var mv = form.elements.mv.value.split(":");
    form.elements.model.value = mv[0] || "";
    form.elements.version.value = mv[1] || "";
    form.elements.mv.disabled = true;
    Array.prototype.forEach.call(form.elements, function (e) { if (e.name && !e.value) { e.disabled = true; } });
  }); }
  var params = new URLSearchParams(window.EF_SERIES_QUERY || window.location.search);
  params.delete("mv");
  fetch(window.EF_SERIES_URL + "?" + params.toString(), { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (doc) {
      var s = doc.series;
      document.getElementById("series-summary").textContent = doc.windows + " telemetry windows from " +
        new Date(doc.since * 1000).toISOString().slice(0, 16).replace("T", " ") + " to " +
        new Date(doc.until * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
      document.querySelectorAll(".plot").forEach(function (el) {
        // data-series="a,b" names arrays of doc.series; data-slices draws one line per slice (doc.slices).
        var bySlice = el.dataset.slices !== undefined, cols = bySlice ? (doc.slices || {}) : s;
        var keys = bySlice ? Object.keys(cols) : el.dataset.series.split(",");
        var styles = keys.map(function (k, i) {
          return bySlice ? { label: k, stroke: PALETTE[i % PALETTE.length], width: 2 } : STYLE[k];
        });
        if (!s.t.length) { el.innerHTML = '<p class="empty">No telemetry in this range.</p>'; return; }
        var any = keys.some(function (k) { return (cols[k] || []).some(function (v) { return v !== null; }); });
        if (el.dataset.empty && !any) { el.innerHTML = '<p class="empty">' + el.dataset.empty + '</p>'; return; }
        var opts = {
          width: Math.max(320, el.clientWidth || 520), height: 220,
          series: [{}].concat(styles),
          axes: [{}, { size: 60 }],
          scales: { x: s.t.length > 1 ? { time: true } : { time: true, auto: false, range: [s.t[0] - 300, s.t[0] + 300] } },
          tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
          legend: { live: true }
        };
        el.uplot = new uPlot(opts, [s.t].concat(keys.map(function (k) { return cols[k]; })), el);
        el.dataset.points = String(s.t.length);
      });
    })
    .catch(function (e) { document.getElementById("series-summary").textContent = "Could not load: " + e; });
})();
