// Live updates of the confgate approval page: server-sent events from /web/events.
// A change to a listed request (or the one shown) reloads the page; nothing else runs.
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var shown = document.body.getAttribute("data-request");
  var es = new EventSource("/web/events");
  es.addEventListener("request", function (ev) {
    var msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (shown) {
      if (String(msg.id) === shown && msg.state !== "pending") { window.location.reload(); }
      return;
    }
    window.location.reload();
  });
})();
