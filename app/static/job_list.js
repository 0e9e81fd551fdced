// Keeps the job list current while any of its jobs has not ended: fetches the same page
// every few seconds and swaps in the new table.
(function () {
  "use strict";
  const box = document.getElementById("job-list");
  if (!box) return;
  async function refresh() {
    if (box.dataset.live !== "1" || document.hidden) return;
    try {
      const resp = await fetch(location.href, {headers: {Accept: "text/html"}});
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("job-list");
      if (!fresh) return;
      box.innerHTML = fresh.innerHTML;
      box.dataset.live = fresh.dataset.live;
      if (window.qhLocalize) window.qhLocalize(box);
    } catch (err) { /* the server restarts: try again next time */ }
  }
  setInterval(refresh, 3000);
})();
