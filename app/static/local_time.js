// Shows every <time datetime="..."> (UTC, from the server) in the browser's own time zone.
(function () {
  "use strict";
  function localize(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      const when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.textContent = when.toLocaleString(undefined, {year: "numeric", month: "2-digit",
        day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
      el.title = el.getAttribute("datetime");
    });
  }
  window.qhLocalize = localize;
  document.addEventListener("DOMContentLoaded", function () {
    localize();
    document.querySelectorAll("input[name=tz]").forEach(function (el) {
      el.value = String(new Date().getTimezoneOffset());
    });
  });
})();
