/* Rollout page: one uPlot panel per gate (value per evaluation, threshold as a dashed line). */
(function () {
  "use strict";
  var doc = JSON.parse(document.getElementById("gate-data").textContent);
  document.querySelectorAll(".gate-plot").forEach(function (el) {
    var gate = el.dataset.gate;
    var t = [], v = [];
    doc.at.forEach(function (at, i) {
      var x = doc.values[i][gate];
      if (x !== null && x !== undefined) { t.push(at); v.push(x); }
    });
    var thr = doc.thresholds[gate];
    var hasThr = thr !== undefined && thr !== null;
    el.uplot = new uPlot({
      width: Math.max(320, el.clientWidth || 520), height: 180,
      series: [{}, { label: gate, stroke: "#3b5bdb", width: 2, points: { show: true, size: 7 } }],
      scales: {
        x: t.length > 1 ? { time: true } : { time: true, auto: false, range: [t[0] - 300, t[0] + 300] },
        y: { range: function (u, min, max) {
          var lo = Math.min(0, min, hasThr ? thr : min), hi = Math.max(max, hasThr ? thr : max);
          return [lo, hi > lo ? hi * 1.15 : lo + 1];
        } }
      },
      axes: [{}, { size: 60 }],
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      hooks: { draw: [function (u) {
        if (!hasThr) { return; }
        var y = u.valToPos(thr, "y", true), ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = "#e03131"; ctx.lineWidth = 1.5 * devicePixelRatio;
        ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
        ctx.restore();
      }] }
    }, [t, v], el);
    el.dataset.points = String(t.length);
  });
})();
