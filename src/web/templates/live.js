// Live parts: an element with data-live subscribes to that server-sent event stream and takes
// each event's HTML as its new content. Without JavaScript the page is still whole; reload it.
"use strict";
document.querySelectorAll("[data-live]").forEach(function (el) {
  var es = new EventSource(el.dataset.live);
  es.addEventListener(el.dataset.event, function (e) { el.innerHTML = e.data; });
  // The server says when nothing more will come (a deploy that ended): no reconnect then.
  es.addEventListener("end", function () { es.close(); });
});
