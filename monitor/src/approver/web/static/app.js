// Live updates of the confgate approval page: server-sent events from /web/events.
// The stream first repeats every pending request, then each change. The list page
// reloads when a request it does not show becomes pending or one it shows is decided;
// a request's page reloads when that request is decided. Nothing else runs.
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var shown = document.body.getAttribute("data-request");
  var list = document.getElementById("pending");
  var listed = {};
  if (list) {
    (list.getAttribute("data-ids") || "").split(" ").forEach(function (id) {
      if (id) { listed[id] = true; }
    });
  }
  var es = new EventSource("/web/events");
  es.addEventListener("request", function (ev) {
    var msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    var id = String(msg.id);
    var pending = msg.state === "pending";
    var stale = shown ? (id === shown && !pending) : (pending !== Boolean(listed[id]));
    if (stale) {
      es.close();
      window.location.reload();
    }
  });
})();
