// Plots a hybrid job's metrics with uPlot (vendored), one chart per metric: value against
// iteration when every record of it has one, else against seconds since the first record.
// While the job runs it asks for the records logged since the last answer and redraws.
(function () {
  "use strict";
  const box = document.getElementById("metrics");
  if (!box || typeof uPlot === "undefined") return;
  const series = {};           // name -> {x: [], y: [], byIteration: bool, plot, el}
  let next = 0;
  let t0 = null;

  function width() { return Math.max(240, Math.min(box.clientWidth || 600, 900)); }

  function add(records) {
    records.forEach(function (r) {
      if (t0 === null) t0 = r.timestamp;
      let s = series[r.metric_name];
      if (!s) {
        s = series[r.metric_name] = {x: [], y: [], t: [], it: [], byIteration: true, plot: null};
      }
      s.t.push(r.timestamp - t0);
      s.it.push(r.iteration_number);
      if (r.iteration_number === undefined || r.iteration_number === null) s.byIteration = false;
      s.y.push(r.value);
    });
  }

  function draw() {
    Object.keys(series).sort().forEach(function (name) {
      const s = series[name];
      const xs = s.byIteration ? s.it : s.t;
      const order = xs.map(function (_, i) { return i; }).sort(function (a, b) { return xs[a] - xs[b]; });
      const data = [order.map(function (i) { return xs[i]; }), order.map(function (i) { return s.y[i]; })];
      if (!s.plot) {
        const el = document.createElement("figure");
        el.className = "metric";
        el.dataset.metric = name;
        box.appendChild(el);
        s.plot = new uPlot({
          title: name, width: width(), height: 220,
          scales: {x: {time: false}},
          axes: [{label: s.byIteration ? "iteration" : "seconds"}, {}],
          series: [{label: s.byIteration ? "iteration" : "seconds"},
                   {label: name, stroke: "#3451b2", width: 2, points: {show: data[0].length < 60}}],
        }, data, el);
      } else {
        s.plot.setData(data);
      }
      s.plot.root.dataset.points = String(data[0].length);
    });
    const empty = document.getElementById("metrics-empty");
    if (empty && Object.keys(series).length) empty.remove();
  }

  async function poll() {
    for (;;) {
      let body;
      try {
        const resp = await fetch(box.dataset.url + "?since=" + next, {headers: {Accept: "application/json"}});
        if (!resp.ok) return;
        body = await resp.json();
      } catch (err) {
        await new Promise(function (done) { setTimeout(done, 2000); });
        continue;
      }
      if (body.records.length) { add(body.records); draw(); }
      next = body.next;
      if (body.terminal || box.dataset.terminal === "1") return;
      await new Promise(function (done) { setTimeout(done, 1000); });
    }
  }
  window.addEventListener("resize", function () {
    Object.keys(series).forEach(function (n) { series[n].plot.setSize({width: width(), height: 220}); });
  });
  poll();
})();
