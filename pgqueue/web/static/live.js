/* pgqueue dashboard: live updates without a reload.
   One EventSource per open tab on the dashboard's /events stream; each `change` event
   (batched on the server) makes the page's live region fetch itself again through htmx.
   A hidden tab closes its stream (Page Visibility API) and refreshes once when shown again.
   Without EventSource, the page polls instead. */
(function () {
  "use strict";
  var POLL_MS = 5000;
  var source = null;
  var timer = null;

  function refresh() {
    if (window.htmx) { window.htmx.trigger(document.body, "pgq:refresh"); }
  }

  function open() {
    if (document.hidden || source || timer) { return; }
    if (window.EventSource) {
      source = new EventSource(document.body.dataset.events);
      source.addEventListener("change", refresh);
    } else {
      timer = window.setInterval(refresh, POLL_MS);
    }
  }

  function close() {
    if (source) { source.close(); source = null; }
    if (timer) { window.clearInterval(timer); timer = null; }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { close(); } else { open(); refresh(); }
  });
  window.addEventListener("pagehide", close);
  open();
})();
