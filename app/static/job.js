// Keeps a running job's page current: asks the server for news (new log text, status
// changes) from where it left off, and reloads the page once the job has ended.
(function () {
  "use strict";
  const page = document.getElementById("job");
  if (!page || page.dataset.terminal === "1") return;
  const logs = document.getElementById("logs");
  const status = document.getElementById("status");
  const events = document.getElementById("events");
  let offset = Number(page.dataset.offset);
  let seen = Number(page.dataset.events);

  function showEvents(list) {
    events.replaceChildren(...list.map(function (e) {
      const row = document.createElement("tr");
      const text = [e.at, e.status + (e.sub_status ? ": " + e.sub_status : ""), e.detail || ""];
      text.forEach(function (t, i) {
        const cell = document.createElement("td");
        if (i === 0) {
          const when = document.createElement("time");
          when.setAttribute("datetime", t);
          when.textContent = t;
          cell.appendChild(when);
        } else {
          cell.textContent = t;
        }
        row.appendChild(cell);
      });
      return row;
    }));
    if (window.qhLocalize) window.qhLocalize(events);
  }

  async function poll() {
    for (;;) {
      let body;
      try {
        const url = page.dataset.stateUrl + "?wait=10&offset=" + offset + "&events=" + seen;
        const resp = await fetch(url, {headers: {Accept: "application/json"}});
        const type = resp.headers.get("Content-Type") || "";
        if (!resp.ok || !type.startsWith("application/json")) {   // logged out, gone ...
          location.reload();
          return;
        }
        body = await resp.json();
      } catch (err) {                                            // the server restarts
        await new Promise(function (done) { setTimeout(done, 2000); });
        continue;
      }
      if (body.logs) {
        const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.textContent += body.logs;
        if (atEnd) logs.scrollTop = logs.scrollHeight;
      }
      offset = body.next_offset;
      status.textContent = body.status;
      status.className = "status s-" + body.state;
      if (body.events.length !== seen) {
        seen = body.events.length;
        showEvents(body.events);
      }
      if (body.terminal) {
        location.reload();
        return;
      }
    }
  }
  poll();
})();
